"""The demo world: procedurally rendered coloured shapes, a shifted downstream dataset, tiny CLIPs.

Importing this package registers the ``world-b`` (student) and ``world-l`` (teacher) open_clip
configs, so ``load_backbone("world-b")`` and checkpoints saved for them resolve.
"""

from pathlib import Path

from kdpipe.world.captions import TEMPLATES, caption, caption_table
from kdpipe.world.classes import CLASSNAMES, COLOURS, NUM_BASE, NUM_CLASSES, SHAPES, WORLD_CLASSES
from kdpipe.world.dataset import SPLIT_FILE, write_world_dataset
from kdpipe.world.render import IMAGE_SIZE, RENDER_VERSION, render_batch, render_images
from kdpipe.world.shift import DEFAULT_SHIFT, Shift, shift_images
from kdpipe.world.cache import cache_root

WORLD_CONFIG_DIR = Path(__file__).parent / "configs"  # one of kdpipe.clip's built-in config dirs


def register_world_configs() -> None:
    """Register world-b / world-l with open_clip (kdpipe.clip does so itself before any load)."""
    from kdpipe.clip.backbones import register_builtin_configs

    register_builtin_configs()


register_world_configs()

# after the configs are registered: these resolve world-b / world-l by name
from kdpipe.world.pretrain import PRESETS, WORLD_ARCHS, PretrainConfig, PretrainResult, cached_pretrain, pretrain  # noqa: E402
from kdpipe.world.zeroshot import WorldZeroShot, evaluate_world_zeroshot, harmonic_mean  # noqa: E402

__all__ = [
    "PRESETS",
    "WORLD_ARCHS",
    "PretrainConfig",
    "PretrainResult",
    "WorldZeroShot",
    "cache_root",
    "cached_pretrain",
    "evaluate_world_zeroshot",
    "harmonic_mean",
    "pretrain",
    "CLASSNAMES",
    "COLOURS",
    "DEFAULT_SHIFT",
    "IMAGE_SIZE",
    "NUM_BASE",
    "NUM_CLASSES",
    "RENDER_VERSION",
    "SHAPES",
    "SPLIT_FILE",
    "TEMPLATES",
    "WORLD_CLASSES",
    "WORLD_CONFIG_DIR",
    "Shift",
    "caption",
    "caption_table",
    "register_world_configs",
    "render_batch",
    "render_images",
    "shift_images",
    "write_world_dataset",
]
