"""escadm op_mode show|set, escadm ip_trans (the seed's maintenance commands)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import click

from esc.cli.client import ApiClient
from esc.cli.common import (
    EXIT_TIMEOUT,
    EXIT_USAGE,
    CliError,
    home_option,
    json_option,
    load_settings,
    print_json,
)
from esc.config import NodeHome

WAIT_POLL_SECONDS = 0.5


@click.group("op_mode")
def op_mode_group() -> None:
    """Show or set the operation mode (OPERATION or MAINTENANCE).

    MAINTENANCE refuses new northbound writes (503, temporarily unavailable)
    while transactions in flight finish; it persists across restart.
    """


@op_mode_group.command("show")
@home_option
@json_option
def op_mode_show(home: NodeHome, as_json: bool) -> None:
    """Print the operation mode: Operation Mode = OPERATION|MAINTENANCE."""
    with ApiClient(home, load_settings(home)) as client:
        mode = client.get("/esc/op_mode")["mode"]
    if as_json:
        print_json({"mode": mode})
    else:
        click.echo(f"Operation Mode = {mode}")


@op_mode_group.command("set")
@click.option(
    "--mode",
    required=True,
    type=click.Choice(["maintenance", "operation"], case_sensitive=False),
    help="maintenance or operation.",
)
@click.option(
    "--ipt_check",
    "ipt_check",
    type=click.BOOL,
    default=False,
    show_default=True,
    help="true: refuse maintenance while transactions are in progress.",
)
@home_option
@json_option
def op_mode_set(mode: str, ipt_check: bool, home: NodeHome, as_json: bool) -> None:
    """Set the operation mode (exit 1, naming the transactions, when --ipt_check refuses)."""
    with ApiClient(home, load_settings(home)) as client:
        result = client.request(
            "PUT", "/esc/op_mode", json={"mode": mode.upper(), "ipt_check": ipt_check}
        )
    if as_json:
        print_json(result)
        return
    click.echo(f"Set mode to {result['mode']}")
    click.echo(f"Operation Mode = {result['mode']}")


def _age(created_at: str) -> str:
    seconds = (datetime.now(UTC) - datetime.fromisoformat(created_at)).total_seconds()
    return f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.0f}m"


def _print_in_progress(transactions: list[dict]) -> None:
    if not transactions:
        click.echo("No in-progress transactions")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("TRANSACTION ID", "OPERATION", "DEPLOYMENT", "STATE", "AGE", box=None)
    for tx in transactions:
        table.add_row(
            tx["id"],
            tx["operation"],
            f"{tx['tenant']}/{tx['deployment']}",
            tx["state"],
            _age(tx["created_at"]),
        )
    Console(width=200).print(table)


@click.command("ip_trans")
@click.option("--wait", is_flag=True, help="Block until no transaction is in progress.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=600,
    show_default=True,
    help="With --wait: give up after this many seconds (exit 4).",
)
@home_option
@json_option
def ip_trans_command(wait: bool, timeout: float, home: NodeHome, as_json: bool) -> None:
    """List in-progress transactions (or wait until there are none)."""
    deadline = time.monotonic() + timeout
    with ApiClient(home, load_settings(home)) as client:
        while True:
            transactions = client.get_all("/v0/transactions", in_progress="true", limit=1000)
            if not wait or not transactions or time.monotonic() >= deadline:
                break
            time.sleep(WAIT_POLL_SECONDS)
    if as_json:
        print_json(transactions)
    else:
        _print_in_progress(transactions)
    if wait and transactions:
        raise CliError(
            f"{len(transactions)} transaction(s) still in progress after {timeout:g} s",
            EXIT_TIMEOUT,
        )


@click.group("log")
def log_group() -> None:
    """The node's logs."""


@log_group.command("collect")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to write the archive (default /var/tmp, else the node's log/).",
)
@home_option
@json_option
def log_collect(directory: Path | None, home: NodeHome, as_json: bool) -> None:
    """Write esc_log-<timestamp>.tar.bz2: logs, status, health, version, redacted esc.toml."""
    from esc.node.logcollect import collect_logs

    try:
        path = collect_logs(home, load_settings(home), directory)
    except OSError as exc:
        raise CliError(f"cannot write the log archive: {exc}", EXIT_USAGE) from None
    if as_json:
        print_json({"path": str(path)})
    else:
        click.echo(str(path))
