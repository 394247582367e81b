"""Progress for long loops: a rich bar on a terminal, plain lines in CI logs, and the stage log.

``Progress(total, desc)`` shows step M/N, images/s, ETA and the latest loss (or any other numbers
passed to ``update``). It draws a rich bar when stderr is a terminal, and otherwise (or when
``CI=true`` or ``KDPIPE_PROGRESS=plain``) prints a plain line every 5 % / 30 s so CI logs stay short.
Either way, plain lines go to the stage log at the same cadence so the log shows how a run went.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from typing import Any, Callable, Iterator

PLAIN_EVERY_FRACTION = 0.05  # a plain line every 5 % of the total ...
PLAIN_EVERY_SECONDS = 30.0  # ... or every 30 s, whichever comes first


def plain_mode() -> bool:
    """True when progress should be plain lines: not a terminal, CI, or asked for."""
    forced = os.environ.get("KDPIPE_PROGRESS", "").lower()
    if forced in ("plain", "rich"):
        return forced == "plain"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        return True
    return not sys.stderr.isatty()


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, s = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{s:02d}s"
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class Progress:
    """A progress display for one loop; use as a context manager.

    ``initial`` is where a resumed loop starts: rates and ETA count only the steps done in this
    process, so a resumed run does not report an absurd speed.
    """

    def __init__(self, total: int | None, desc: str, unit: str = "step", initial: int = 0,
                 log: logging.Logger | None = None, plain: bool | None = None, quiet: bool = False):
        self.total = total
        self.desc = desc
        self.unit = unit
        self.done = initial
        self.log = log
        self.plain = plain_mode() if plain is None else plain
        self.quiet = quiet  # nothing on the console (other DDP ranks, or not asked for); the log still gets lines
        self.fields: dict[str, Any] = {}
        self._initial = initial
        self._images = 0
        self._t0 = time.monotonic()
        self._last_line_t = self._t0
        self._last_line_step = initial
        self._bar = None
        self._task = None

    # ---- context manager ------------------------------------------------------------------------
    def __enter__(self) -> "Progress":
        if not self.plain and not self.quiet:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[post]}"),
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.desc, total=self.total, completed=self.done, rate="", post="")
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(ok=exc_type is None)

    # ---- updates --------------------------------------------------------------------------------
    def update(self, n: int = 1, images: int | None = None, **fields: Any) -> None:
        """Advance by ``n`` steps; ``images`` processed in them feed images/s; ``fields`` (e.g.
        ``loss=0.31``) are shown beside the bar."""
        self.done += n
        if images:
            self._images += images
        self.fields.update(fields)
        now = time.monotonic()
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, rate=self.rate_text(), post=self.fields_text())
        if self._due(now):
            self._line(now)

    def _due(self, now: float) -> bool:
        if self.total and self.done >= self.total:
            return True
        step_every = max(1, int((self.total or 0) * PLAIN_EVERY_FRACTION)) if self.total else None
        if step_every is not None and self.done - self._last_line_step >= step_every:
            return True
        return now - self._last_line_t >= PLAIN_EVERY_SECONDS

    def _line(self, now: float) -> None:
        self._last_line_t, self._last_line_step = now, self.done
        text = self.line()
        if self.plain and not self.quiet:
            print(text, file=sys.stderr, flush=True)
        if self.log is not None:
            self.log.debug(text)  # file only: the console already has the bar or the line

    # ---- text -----------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    def rate_text(self) -> str:
        elapsed = self.elapsed()
        if elapsed <= 0:
            return ""
        if self._images:
            return f"{self._images / elapsed:.1f} img/s"
        return f"{(self.done - self._initial) / elapsed:.2f} {self.unit}/s"

    def eta(self) -> float | None:
        steps = self.done - self._initial
        if not self.total or steps <= 0:
            return None
        return (self.total - self.done) * self.elapsed() / steps

    def fields_text(self) -> str:
        return " ".join(f"{k} {_fmt(v)}" for k, v in self.fields.items())

    def line(self) -> str:
        """One plain line: ``distill: step 120/1000 (12%) 35.2 img/s eta 4m10s loss 0.4213``."""
        parts = [f"{self.desc}: {self.unit} {self.done}"]
        if self.total:
            parts[0] += f"/{self.total} ({100 * self.done / self.total:.0f}%)"
        rate = self.rate_text()
        if rate:
            parts.append(rate)
        eta = self.eta()
        if eta is not None and self.done < (self.total or 0):
            parts.append(f"eta {format_duration(eta)}")
        if self.fields:
            parts.append(self.fields_text())
        return " ".join(parts)

    def close(self, ok: bool = True) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        if ok and self.done != self._last_line_step:
            self._line(time.monotonic())


@contextlib.contextmanager
def busy(desc: str, plain: bool | None = None) -> Iterator[None]:
    """One opaque step that takes seconds but has no count (importing torch and open_clip, building
    a model): a spinner on a terminal; otherwise a line before and one with the time after, on
    stderr, so a log never shows an unexplained silence (stdout stays for the command's answer)."""
    if not (plain_mode() if plain is None else plain):
        from rich.console import Console

        with Console(stderr=True).status(desc):
            yield
        return
    t0 = time.monotonic()
    print(f"{desc} ...", file=sys.stderr, flush=True)
    yield
    print(f"{desc}: done in {format_duration(time.monotonic() - t0)}", file=sys.stderr, flush=True)


class _LiveStderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at emit time (rich redirects it while a bar is live)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=sys.stderr, flush=True)
        except Exception:  # noqa: BLE001 - logging must never take a stage down
            self.handleError(record)


def stage_logger(name: str, log_file: os.PathLike | str, console: bool = True) -> logging.Logger:
    """A logger for one stage run: everything into ``log_file``, INFO and up to stderr."""
    log = logging.getLogger(f"kdpipe.stage.{name}")
    close_logger(log)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    fh = logging.FileHandler(log_file, encoding="utf-8")
    fh.setLevel(logging.DEBUG)
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(fh)
    if console:
        sh = _LiveStderrHandler()
        sh.setLevel(logging.INFO)
        sh.setFormatter(logging.Formatter(f"  [{name}] %(message)s"))
        log.addHandler(sh)
    return log


def close_logger(log: logging.Logger) -> None:
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()


def step_reporter(bar, epochs: int, images_per_step: Callable[[], int]) -> Callable[[dict], None]:
    """A :func:`kdpipe.train.fit` progress callback feeding a progress bar (step, images/s, epoch, loss, lr)."""

    def report(info: dict) -> None:
        bar.update(1, images=images_per_step(), epoch=f"{info['epoch'] + 1}/{epochs}", loss=info["loss"], lr=info["lr"])

    return report
