"""Stage ``shards``: the unlabeled distillation set as webdataset tar shards, plus a held-out slice.

``shards.unlabeled`` picks the set, and with it the protocol recorded in ``shards.json``
(``protocol``) and in every report row of the student:

- ``all`` (or empty, the default): the train split of ALL classes, base and novel, labels dropped:
  PromptKD's transductive setting. In cross-dataset mode: every train image of the target.
  When the distillation set IS the teacher's labelled source (domain generalisation: ImageNet in,
  its shifted versions only evaluated) no unseen class or domain is in it: inductive.
- ``base``: only the train images of the base classes (cross-dataset: of the source dataset the
  teacher learned from, none of the target's): inductive, no novel-class image reaches distillation.
- anything else: a pattern naming the user's own shards, streamed as they are (protocol
  ``user shards``: kdpipe cannot know what they hold).

A held-out slice (``shards.holdout`` images, at most ``shards.holdout_fraction`` of the set) is
kept out of training to measure student-teacher agreement each epoch: built shards leave those
images out; with user shards, the first images of the first shard are copied to ``holdout/`` and
distill drops them from the training stream by shard and key (``holdout_members``: keys repeat
across shard sets, every ``kdpipe shards write`` set starts at ``00000000``).
"""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path
from typing import Any, Iterator

from kdpipe.artefacts.shards_info import (
    BUILT_SETS, HOLDOUT_DIR, INDUCTIVE, INFO, TRAIN_DIR, TRANSDUCTIVE, USER_SHARDS, write_shards_info,
)
from kdpipe.dist import leader_only
from kdpipe.distill.batches import MIN_BATCH
from kdpipe.io import atomic_path
from kdpipe.pipeline import dir_listing, register_stage
from kdpipe.errors import KdpipeError
from kdpipe.settings import inputs

HOLDOUT_SEED = 20240601  # the slice is a property of the data, not of a training seed
ORDER_SEED = 20240602  # the stored order, likewise (the stream reshuffles shards and a buffer per epoch)


def _all_classes(cfg) -> tuple[list, str, str]:
    splits = inputs.load_splits(cfg)
    protocol = built_protocol(cfg)
    what = ("the source dataset the teacher learned from" if protocol == INDUCTIVE
            else "base and novel" if cfg["data"].mode == "base2novel" else "the target")
    return list(splits.train), f"train split of all {splits.num_classes} classes of {splits.name} ({what}), labels dropped", protocol


def _base_classes(cfg) -> tuple[list, str, str]:
    from kdpipe.data.splits import base_novel_labels

    d = cfg["data"]
    if d.mode == "cross":
        # the classes the teacher learned are the source's: none of the target's images
        splits = inputs.load_splits(cfg, source=True)
        return list(splits.train), f"train split of the source {splits.name} (no image of the target {d.dataset}), labels dropped", INDUCTIVE
    splits = inputs.load_splits(cfg)
    base, _ = base_novel_labels(splits.num_classes)
    keep = set(base)
    items = [it for it in splits.train if it.label in keep]
    return items, f"train split of the {len(base)} base classes of {splits.name} (of {splits.num_classes}; no novel-class image), labels dropped", INDUCTIVE


# the words of ``BUILT_SETS`` -> (train items, what they are, protocol); any other value is a
# pattern naming the user's own shards. "" is the default's spelling of "all".
UNLABELED_SETS = {"": _all_classes, "all": _all_classes, "base": _base_classes}


def built_protocol(cfg) -> str | None:
    """The protocol of a set kdpipe builds, from the settings alone; None for the user's shards."""
    d, word = cfg["data"], cfg["shards"].unlabeled
    if word not in BUILT_SETS:
        return None
    # with "all", the distillation set may be the teacher's own labelled source (domain
    # generalisation): then the student sees no class and no domain the teacher did not learn from
    if word == "base" or (d.mode == "cross" and d.train_dataset == d.dataset):
        return INDUCTIVE
    return TRANSDUCTIVE


def _identity(cfg) -> Any:
    pattern = cfg["shards"].unlabeled
    if pattern in BUILT_SETS:
        identity = inputs.data_identity(cfg)
        if pattern == "base" and cfg["data"].mode == "cross":
            identity = inputs.source_identity(cfg)
        # the transductive default keeps the identity older run dirs were fingerprinted with; the
        # protocol is named when it differs, so a setting that flips it redoes the shards
        protocol = built_protocol(cfg)
        return identity if protocol == TRANSDUCTIVE else {**identity, "protocol": protocol, "mode": cfg["data"].mode}
    if pattern.startswith("pipe:"):
        return {"pattern": pattern}
    from kdpipe.data.shards import expand_pattern

    files = []
    for url in expand_pattern(pattern):
        p = Path(url[len("file:"):] if url.startswith("file:") else url).expanduser()
        files += [(str(p), *entry[1:]) for entry in dir_listing(p)] if p.exists() else [(str(p), None, None)]
    return {"pattern": pattern, "files": files}


def holdout_size(total: int, cfg) -> int:
    s = cfg["shards"]
    return max(0, min(s.holdout, int(total * s.holdout_fraction)))


def _refuse_too_few_left(found: str, total: int, held: int, cfg) -> None:
    """Refuse a set the held-out slice leaves too little of, here rather than as an empty epoch in
    distill; the one line gives the numbers and the settings to change."""
    if total - held >= MIN_BATCH:
        return
    s = cfg["shards"]
    raise KdpipeError(
        f"{found}, {held} held out for agreement (shards.holdout={s.holdout}, shards.holdout_fraction={s.holdout_fraction:g}), "
        f"leaving {total - held} for distillation, which needs at least {MIN_BATCH} (a batch the projector's BatchNorm can "
        "train on); lower shards.holdout or shards.holdout_fraction (shards.holdout=0 measures no agreement), or add images"
    )


def _image_samples(pattern: str) -> Iterator[dict]:
    """The user's samples distill can train on: readable, with an image member (a sample of captions
    or labels alone is skipped there, so it counts for nothing here either)."""
    from kdpipe.data.shards import expand_pattern
    from kdpipe.data.shards.samples import BadSample, image_bytes
    from kdpipe.data.shards.tarread import iter_samples

    for url in expand_pattern(pattern):
        for sample in iter_samples(url, lambda *problem: None):  # corrupt ones are reported by distill
            try:
                image_bytes(sample)
            except BadSample:
                continue
            yield sample


def _count_images(pattern: str, limit: int) -> int:
    """Images in the user's shards, counted no further than ``limit``."""
    return sum(1 for _ in itertools.islice(_image_samples(pattern), limit))


def _copy_first_samples(pattern: str, n: int, out: Path) -> list[list[str]]:
    """Copy the first ``n`` samples with an image of the user's shards, bytes untouched, into one tar
    (atomically: a full disk is one line); returns their [shard URL, key] pairs."""
    import webdataset as wds

    keys: list[list[str]] = []
    with atomic_path(out) as tmp, wds.TarWriter(str(tmp)) as sink:
        for sample in itertools.islice(_image_samples(pattern), n):
            sink.write({k: v for k, v in sample.items() if not k.startswith("__") or k == "__key__"})
            keys.append([sample["__url__"], sample["__key__"]])
    if not keys:
        raise KdpipeError(f"shards.unlabeled {pattern!r} holds no readable images; give a pattern naming webdataset .tar shards")
    return keys


def _write_shards(ctx) -> dict:
    from kdpipe.data.shards import write_shards

    s = ctx.cfg["shards"]
    if s.unlabeled not in BUILT_SETS:
        # Count only as far as it matters: past holdout / holdout_fraction images the fraction no
        # longer caps the slice, and a big remote set is not read through just to size it.
        wanted = min(s.holdout, 10_000)
        limit = math.ceil(wanted / s.holdout_fraction) + MIN_BATCH
        total = _count_images(s.unlabeled, limit)
        if total == 0:
            raise KdpipeError(f"shards.unlabeled {s.unlabeled!r} holds no readable images; give a pattern naming webdataset .tar shards")
        n_hold = min(wanted, holdout_size(total, ctx.cfg))
        _refuse_too_few_left(f"shards.unlabeled {s.unlabeled!r} holds {total} readable images", total, n_hold, ctx.cfg)
        members = _copy_first_samples(s.unlabeled, n_hold, ctx.dir / HOLDOUT_DIR / "holdout-000000.tar") if n_hold else []
        keys = [key for _, key in members]
        info = {
            "source": "user shards",
            "train": s.unlabeled,
            "holdout": HOLDOUT_DIR if keys else "",
            "holdout_keys": keys,
            "holdout_members": members,
            "filter_holdout": True,
            "transductive": False,
            "protocol": USER_SHARDS,
            "images": None,
        }
        counted = f"{total}{'+' if total >= limit else ''}"
        ctx.log.info(f"using the user's shards {s.unlabeled}; {len(keys)} of {counted} images held out for agreement")
    else:
        items, source, protocol = UNLABELED_SETS[s.unlabeled](ctx.cfg)
        if len(items) < 2:
            raise KdpipeError(f"the {source} holds {len(items)} images; distillation needs unlabeled images")
        n_hold = holdout_size(len(items), ctx.cfg)
        _refuse_too_few_left(f"the {source} holds {len(items)} images", len(items), n_hold, ctx.cfg)
        held_idx = set(random.Random(HOLDOUT_SEED).sample(range(len(items)), n_hold))
        train = [it for i, it in enumerate(items) if i not in held_idx]
        held = [it for i, it in enumerate(items) if i in held_idx]
        # decoding and resizing a big train split takes minutes: one bar over both folders
        with ctx.progress(len(items), desc="shards", unit="image") as bar:
            def done(n: int) -> None:
                bar.update(n, images=n)

            write_shards(train, ctx.dir / TRAIN_DIR, per_shard=s.per_shard, max_side=s.max_side, keep_labels=False,
                         shuffle_seed=ORDER_SEED, progress=done)
            if held:
                write_shards(held, ctx.dir / HOLDOUT_DIR, per_shard=s.per_shard, max_side=s.max_side, keep_labels=False, progress=done)
        info = {
            "source": source,
            "train": TRAIN_DIR,
            "holdout": HOLDOUT_DIR if held else "",
            "holdout_keys": [],
            "filter_holdout": False,
            "transductive": protocol == TRANSDUCTIVE,
            "protocol": protocol,
            "images": len(train),
        }
        ctx.log.info(f"{len(train)} unlabeled images, the {source} ({protocol}), {len(held)} held out")
    write_shards_info(ctx.dir, info)
    return {"images": info["images"] or 0, "holdout": len(info["holdout_keys"]) or n_hold, "transductive": info["transductive"]}


@register_stage(
    "shards",
    reads=["shards.unlabeled", "shards.per_shard", "shards.max_side", "shards.holdout", "shards.holdout_fraction"],
    outputs=[INFO],
    version=2,  # 2: train images stored in a shuffled order (1: dataset order, class by class)
    identity=_identity,
    headline="images",
    description="pack the unlabeled images into webdataset shards (or take the user's)",
)
def run(ctx) -> dict:
    # writes shared files: under torchrun rank 0 does it and the other ranks wait for it
    return leader_only(lambda: _write_shards(ctx))
