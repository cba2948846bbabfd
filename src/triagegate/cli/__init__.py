"""The ``triagegate`` command line.

Each subcommand lives in its own module and registers itself on :data:`app`. Modules
import only Typer at the top and the rest inside their commands, so ``--help`` is quick.
Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error; failures
print one clear line on stderr.
"""

from __future__ import annotations

import importlib
import sys
from typing import Annotated

import typer

app = typer.Typer(
    name="triagegate",
    help="Triage support tickets with a cheap model and escalate to a flagship only when the gate says so.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
graph_app = typer.Typer(help="Inspect and validate graph files.", no_args_is_help=True)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            installed = version("triagegate")
        except PackageNotFoundError:
            installed = "unknown (not installed as a package)"
        typer.echo(f"triagegate {installed}")
        raise typer.Exit()


@app.callback()
def _options(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the installed version and exit."
        ),
    ] = False,
) -> None:
    pass


app.add_typer(graph_app, name="graph")

COMMAND_MODULES = [
    "run_cmd",
    "graph_cmd",
    "serve_cmd",
    "queue_cmd",
    "train_cmd",
    "eval_cmd",
    "batch_cmd",
    "demo_cmd",
    "calibrate_cmd",
    "handoff_cmd",
    "report_cmd",
]
"""Modules that register subcommands on import; add one line per new subcommand module."""

for _module in COMMAND_MODULES:
    importlib.import_module(f"triagegate.cli.{_module}")

__all__ = ["COMMAND_MODULES", "app", "graph_app", "main"]


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: map triagegate errors to exit codes and one line on stderr."""
    from triagegate.errors import ConfigError, InputError, TriagegateError

    try:
        code = app(args=argv, standalone_mode=False)
    except (ConfigError, InputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TriagegateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        print("aborted", file=sys.stderr)
        return 1
    except Exception as exc:
        # Typer vendors its own click, so usage errors are recognised by shape, not by class.
        show = getattr(exc, "show", None)
        if callable(show) and isinstance(getattr(exc, "exit_code", None), int):
            show()
            return 2
        raise
    return code if isinstance(code, int) else 0
