"""The config sections the PromptKD stages read (``--set section.key=value``, recipes, shortcuts).

Shortcuts: ``--teacher`` -> ``teacher.backbone``, ``--student`` -> ``student.backbone``,
``--dataset`` -> ``data.dataset``, ``--data-root`` -> ``data.root``, ``--seed``/``--seeds`` ->
``run.seed``/``run.seeds``. Per-dataset values (the distillation weight 200 on fgvc_aircraft,
oxford_flowers and dtd) live in the ``base2novel`` recipe's ``[dataset_overrides]``, not here.

Fields made with ``runtime_setting`` (workers, devices, checkpoint intervals) change how a stage
runs, not what it produces, so changing them never makes a finished stage stale.

Numeric fields declare the values they accept next to their default (``bounded(0.9, ge=0, lt=1)``),
so ``--set distill.momentum=-5`` is refused in one line when it is parsed, not inside torch; the
backbone specs (``model_spec``) are parsed by ``kdpipe run`` / ``status`` before any stage runs.

``teacher`` and ``baselines`` accept member tables checked against a method's own config:
``--set teacher.promptsrc.epochs=2`` or, in a recipe, ``[baselines.coop] epochs = 50``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from kdpipe.config import bounded, config_section, model_spec, runtime_setting
from kdpipe.dist import default_workers
from kdpipe.errors import KdpipeError
from kdpipe.methods.promptkd import PromptKDConfig


def _area_fractions(scale: list[float]) -> str | None:
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        return "must be two area fractions 0 < low <= high <= 1"
    return None


def method_config(name: str) -> type:
    """Member schema: ``section.<method>.key`` is checked against that method's config dataclass."""
    from kdpipe.methods import get_method

    try:
        return get_method(name).config_cls
    except KdpipeError:
        return None


@config_section("run")
@dataclass
class RunConfig:
    name: str = "default"  # run folder name under the runs directory
    seed: int = 1  # used when `seeds` is empty
    seeds: list[int] = field(default_factory=list)  # e.g. [1, 2, 3]: one row per seed plus their mean
    device: str = runtime_setting("auto")  # auto | cpu | cuda | cuda:N
    amp: bool = runtime_setting(True)  # mixed precision (bf16/fp16) on GPU; CPU always runs fp32

    def seed_list(self) -> list[int]:
        return list(self.seeds) or [self.seed]


@config_section("data")
@dataclass
class DataConfig:
    dataset: str = "oxford_pets"  # a kdpipe dataset name (kdpipe datasets lists them)
    root: str = "~/data"  # folder holding the dataset (CoOp layout) or the custom source itself
    shots: int = bounded(16, ge=0)  # labelled images per base class for the teacher and the few-shot baselines (0: all)
    # base2novel: train on the first ceil(C/2) classes, test base and novel;
    # cross: train and test on every class (accuracy on all classes)
    mode: Literal["base2novel", "cross"] = "base2novel"
    # dataset the teacher and the baselines learn from when it is not `dataset` (cross-dataset:
    # imagenet); the student is still distilled and everything evaluated on `dataset`
    source: str = ""
    # area range of the random resized crop in every training transform (teacher, baselines,
    # distillation); Dassl's default. Images whose object fills a small part of the frame (the
    # demo world's 32-pixel shapes) need a narrower range: an 8% crop there often misses the object.
    crop_scale: list[float] = bounded(default_factory=lambda: [0.08, 1.0], check=_area_fractions)
    workers: int = runtime_setting(default_workers(), ge=0)  # DataLoader worker processes for image decoding (default: up to 4, at most the cores)

    @property
    def train_subset(self) -> str:
        return "base" if self.mode == "base2novel" else "all"

    @property
    def train_dataset(self) -> str:
        return self.source or self.dataset


def teacher_member_config(name: str) -> type:
    """Member schema of ``teacher.<id>``: its method's config plus the member's own ``backbone`` (a
    teacher of ``teacher.members`` other than the primary may live in another embedding space)."""
    from kdpipe.settings.teachers import method_of

    method = method_of(name)
    cls = method_config(method)
    if cls is None:
        return None
    if method not in _TEACHER_MEMBER_CLASSES:
        _TEACHER_MEMBER_CLASSES[method] = dataclasses.make_dataclass(
            f"Teacher{cls.__name__}", [("backbone", str, field(default=""))], bases=(cls,))
    return _TEACHER_MEMBER_CLASSES[method]


_TEACHER_MEMBER_CLASSES: dict[str, type] = {}  # one class per method, so checks compare equal types
TEACHER_MEMBER_KEYS = ("backbone",)  # member-table keys that are the teacher's, not its method's


@config_section("teacher", members=teacher_member_config)
@dataclass
class TeacherConfig:
    method: str = "promptsrc"  # any registered prompt method (the only teacher when `members` is empty)
    # several teachers (kdpipe.settings.teachers): teacher ids (a method name, or method-tag such as
    # promptsrc-b16 for a second teacher of one method), the first one the PRIMARY (its class
    # features are the student's classifier); `teacher.<id>.backbone` gives one its own backbone
    # (default: `backbone`). Empty: [method], the single teacher of PromptKD.
    members: list[str] = field(default_factory=list)
    # how the teachers' softened probabilities become the target (kdpipe.distill.ensemble): mean, or
    # confidence (per-image weights from each teacher's max probability). One teacher: no effect.
    ensemble: Literal["mean", "confidence"] = "mean"
    backbone: str = model_spec("vit-l-14")  # friendly name, open_clip NAME:TAG, hf-hub:..., or a checkpoint path
    # The PromptKD reference teacher (PromptSRC on ViT-L/14) trains with batch 8 and lr 0.005 instead
    # of PromptSRC's ViT-B/16 defaults; None keeps the method's own reference value.
    batch_size: int | None = bounded(8, ge=1)
    lr: float | None = bounded(0.005, gt=0)
    epochs: int | None = bounded(None, ge=1)
    checkpoint_every: int = runtime_setting(0, ge=0)  # steps between mid-epoch checkpoints (0: once per epoch)


@config_section("student")
@dataclass
class StudentConfig:
    backbone: str = model_spec("vit-b-16")
    method: str = "promptkd"
    # defaults: the PromptKD method's reference values, their one source (as for distill's optimiser)
    n_ctx: int = bounded(PromptKDConfig.n_ctx, ge=1)  # vision prompt tokens
    depth: int = bounded(PromptKDConfig.depth, ge=1)  # prompted layers (9 base-to-novel, 3 cross-dataset in the reference)


@config_section("distill")
@dataclass
class DistillConfig:
    kd_weight: float = bounded(1000.0, ge=0)  # loss weight w (200 on fgvc_aircraft, oxford_flowers, dtd via recipe)
    temperature: float = bounded(1.0, gt=0)  # tau (the logits are divided by it)
    # the student's optimiser and schedule; defaults: the PromptKD method's reference values
    lr: float = bounded(PromptKDConfig.lr, gt=0)
    batch_size: int = bounded(PromptKDConfig.batch_size, ge=2, why="the projector's BatchNorm cannot train on one image, so batches of 1 are dropped")
    epochs: int = bounded(PromptKDConfig.epochs, ge=1)
    warmup_epochs: int = bounded(PromptKDConfig.warmup_epochs, ge=0)  # at constant warmup_lr, then cosine
    warmup_lr: float = bounded(PromptKDConfig.warmup_lr, ge=0)
    momentum: float = bounded(PromptKDConfig.momentum, ge=0, lt=1)
    weight_decay: float = bounded(PromptKDConfig.weight_decay, ge=0)
    checkpoint_every: int = runtime_setting(200, ge=0)  # steps between atomic checkpoints (resume point after a crash)
    # shard decoding workers per process; fingerprinted: each worker streams its own shards, so the
    # count decides which images share a batch
    workers: int = bounded(4, ge=0)
    agreement_every: int = bounded(1, ge=0)  # epochs between held-out agreement probes (0: only at start and end)
    # >0: run the teacher once over this many augmented views of every image (stage teacher-cache)
    # and read its features instead of a teacher forward per step; epoch e trains on view e % V, so
    # with V < epochs views and shard order repeat. 0: the reference, a teacher forward every step
    cache_views: int = bounded(0, ge=0)
    # which epoch's student is kept (kdpipe.train.selection): last, or best_val as PromptKD's own
    # configs do (TEST.FINAL_MODEL): the epoch scoring best on held-out labelled base images
    # (the few-shot val split, never the test split), its number in the metrics
    select: Literal["last", "best_val"] = "last"
    # the teacher gate (kdpipe.distill.gate) stops a run whose teacher does not beat the student's
    # zero-shot on held-out base images; true runs it anyway. It never changes what a run makes.
    allow_weak_teacher: bool = runtime_setting(False)
    # the divergence (kdpipe.distill.loss): kl, the reference's KL(teacher || student), or
    # symmetric_kl, KDPL's mean of forward and reverse KL
    loss: Literal["kl", "symmetric_kl"] = "kl"
    # class-agnostic distillation (kdpipe.distill.vocabulary, KDPL-CA): a file of class names, one a
    # line, or a built-in list (imagenet, world); the KL runs per batch over the `vocabulary_top_k`
    # of them the teacher finds likeliest. Empty: the dataset's classes, the reference.
    vocabulary: str = ""
    vocabulary_top_k: int = bounded(1000, ge=2)  # KDPL's K_MAX


@config_section("shards")
@dataclass
class ShardsConfig:
    # "all" (or empty): the train split of ALL classes, labels dropped (PromptKD's transductive
    # setting); "base": base classes only (inductive; cross-dataset: the source's images); anything
    # else: a user's webdataset pattern (local path, brace pattern or pipe: URL). kdpipe/stages/shards.py
    unlabeled: str = ""
    per_shard: int = bounded(1000, ge=1)  # samples per tar shard
    max_side: int = bounded(256, ge=0)  # shorter side resized to at most this many pixels (0: keep originals)
    holdout: int = bounded(256, ge=0)  # images kept out of training to measure student-teacher agreement ...
    holdout_fraction: float = bounded(0.05, gt=0, le=1)  # ... but never more than this share of the unlabeled set


@config_section("baselines", members=method_config)
@dataclass
class BaselinesConfig:
    # few-shot methods trained on base classes on the STUDENT backbone, for comparison rows
    methods: list[str] = field(default_factory=lambda: ["zeroshot", "coop", "cocoop", "maple", "promptsrc"])
    checkpoint_every: int = runtime_setting(0, ge=0)


@config_section("evaluate")
@dataclass
class EvaluateConfig:
    batch_size: int = runtime_setting(64, ge=1)
    split: Literal["test", "val"] = "test"
    # cross mode: more datasets scored on all their classes (domain generalisation: the ImageNet variants)
    targets: list[str] = field(default_factory=list)


@config_section("report")
@dataclass
class ReportConfig:
    title: str = ""  # defaults to "<dataset>: <teacher> -> <student>"


def check_methods(names: list[str], what: str) -> None:
    """Every name is a registered method that learns from labelled images (not the student)."""
    from kdpipe.methods import get_method, list_methods

    supervised = [m for m in list_methods() if not get_method(m).needs_class_features]
    unknown = [n for n in names if n not in supervised]
    if unknown:
        students = [n for n in unknown if n in list_methods()]
        why = f"{', '.join(students)} is a distillation student (it learns from a teacher, see distill)" if students else f"unknown method(s) {', '.join(unknown)}"
        raise KdpipeError(f"{what}: {why}; choose from: {', '.join(supervised)}")
