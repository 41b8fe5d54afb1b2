"""escadm monitor start | stop | status, escadm script import | list | show | remove."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import click

from esc.cli.client import ApiClient
from esc.cli.common import (
    EXIT_FAILED,
    EXIT_USAGE,
    CliError,
    home_option,
    json_option,
    load_settings,
    print_json,
)
from esc.config import NodeHome
from esc.monitor.scripts import MAX_TIMEOUT


@click.group("monitor")
def monitor_group() -> None:
    """Monitoring and recovery (MONA): start, stop, status.

    stop pauses every monitor and automatic action (recovery, scaling, scripts)
    until start; the setting is kept in the database, so it outlives a restart.
    MAINTENANCE mode (escadm op_mode) pauses them too.
    """


def _status_lines(view: dict[str, Any]) -> list[str]:
    lines = [f"Monitor = {view['mode']}"]
    service = view["service"]
    if service["running"]:
        lines.append(f"mona (pgid {service['pgid']}) is running")
    else:
        lines.append("mona is stopped: escadm start")
    status = view.get("status")
    if view["op_mode"] == "MAINTENANCE":
        lines.append("paused: ESC is in MAINTENANCE mode (escadm op_mode set --mode=operation)")
    elif status and status.get("paused"):
        lines.append(f"paused: {status['paused']}")
    if status:
        lines.append(f"watching {status['watched_vms']} VMs ({status['watchers']} monitors)")
        if status["held_deployments"]:
            held = ", ".join(status["held_deployments"])
            lines.append(f"off while their transaction runs: {held}")
        lines += [f"  {line}" for line in status["recent_actions"][-5:]]
    return lines


def _show(view: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(view)
    else:
        for line in _status_lines(view):
            click.echo(line)


@monitor_group.command("status")
@home_option
@json_option
def status_command(home: NodeHome, as_json: bool) -> None:
    """Monitor = RUNNING|STOPPED, the mona service, what it watches and did last.

    Exit 0; 1 when monitoring is RUNNING but the mona service is not.
    """
    with ApiClient(home, load_settings(home)) as client:
        view = client.get("/esc/monitoring")
    _show(view, as_json)
    if view["mode"] == "RUNNING" and not view["service"]["running"]:
        raise SystemExit(EXIT_FAILED)


def _set(home: NodeHome, mode: str, as_json: bool) -> None:
    with ApiClient(home, load_settings(home)) as client:
        view = client.request("PUT", "/esc/monitoring", json={"mode": mode})
    if not as_json:
        click.echo(f"Set monitor to {view['mode']}")
    _show(view, as_json)


@monitor_group.command("start")
@home_option
@json_option
def start_command(home: NodeHome, as_json: bool) -> None:
    """Resume monitoring and automatic actions."""
    _set(home, "RUNNING", as_json)


@monitor_group.command("stop")
@home_option
@json_option
def stop_command(home: NodeHome, as_json: bool) -> None:
    """Pause all monitoring and automatic actions (kept across restarts)."""
    _set(home, "STOPPED", as_json)


@click.group("script")
def script_group() -> None:
    """Custom scripts that rule actions of type SCRIPT run (kept in the database).

    A script runs with the event in its environment (ESC_EVENT_NAME,
    ESC_EVENT_STATE, ESC_TENANT, ESC_DEPLOYMENT, ESC_VM_GROUP, ESC_VM_ID,
    ESC_VM_NAME, ESC_VM_ADDRESS, ESC_METRIC_VALUE, ESC_ACTION) and is killed,
    with its children, at its timeout.
    """


@script_group.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--name", help="Name rules use (script_filename); default: FILE's name.")
@click.option(
    "--timeout", type=float, default=30.0, show_default=True, help="Seconds before it is killed."
)
@home_option
@json_option
def import_command(
    file: Path, name: str | None, timeout: float, home: NodeHome, as_json: bool
) -> None:
    """Store FILE as a custom script (replacing one of the same name)."""
    try:
        content = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read {file} as UTF-8 text: {exc}", EXIT_USAGE) from None
    if not math.isfinite(timeout) or not 0 < timeout <= MAX_TIMEOUT:
        raise CliError(f"--timeout must be more than 0 and at most {MAX_TIMEOUT:g} s", EXIT_USAGE)
    name = name or file.name
    with ApiClient(home, load_settings(home)) as client:
        view = client.request(
            "PUT", f"/v0/scripts/{name}", json={"content": content, "timeout": timeout}
        )
    if as_json:
        print_json(view)
    else:
        click.echo(f"script {view['name']} stored ({view['size']} bytes, timeout {timeout:g} s)")


@script_group.command("list")
@home_option
@json_option
def list_command(home: NodeHome, as_json: bool) -> None:
    """List the custom scripts."""
    with ApiClient(home, load_settings(home)) as client:
        rows = client.get("/v0/scripts")
    if as_json:
        print_json(rows)
        return
    if not rows:
        click.echo("No custom scripts")
    for row in rows:
        click.echo(f"{row['name']:<40} {row['size']:>8} bytes  timeout {row['timeout']:g} s")


@script_group.command("show")
@click.argument("name")
@home_option
@json_option
def show_command(name: str, home: NodeHome, as_json: bool) -> None:
    """Print a custom script."""
    with ApiClient(home, load_settings(home)) as client:
        view = client.get(f"/v0/scripts/{name}")
    if as_json:
        print_json(view)
    else:
        click.echo(view["content"], nl=False)


@script_group.command("remove")
@click.argument("name")
@home_option
def remove_command(name: str, home: NodeHome) -> None:
    """Remove a custom script (rules that name it then log that it is missing)."""
    with ApiClient(home, load_settings(home)) as client:
        client.request("DELETE", f"/v0/scripts/{name}")
    click.echo(f"script {name} removed")
