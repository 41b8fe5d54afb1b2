"""What every escadm command shares: --home, --json, exit codes, error output."""

from __future__ import annotations

import functools
import inspect
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

    def __init__(
        self, message: str, exit_code: int = EXIT_FAILED, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        # The HTTP status of the API's refusal it reports, when it reports one.
        self.status = status

    def show(self, file: Any = None) -> None:
        click.echo(f"Error: {self.format_message()}", err=True)


CA_ENV = "ESC_CA"
_CA_KEY = "esc.ca"

HOME_HELP = f"Node home directory (default ${HOME_ENV}, else ~/.esc)."
_HOME_GIVEN = "esc.home"  # in click's context meta, shared by the whole command line


def _remember_home(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.meta[_HOME_GIVEN] = value  # the innermost --home given wins


def _remember_ca(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value:
        ctx.meta[_CA_KEY] = Path(value)


def ca_file() -> Path | None:
    """The --ca FILE of the running command, if one was given."""
    ctx = click.get_current_context(silent=True)
    return ctx.meta.get(_CA_KEY) if ctx else None


def home_option(func: F) -> F:
    """--home DIR on a command; else one given before it (`escadm --home DIR CMD`), else
    $ESC_HOME, else ~/.esc. Also --ca."""

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
        type=click.Path(file_okay=False),
        callback=_remember_home,
        help=HOME_HELP,
    )
    @functools.wraps(func)
    def wrapper(*args: Any, home: str | None, **kwargs: Any) -> Any:
        given = home or click.get_current_context().meta.get(_HOME_GIVEN)
        return func(*args, home=NodeHome.resolve(given), **kwargs)

    return wrapper  # type: ignore[return-value]


_JSON_GIVEN = "esc.json"


def _remember_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.meta[_JSON_GIVEN] = True


def _shared_option(name: str, **kwargs: Any) -> click.Option:
    return click.Option([name], expose_value=False, **kwargs)


def add_shared_options(command: click.Command, defaults: dict[str, str]) -> None:
    """--home on every group (for the commands after it) and on every command that does
    not use a home (such as `version`), so that it is accepted anywhere; --json on every
    group. A group named in `defaults` run alone runs that command (`escadm op_mode`:
    the mode) instead of refusing with its usage."""
    if not any("--home" in p.opts for p in command.params):
        command.params.append(
            _shared_option(
                "--home", type=click.Path(file_okay=False), callback=_remember_home, help=HOME_HELP
            )
        )
    if not isinstance(command, click.Group):
        return
    command.params.append(
        _shared_option(
            "--json", is_flag=True, callback=_remember_json, help="JSON for the commands after it."
        )
    )
    default = defaults.get(command.name or "")
    if default:
        _run_alone(command, command.commands[default])
    for sub in command.commands.values():
        add_shared_options(sub, defaults)


def _run_alone(group: click.Group, default: click.Command) -> None:
    group.invoke_without_command = True
    group.no_args_is_help = False
    group.help = (
        f"{inspect.cleandoc(group.help or '')}\n\nAlone, it runs `{group.name} {default.name}`."
    )
    original = group.callback

    @functools.wraps(original)
    def callback(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        result = original(*args, **kwargs) if original else None
        if ctx.invoked_subcommand is None:
            return ctx.invoke(default)
        return result

    group.callback = callback


def json_option(func: F) -> F:
    """--json on a command; also when given on its group (`escadm op_mode --json`)."""

    @click.option(
        "--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of text."
    )
    @functools.wraps(func)
    def wrapper(*args: Any, as_json: bool, **kwargs: Any) -> Any:
        given = as_json or click.get_current_context().meta.get(_JSON_GIVEN, False)
        return func(*args, as_json=given, **kwargs)

    return wrapper  # type: ignore[return-value]


def print_table(table: Any) -> None:
    """A Rich table on stdout; when stdout is not a terminal, as wide as its content
    (Rich would otherwise fit it in 80 columns, cutting ids that scripts read)."""
    from rich.console import Console

    Console(width=None if is_tty() else 100_000).print(table)


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
