"""Progress display and stage logs: plain lines for CI, quiet other ranks, the log file."""

from __future__ import annotations

import io
import re
from contextlib import redirect_stderr

from kdpipe.progress import Progress, format_duration, plain_mode, stage_logger


def test_plain_mode_follows_ci_and_override(monkeypatch):
    monkeypatch.delenv("KDPIPE_PROGRESS", raising=False)
    monkeypatch.setenv("CI", "true")
    assert plain_mode()
    monkeypatch.setenv("KDPIPE_PROGRESS", "rich")
    assert not plain_mode()
    monkeypatch.setenv("KDPIPE_PROGRESS", "plain")
    monkeypatch.delenv("CI")
    assert plain_mode()


def test_plain_lines_are_sparse_and_complete(tmp_path):
    log = stage_logger("toy", tmp_path / "log.txt", console=False)
    err = io.StringIO()
    with redirect_stderr(err):
        with Progress(200, "distill", plain=True, log=log) as bar:
            for i in range(200):
                bar.update(1, images=8, loss=1.0 / (i + 1))
    lines = err.getvalue().splitlines()
    assert 15 <= len(lines) <= 21  # every 5 %, not every step
    last = lines[-1]
    assert re.fullmatch(r"distill: step 200/200 \(100%\) [\d.]+ img/s loss 0\.005", last), last
    assert re.search(r"step 10/200 \(5%\) [\d.]+ img/s eta \S+ loss 0\.1$", lines[0]), lines[0]
    logged = (tmp_path / "log.txt").read_text()
    assert "step 200/200" in logged


def test_resumed_progress_starts_at_initial_and_quiet_ranks_print_nothing(tmp_path):
    err = io.StringIO()
    with redirect_stderr(err):
        with Progress(10, "train", plain=True, initial=6) as bar:
            for _ in range(4):
                bar.update(1)
        with Progress(10, "train", plain=True, quiet=True) as bar:
            for _ in range(10):
                bar.update(1)
    lines = err.getvalue().splitlines()
    assert lines[0].startswith("train: step 7/10 (70%)") and lines[-1].startswith("train: step 10/10 (100%)")
    assert len(lines) == 4


def test_stage_logger_writes_file_and_console(tmp_path):
    err = io.StringIO()
    with redirect_stderr(err):
        log = stage_logger("distill@seed1", tmp_path / "log.txt")
        log.info("hello")
        log.debug("details")
    assert err.getvalue() == "  [distill@seed1] hello\n"
    text = (tmp_path / "log.txt").read_text()
    assert "INFO hello" in text and "DEBUG details" in text


def test_format_duration():
    assert [format_duration(s) for s in (3, 75, 3725)] == ["3s", "1m15s", "1h02m"]
