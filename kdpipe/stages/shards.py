"""Stage ``shards``: the unlabeled distillation set as webdataset tar shards, plus a held-out slice.

Default (PromptKD's transductive setting, recorded in ``shards.json`` and in every report): the
train split of ALL classes, base and novel, with labels dropped. With ``shards.unlabeled`` (or
``--set shards.unlabeled=PATTERN``) the user's own shards are streamed as they are instead.

A held-out slice (``shards.holdout`` images, at most ``shards.holdout_fraction`` of the set) is
kept out of training to measure student-teacher agreement each epoch: built shards leave those
images out; with user shards, the first images of the first shard are copied to ``holdout/`` and
distill drops their keys from the training stream.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

from kdpipe.dist import leader_only
from kdpipe.io import read_json, write_json
from kdpipe.pipeline import dir_listing, register_stage
from kdpipe.errors import KdpipeError
from kdpipe.stages import inputs

INFO = "shards.json"
TRAIN_DIR = "unlabeled"
HOLDOUT_DIR = "holdout"
HOLDOUT_SEED = 20240601  # the slice is a property of the data, not of a training seed
ORDER_SEED = 20240602  # the stored order, likewise (the stream reshuffles shards and a buffer per epoch)


def _identity(cfg) -> Any:
    pattern = cfg["shards"].unlabeled
    if not pattern:
        return inputs.data_identity(cfg)
    if pattern.startswith("pipe:"):
        return {"pattern": pattern}
    from kdpipe.data.shards import expand_pattern

    files = []
    for url in expand_pattern(pattern):
        p = Path(url[len("file:"):] if url.startswith("file:") else url).expanduser()
        files += [(str(p), *entry[1:]) for entry in dir_listing(p)] if p.exists() else [(str(p), None, None)]
    return {"pattern": pattern, "files": files}


def read_shards_info(stage_dir: str | Path, cfg) -> dict[str, Any]:
    """``shards.json``, with the shard locations re-derived from the settings and the stage folder.

    The file's own ``train``/``holdout`` entries are never used as locations: a run dir may come
    from someone else, and a ``pipe:`` URL placed there would run a command. The user's pattern
    comes from the settings (``shards.unlabeled``: the command line or a trusted recipe), the built
    shards from this folder (which can move with the run dir).
    """
    stage_dir = Path(stage_dir)
    info = read_json(stage_dir / INFO)
    pattern = cfg["shards"].unlabeled
    info["train"] = pattern if pattern else str(stage_dir / TRAIN_DIR)
    info["holdout"] = str(stage_dir / HOLDOUT_DIR) if (stage_dir / HOLDOUT_DIR).is_dir() else ""
    return info


def holdout_size(total: int, cfg) -> int:
    s = cfg["shards"]
    return max(0, min(s.holdout, int(total * s.holdout_fraction)))


def _copy_first_samples(pattern: str, n: int, out: Path) -> list[str]:
    """Copy the first ``n`` readable samples of the user's shards, bytes untouched, into one tar."""
    import webdataset as wds

    from kdpipe.data.shards import expand_pattern
    from kdpipe.data.shards.tarread import iter_samples

    keys: list[str] = []
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        with wds.TarWriter(str(tmp)) as sink:
            for url in expand_pattern(pattern):
                for sample in iter_samples(url, lambda *problem: None):  # corrupt ones are reported by distill
                    sink.write({k: v for k, v in sample.items() if not k.startswith("__") or k == "__key__"})
                    keys.append(sample["__key__"])
                    if len(keys) >= n:
                        break
                if len(keys) >= n:
                    break
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    if not keys:
        raise KdpipeError(f"shards.unlabeled {pattern!r} holds no readable samples; give a pattern naming webdataset .tar shards")
    return keys


def _write_shards(ctx) -> dict:
    from kdpipe.data.shards import write_shards

    s = ctx.cfg["shards"]
    if s.unlabeled:
        n_hold = max(1, min(s.holdout, 10_000)) if s.holdout else 0
        keys = _copy_first_samples(s.unlabeled, n_hold, ctx.dir / HOLDOUT_DIR / "holdout-000000.tar") if n_hold else []
        info = {
            "source": "user shards",
            "train": s.unlabeled,
            "holdout": HOLDOUT_DIR if keys else "",
            "holdout_keys": keys,
            "filter_holdout": True,
            "transductive": False,
            "images": None,
        }
        ctx.log.info(f"using the user's shards {s.unlabeled}; {len(keys)} images held out for agreement")
    else:
        splits = inputs.load_splits(ctx.cfg)
        items = list(splits.train)
        if len(items) < 2:
            raise KdpipeError(f"{splits.name} has {len(items)} train images; distillation needs unlabeled images")
        n_hold = holdout_size(len(items), ctx.cfg)
        held_idx = set(random.Random(HOLDOUT_SEED).sample(range(len(items)), n_hold))
        train = [it for i, it in enumerate(items) if i not in held_idx]
        held = [it for i, it in enumerate(items) if i in held_idx]
        write_shards(train, ctx.dir / TRAIN_DIR, per_shard=s.per_shard, max_side=s.max_side, keep_labels=False, shuffle_seed=ORDER_SEED)
        if held:
            write_shards(held, ctx.dir / HOLDOUT_DIR, per_shard=s.per_shard, max_side=s.max_side, keep_labels=False)
        info = {
            "source": f"train split of all {splits.num_classes} classes of {splits.name}, labels dropped",
            "train": TRAIN_DIR,
            "holdout": HOLDOUT_DIR if held else "",
            "holdout_keys": [],
            "filter_holdout": False,
            "transductive": True,
            "images": len(train),
        }
        ctx.log.info(f"{len(train)} unlabeled images of all {splits.num_classes} classes (transductive, as in PromptKD), {len(held)} held out")
    write_json(ctx.dir / INFO, info)
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
