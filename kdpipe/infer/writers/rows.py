"""What a result file holds: :class:`Row`, and :class:`RowFile`, what every format implements."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULT_COLUMNS = ("labels", "scores", "probs", "ids")


@dataclass
class Row:
    key: str
    labels: list[str]
    scores: list[float]  # cosine similarities
    ids: list[int]
    probs: list[float] | None = None  # softmax over all classes; None only from callers that have none
    meta: dict[str, Any] | None = None  # the extra columns (``--keep-meta``), by column name

    @classmethod
    def from_record(cls, record: dict[str, Any], key_column: str, extra_columns=()) -> "Row":
        """A row back from a JSONL/Parquet record (merging parts)."""
        return cls(str(record[key_column]), list(record["labels"]), list(record["scores"]), list(record["ids"]),
                   record.get("probs"), {c: record.get(c) for c in extra_columns} or None)

    def cell(self, column: str) -> Any:
        return (self.meta or {}).get(column)


class RowFile(ABC):
    """One output file: reads back the keys it holds, appends rows durably, finishes."""

    def __init__(self, path: Path, key_column: str, top_k: int, extra_columns=()):
        self.path = path
        self.key_column = key_column
        self.top_k = top_k
        self.extra_columns = list(extra_columns)

    @abstractmethod
    def recover(self) -> set[str]:
        """Repair a torn tail left by a kill; return the keys of the complete rows."""

    @abstractmethod
    def append(self, rows: list[Row]) -> None:
        """Add rows durably (they survive a kill once this returns)."""

    @abstractmethod
    def read(self) -> list[Row]:
        """Every complete row in the file (merging ``--parts``)."""

    def unwritable(self, key: str) -> str | None:
        """Why this key cannot be stored in this format (None: it can)."""
        return None

    def finish(self) -> None:
        """Called once the whole input is done."""


def meta_cell(value: Any) -> str:
    """A meta value as one text cell: strings as they are, anything else as JSON, missing as empty."""
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
