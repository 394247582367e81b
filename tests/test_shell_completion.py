"""Shell completion: `kdpipe --show-completion SHELL` prints the script `--install-completion` installs."""

from __future__ import annotations

from typer.testing import CliRunner

from kdpipe.cli import app


def test_show_completion_prints_a_bash_script():
    result = CliRunner().invoke(app, ["--show-completion", "bash"], prog_name="kdpipe")
    assert result.exit_code == 0, result.output
    assert "complete -o default -F" in result.stdout and "_KDPIPE_COMPLETE=complete_bash" in result.stdout


def test_completion_options_are_listed_in_help():
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert "--install-completion" in result.output and "--show-completion" in result.output
