"""The `distill` command line: parse, call the library, print a summary.

Each command lives in its own module here. Errors a user can fix (`DistillError`) print one line
and exit with code 2; `--debug` shows the traceback instead.
"""
from __future__ import annotations

import errno
import importlib
import sys

import click

from ..errors import DistillError

# command name -> module in distill.cli that defines a click command of the same name
COMMANDS = {
    "run": "run", "recipes": "run", "models": "run",
    "export": "export", "bench": "bench", "prune": "prune", "probe": "probe", "report": "report",
}


class LazyGroup(click.Group):
    """Imports a command's module only when that command runs (torch imports are slow)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module = importlib.import_module(f"{__name__}.{COMMANDS[name]}")
        return getattr(module, name.replace("-", "_"))


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.version_option(package_name="distill")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Make big vision models small, and prove it.

    \b
    Start here:
      distill run recipes/quickstart.toml       teacher -> student (+ baseline) -> summary
      distill recipes                           the shipped recipes
      distill export runs/quickstart/student.pt -o student.onnx
      distill bench runs/quickstart             teacher vs student: latency, size, accuracy
      distill report runs/quickstart            the run as one page: runs/quickstart/report.html
    """
    ctx.obj = {"debug": debug}


def user_message(e: DistillError) -> str:
    """The one line of a DistillError. One raised in a DataLoader worker reaches the main process
    re-created from the worker's whole traceback text; its own message is that text's last line."""
    text = str(e)
    if "\nOriginal Traceback" not in text:
        return text
    prefix = f"{DistillError.__module__}.{DistillError.__qualname__}: "
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    return lines[-1].removeprefix(prefix) if lines else text.splitlines()[0]


def _too_long(path: object) -> str:
    """The one line for a path the file system refuses as too long (the path shortened to fit)."""
    name = str(path)
    shown = name if len(name) <= 120 else f"{name[:60]}...{name[-40:]}"
    return (f"path {shown} is too long for the file system ({len(name)} characters); expected a shorter path "
            "(each name in it at most 255 bytes)")


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the group, turning user errors into one line and exit code 2."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        cli.main(args=args, prog_name="distill", standalone_mode=False)
    except DistillError as e:
        if debug:
            raise
        click.echo(f"error: {user_message(e)}", err=True)
        sys.exit(2)
    except OSError as e:  # a path typed too long fails in any exists() or open(), deep in any command
        if debug or e.errno != errno.ENAMETOOLONG:
            raise
        click.echo(f"error: {_too_long(e.filename)}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.UsageError as e:  # a bad option or argument: one line too, not click's usage block
        if debug:
            raise
        command = e.ctx.command_path if e.ctx else "distill"
        click.echo(f"error: {e.format_message()} `{command} --help` lists what is expected", err=True)
        sys.exit(2)
    except click.ClickException as e:
        if debug:
            raise
        e.show()
        sys.exit(2 if e.exit_code == 2 else e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
