"""Files one part of kdpipe writes and another reads, each with exactly one writer and one reader.

A foundation: the stages and :mod:`kdpipe.infer` both import from here, and nothing here imports
either of them. :mod:`~kdpipe.artefacts.run_layout` says where things live in a run directory,
:mod:`~kdpipe.artefacts.class_features` what a class-feature file holds.
"""
