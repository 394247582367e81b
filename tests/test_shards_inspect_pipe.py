"""`kdpipe shards inspect` on a `pipe:` URL: the same numbers as the file read directly, and a
failing command is damage a script sees (exit 1)."""

from __future__ import annotations

import os
import re

from typer.testing import CliRunner

from kdpipe.cli import app
runner = CliRunner()


def _mb(output: str) -> tuple[str, str]:
    """(the shard row's MB cell, the total line's MB)."""
    row = next(line for line in output.splitlines() if "shard-000000.tar" in line)
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    total = re.search(r"total: \d+ readable samples, ([\d.]+) MB of members", output).group(1)
    return cells[2], total


def test_a_shard_through_pipe_reports_the_bytes_it_reports_read_directly(tmp_path):
    from PIL import Image

    (tmp_path / "src").mkdir()
    for i in range(4):  # noise: PNG cannot shrink it, so the shard holds some 100 kB per image
        Image.frombytes("RGB", (200, 150), os.urandom(200 * 150 * 3)).save(tmp_path / "src" / f"{i}.png")
    assert runner.invoke(app, ["shards", "write", str(tmp_path / "src"), str(tmp_path / "out"), "--max-side", "0"]).exit_code == 0
    shard = tmp_path / "out" / "shard-000000.tar"
    direct = runner.invoke(app, ["shards", "inspect", str(shard)], env={"COLUMNS": "200"})
    piped = runner.invoke(app, ["shards", "inspect", f"pipe:cat {shard}"], env={"COLUMNS": "200"})
    assert direct.exit_code == 0 and piped.exit_code == 0, direct.output + piped.output
    assert _mb(piped.output) == _mb(direct.output) != ("0.00", "0.00")


def test_a_failing_pipe_command_exits_1():
    result = runner.invoke(app, ["shards", "inspect", "pipe:false"])
    assert result.exit_code == 1, result.output
    assert "command 'false' failed with exit status 1" in result.output  # the whole reason on one line
