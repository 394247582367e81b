"""The one training loop (``fit``), its schedule, checkpoints, devices and Gaussian prompt aggregation."""

from kdpipe.train.batches import EpochBatches
from kdpipe.train.checkpoint import load_checkpoint, save_checkpoint
from kdpipe.train.device import amp_dtype, autocast, pick_device
from kdpipe.train.gpa import GaussianAggregate, gaussian_weights
from kdpipe.train.loop import fit
from kdpipe.train.schedule import OptimConfig, build_optimizer, lr_at
from kdpipe.train.supervised import train_method

__all__ = [
    "EpochBatches",
    "GaussianAggregate",
    "OptimConfig",
    "amp_dtype",
    "autocast",
    "build_optimizer",
    "fit",
    "gaussian_weights",
    "load_checkpoint",
    "lr_at",
    "pick_device",
    "save_checkpoint",
    "train_method",
]
