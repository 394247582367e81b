"""The wording every config error shares: where a value came from, and the closest valid key."""

from __future__ import annotations

import difflib
from typing import Iterable


def from_source(source: str) -> str:
    """`` (from SOURCE)`` for a message, or nothing when the source is unknown."""
    return f" (from {source})" if source else ""


def suggest(key: str, valid: Iterable[str]) -> str:
    """What to say after an unknown key: the closest valid key, else the section's keys, else the sections."""
    valid = sorted(set(valid))
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    if close:
        return f"did you mean {close[0]!r}?"
    section = key.split(".")[0]
    same = [k for k in valid if k.split(".")[0] == section]
    if same:
        return "valid keys: " + ", ".join(same)
    sections = sorted({k.split(".")[0] for k in valid})
    return "valid sections: " + (", ".join(sections) if sections else "(none registered)")
