"""Inference precisions of the image tower: a registry of name -> how to prepare it, where it runs.

Only the image tower's transformer blocks change; its patch embedding, pooling and projection stay
fp32, so what comes after (a method's projector, the stored class features, the class index) is
fp32, and ``probs`` are exact over all classes (``classify.result_rows``). Preparing a tower changes it in place
(weights cast or quantised), so a model is prepared once; loading it again gives fp32 back.

``auto`` picks, per device type, the fastest precision whose top-1 agreement with fp32 on the
demo world's shifted test split is at least :data:`MIN_AGREEMENT` (``kdpipe bench classify
--precision fp32,bf16,int8`` measures both: speed on ViT-B/16, agreement on the pretrained world-b).
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from kdpipe.errors import KdpipeError

MIN_AGREEMENT = 0.995  # top-1 agreement with fp32 on the demo world that a default precision must keep


@dataclass(frozen=True)
class Precision:
    name: str
    devices: tuple[str, ...]  # torch device types it runs on
    prepare: Callable[[nn.Module], None]  # changes an open_clip visual tower in place
    cost: str  # what it costs, one line (help text, README)
    compile_on: tuple[str, ...] = ()  # device types where torch.compile was measured to pay (infer.compiled)


PRECISIONS: dict[str, Precision] = {}


def register(name: str, devices: tuple[str, ...], cost: str, compile_on: tuple[str, ...] = ()):
    def add(prepare: Callable[[nn.Module], None]) -> Callable[[nn.Module], None]:
        PRECISIONS[name] = Precision(name, devices, prepare, cost, compile_on)
        return prepare
    return add


@register("fp32", ("cpu", "cuda", "mps"), "the reference: open_clip's own blocks in float32")
def _fp32(visual: nn.Module) -> None:
    """Nothing to do: the tower stays bit-identical to open_clip's ``encode_image``."""


# compile_on: on the CPU compiling bf16 gave 1.05x over eager (9.02 vs 8.59 images/s, ViT-B/16, batch
# 32, 4 interleaved rounds) for 6-30 s once; int8 compiled was no faster than eager (2.01 vs 2.20
# images/s, 3 rounds on a busy machine). CUDA: CUDA graphs at a fixed batch (max-autotune), to be measured.
@register("bf16", ("cpu", "cuda"), "bfloat16 weights for every matmul, scaled_dot_product_attention; float32 residual stream and LayerNorms",
          compile_on=("cpu", "cuda"))
def _bf16(visual: nn.Module) -> None:
    # bf16 weights, not autocast over fp32 weights: no per-call cast of every weight, half the
    # weight traffic; attention through SDPA, whose kernels take bf16 (MHA's fast path does not).
    # The residual stream stays fp32 (kdpipe.clip.attention.Bf16Block: why, measured)
    from kdpipe.clip.attention import use_bf16_blocks

    use_bf16_blocks(visual.transformer)


@register("int8", ("cpu",), "int8 weights of every Linear (attention in/out projections, MLP), dynamic activation scales")
def _int8(visual: nn.Module) -> None:
    # SDPA first: it gives attention's input projection a Linear, so quantisation covers it too
    # (with nn.MultiheadAttention only the MLP and out projection would be int8: measured slower)
    from torch.ao.quantization import quantize_dynamic

    from kdpipe.clip.attention import use_sdpa

    use_sdpa(visual.transformer)
    with warnings.catch_warnings():
        # torch.ao.quantization warns it moves to torchao; its x86 kernels are what this torch has
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        quantize_dynamic(visual.transformer, {nn.Linear}, dtype=torch.qint8, inplace=True)


# The default per device type: the fastest precision keeping MIN_AGREEMENT on the demo world.
# Measured on the 2-core AMD EPYC (Zen 4, avx512_bf16 + avx512_vnni), `OMP_NUM_THREADS=2 kdpipe
# bench classify --backbone ViT-B-16-quickgelu --precision fp32,bf16,int8 --no-end-to-end
# --batch-size 32 --rounds 5` (README "Performance", CPU): bf16 (compiled) 9.04 images/s = 2.37x
# open_clip's fp32 encode_image (3.82), top-1 agreement 99.78% on the demo world (world-b zero-shot,
# 3,200 shifted test images); int8 6.79 images/s = 1.78x, 98.22% (int8 of the MLP alone: 99.50%;
# with a bf16 residual stream bf16 fell to 99.22%). So bf16 on the CPU; int8 is never the default.
# On CUDA int8 has no kernels; bf16 is the tensor cores' format (not yet measured on a GPU).
AUTO: dict[str, str] = {"cpu": "bf16", "cuda": "bf16"}
CHOICES = ("auto", *PRECISIONS)
# The CPU figures above hold where the CPU multiplies bf16 in hardware (AVX512_BF16 or AMX on x86,
# the BF16 extension on Arm). Elsewhere bf16 matmuls are converted in software and nothing was
# measured, so auto stays exact on such a CPU.
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


@functools.lru_cache(maxsize=None)
def cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether the CPU lists a bf16 instruction set (Linux ``/proc/cpuinfo`` flags / features)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:  # not Linux: unknown, so not assumed
        return False
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return bool(flags & BF16_CPU_FLAGS)


def auto_precision(kind: str) -> str:
    """What ``auto`` means on a device type: :data:`AUTO`, fp32 on a CPU without bf16 instructions."""
    if kind == "cpu" and not cpu_has_bf16():
        return "fp32"
    return AUTO.get(kind, "fp32")


def check_name(name: str, option: str = "--precision") -> str:
    """``name`` if it is ``auto`` or a registered precision; else one line listing the choices."""
    if name not in CHOICES:
        raise KdpipeError(f"{option} {name!r}: unknown precision; expected one of {', '.join(CHOICES)}")
    return name


def resolve(name: str, device: str | torch.device) -> str:
    """The precision ``name`` means on ``device`` (``auto``: the measured default there)."""
    kind = torch.device(device).type
    check_name(name)
    if name == "auto":
        return auto_precision(kind)
    if kind not in PRECISIONS[name].devices:
        hint = auto_precision(kind)
        raise KdpipeError(f"--precision {name} does not run on {kind} (it runs on {', '.join(PRECISIONS[name].devices)}); "
                          f"use --precision {hint} or auto there")
    return name


def prepare_tower(visual: nn.Module, name: str, device: str | torch.device) -> str:
    """Prepare the open_clip visual tower ``visual`` (already on ``device``) for ``name``, in
    place; returns the precision applied."""
    chosen = resolve(name, device)
    PRECISIONS[chosen].prepare(visual)
    return chosen
