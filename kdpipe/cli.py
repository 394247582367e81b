"""The ``kdpipe`` command: a thin typer app; every command lives in ``kdpipe/commands/``.

Command modules import torch and friends inside their functions, so ``kdpipe --help`` is quick.
"""

from __future__ import annotations

import importlib
import sys

import typer

from kdpipe.errors import KdpipeError

app = typer.Typer(
    name="kdpipe",
    help="Distil a large CLIP into a small one with prompt learning on unlabeled images, then classify offline.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion SHELL (bash, zsh, fish, powershell)
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _show_version(value: bool) -> None:
    if value:
        import kdpipe

        typer.echo(f"kdpipe {kdpipe.__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(False, "--version", "-V", callback=_show_version, is_eager=True,
                                 help="print kdpipe's version and exit (`kdpipe version` lists torch, open_clip, faiss too)"),
) -> None:
    """Distil a large CLIP into a small one with prompt learning on unlabeled images, then classify offline."""

# Each module defines ``register(app)``; a command is listed only once its module is here.
COMMAND_MODULES = [
    "kdpipe.commands.info",
    "kdpipe.commands.bench",
    "kdpipe.commands.classify",
    "kdpipe.commands.methods",
    "kdpipe.commands.run",
    "kdpipe.commands.datasets",
    "kdpipe.commands.shards",
    "kdpipe.commands.demo",
    "kdpipe.commands.report",
]

for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(app)


def main() -> None:
    """Console entry point: bad input becomes one ``error:`` line and a non-zero exit."""
    try:
        app()
    except KdpipeError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except OSError as e:
        # a full disk, a quota or a read-only file system met outside kdpipe's own writers (which say
        # so themselves): one line too; any other OSError is a bug and keeps its traceback
        from kdpipe.io import disk_problem

        problem = disk_problem(e)
        if problem is None:
            raise
        typer.echo(f"error: {problem}", err=True)
        sys.exit(problem.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted: finished stages are kept; run the same command again to resume", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
