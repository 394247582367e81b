"""Offline inference: a class-feature index, image sources, resumable writers, the classify engine
and self-contained student bundles."""
