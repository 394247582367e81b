"""Backbones (friendly names -> open_clip) and prompted towers (block-by-block encoding)."""

from kdpipe.clip.backbones import (
    FRIENDLY_NAMES,
    Backbone,
    BackboneDims,
    known_architectures,
    load_backbone,
    parse_spec,
    register_config_dir,
    save_backbone,
)
from kdpipe.clip.towers import FrozenCLIP, PromptedText, PromptedVision

__all__ = [
    "FRIENDLY_NAMES",
    "Backbone",
    "BackboneDims",
    "FrozenCLIP",
    "PromptedText",
    "PromptedVision",
    "known_architectures",
    "load_backbone",
    "parse_spec",
    "register_config_dir",
    "save_backbone",
]
