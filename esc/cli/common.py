"""What every escadm command shares: --home, --json, exit codes, error output."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click

from esc.config import HOME_ENV, ConfigError, NodeHome

# Exit codes, documented in docs/operations.md.
EXIT_OK = 0
EXIT_FAILED = 1  # refused by the controller, or the transaction ended FAILED
EXIT_USAGE = 2  # bad command line or bad input file (click uses 2 as well)
EXIT_UNREACHABLE = 3  # the controller does not answer
EXIT_TIMEOUT = 4  # gave up waiting for a transaction

F = TypeVar("F", bound=Callable[..., Any])


class CliError(click.ClickException):
    """An error with the exit code that classifies it."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file: Any = None) -> None:
        click.echo(f"Error: {self.format_message()}", err=True)


HOME_HELP = f"Node home directory (default ${HOME_ENV}, else ~/.esc)."
_HOME_GIVEN = "esc.home"  # in click's context meta, shared by the whole command line


def _remember_home(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.meta[_HOME_GIVEN] = value  # the innermost --home given wins


def home_option(func: F) -> F:
    """--home DIR on a command; else one given before it (`escadm --home DIR CMD`), else
    $ESC_HOME, else ~/.esc."""

    @click.option(
        "--home",
        "home",
        type=click.Path(file_okay=False),
        callback=_remember_home,
        help=HOME_HELP,
    )
    @functools.wraps(func)
    def wrapper(*args: Any, home: str | None, **kwargs: Any) -> Any:
        given = home or click.get_current_context().meta.get(_HOME_GIVEN)
        return func(*args, home=NodeHome.resolve(given), **kwargs)

    return wrapper  # type: ignore[return-value]


def accept_home_everywhere(command: click.Command) -> None:
    """Give --home to every group (for the commands after it) and to every command that
    does not use a home (such as `version`), so that `--home` is accepted anywhere."""
    if not any("--home" in p.opts for p in command.params):
        command.params.append(
            click.Option(
                ["--home"],
                type=click.Path(file_okay=False),
                expose_value=False,
                callback=_remember_home,
                help=HOME_HELP,
            )
        )
    for sub in getattr(command, "commands", {}).values():
        accept_home_everywhere(sub)


json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of text."
)


def load_settings(home: NodeHome):
    try:
        return home.load()
    except ConfigError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    raise CliError(message, code)


def is_tty() -> bool:
    return sys.stdout.isatty()
