"""What every escadm command shares: --home, --json, exit codes, error output."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
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


CA_ENV = "ESC_CA"
_CA_KEY = "esc.ca"


def _remember_ca(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value:
        ctx.meta[_CA_KEY] = Path(value)


def ca_file() -> Path | None:
    """The --ca FILE of the running command, if one was given."""
    ctx = click.get_current_context(silent=True)
    return ctx.meta.get(_CA_KEY) if ctx else None


def home_option(func: F) -> F:
    """--home DIR on every command; $ESC_HOME, then ~/.esc, when absent. Also --ca."""

    @click.option(
        "--ca",
        envvar=CA_ENV,
        type=click.Path(exists=True, dir_okay=False),
        expose_value=False,
        callback=_remember_ca,
        help=f"CA certificate (PEM) to verify the node's HTTPS API with (default ${CA_ENV}, "
        "else the node's own [api] tls_cert).",
    )
    @click.option(
        "--home",
        "home",
        envvar=HOME_ENV,
        type=click.Path(file_okay=False),
        help=f"Node home directory (default ${HOME_ENV}, else ~/.esc).",
    )
    @functools.wraps(func)
    def wrapper(*args: Any, home: str | None, **kwargs: Any) -> Any:
        return func(*args, home=NodeHome.resolve(home), **kwargs)

    return wrapper  # type: ignore[return-value]


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
