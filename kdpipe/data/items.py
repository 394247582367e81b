"""What every dataset reader returns: labelled image paths grouped into train/val/test."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Item:
    """One labelled image. ``path`` is absolute; ``label`` indexes ``DatasetSplits.classnames``."""

    path: str
    label: int
    classname: str


@dataclass
class DatasetSplits:
    """A dataset as the rest of kdpipe sees it.

    ``classnames[label]`` is the name used in prompts. ``skipped`` lists ``(path, reason)`` for
    entries the reader dropped (a split file naming an image that is not on disk, an unreadable
    row), so a caller can report them instead of silently training on less data.
    """

    train: list[Item]
    val: list[Item]
    test: list[Item]
    classnames: list[str]
    name: str
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def split(self, which: str) -> list[Item]:
        """``train``, ``val``, ``test`` or ``all`` (the three concatenated, in that order)."""
        if which == "all":
            return self.train + self.val + self.test
        if which not in ("train", "val", "test"):
            from kdpipe.errors import KdpipeError

            raise KdpipeError(f"unknown split {which!r}; expected train, val, test or all")
        return getattr(self, which)

    def summary(self) -> str:
        """One line: name, class count and split sizes (plus skipped entries when there are any)."""
        text = (
            f"{self.name}: {self.num_classes} classes, train {len(self.train)}, "
            f"val {len(self.val)}, test {len(self.test)}"
        )
        if self.skipped:
            text += f", {len(self.skipped)} skipped"
        return text

    def per_class_counts(self, which: str = "train") -> dict[int, int]:
        return dict(sorted(Counter(item.label for item in self.split(which)).items()))
