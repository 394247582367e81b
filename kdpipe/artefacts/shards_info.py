"""``shards.json``: what the ``shards`` stage made of ``shards.unlabeled``, read by ``distill``,
``teacher-cache`` and ``evaluate``.

The stage folder holds the built shards (``unlabeled/``) and the held-out slice (``holdout/``);
with the user's own shards only the held-out copy. The file records the set's source, its protocol
(one of :data:`PROTOCOLS`), the image count and, for user shards, the held-out (shard URL, key)
pairs distill drops from the training stream.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdpipe.io import read_json, write_json

INFO = "shards.json"
TRAIN_DIR = "unlabeled"
HOLDOUT_DIR = "holdout"

# Protocol names, as ``shards.json`` and the report write them.
TRANSDUCTIVE = "transductive"
INDUCTIVE = "inductive"
USER_SHARDS = "user shards"
PROTOCOLS = (TRANSDUCTIVE, INDUCTIVE, USER_SHARDS)

# ``shards.unlabeled`` words naming a set the stage builds ("" is the default's spelling of "all");
# any other value is a pattern naming the user's own shards.
BUILT_SETS = ("", "all", "base")


def write_shards_info(stage_dir: str | Path, info: dict[str, Any]) -> None:
    write_json(Path(stage_dir) / INFO, info)


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
    info["train"] = str(stage_dir / TRAIN_DIR) if pattern in BUILT_SETS else pattern
    info["holdout"] = str(stage_dir / HOLDOUT_DIR) if (stage_dir / HOLDOUT_DIR).is_dir() else ""
    return info


def protocol_of(stage_dir: str | Path) -> str:
    """The protocol of the student's unlabeled set (sets written before ``shards.json`` named one:
    transductive when built, the user's shards otherwise)."""
    info = read_json(Path(stage_dir) / INFO)
    return info.get("protocol") or (TRANSDUCTIVE if info.get("transductive") else USER_SHARDS)
