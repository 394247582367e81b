"""Output formats by file suffix: ``@register_format(".ext")`` on a :class:`RowFile` class."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from kdpipe.errors import KdpipeError
from kdpipe.infer.writers.rows import RowFile

_FORMATS: dict[str, Callable[..., "RowFile"]] = {}


def register_format(*suffixes: str):
    def add(cls):
        for s in suffixes:
            _FORMATS[s] = cls
        return cls

    return add


def output_format(out: Path) -> str:
    suffix = out.suffix.lower()
    if suffix not in _FORMATS:
        raise KdpipeError(f"--out {out}: unknown output format {suffix or '(no suffix)'}; use one of {', '.join(sorted(_FORMATS))}")
    if suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise KdpipeError(f"--out {out}: Parquet output needs pyarrow (pip install 'kdpipe[parquet]'); or write .jsonl or .csv") from None
    return suffix


def row_file_class(suffix: str) -> Callable[..., RowFile]:
    """The :class:`RowFile` class registered for ``suffix`` (checked by :func:`output_format` first)."""
    return _FORMATS[suffix]
