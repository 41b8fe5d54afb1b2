"""escadm start | stop | restart | status | version, and esc_version."""

from __future__ import annotations

import click

from esc.cli.common import (
    EXIT_USAGE,
    CliError,
    ca_file,
    home_option,
    json_option,
    load_settings,
    print_json,
)
from esc.config import NodeHome
from esc.node.control import (
    ControlError,
    node_state,
    start_node,
    status_lines,
    stop_node,
)
from esc.tls import TlsError, server_files
from esc.version import CURRENT, version_lines


@click.command("start")
@home_option
def start_command(home: NodeHome) -> None:
    """Start the node's services in the background (supervised), or those of a running
    node that are stopped (a service the supervisor gave up), and say what was done."""
    settings = load_settings(home)
    try:
        done = start_node(home, settings)
    except TlsError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    except ControlError as exc:
        raise CliError(str(exc)) from None
    click.echo(done)


@click.command("stop")
@home_option
def stop_command(home: NodeHome) -> None:
    """Stop the node's services gracefully.

    Transactions in flight get up to 30 s to finish; the rest are resumed at
    the next start. Nothing is lost.
    """
    load_settings(home)
    try:
        stopped = stop_node(home)
    except ControlError as exc:
        raise CliError(str(exc)) from None
    click.echo("ESC stopped" if stopped else "ESC is already stopped")


@click.command("restart")
@home_option
def restart_command(home: NodeHome) -> None:
    """Stop (if running), then start the node's services."""
    settings = load_settings(home)
    try:
        server_files(home, settings)  # a node that cannot start again is not stopped
        stop_node(home)
        start_node(home, settings)
    except TlsError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    except ControlError as exc:
        raise CliError(str(exc)) from None
    click.echo("ESC restarted")


@click.command("status")
@home_option
@click.option("--v", "verbose", is_flag=True, help="Also list every service and its pgid.")
@json_option
def status_command(home: NodeHome, verbose: bool, as_json: bool) -> None:
    """Is the node running and healthy?

    A standalone node: ESC Standalone Healthy / Unhealthy / is stopped. An HA
    node: ESC HA Active Healthy, ESC HA Standby Healthy, ESC HA <role>
    Unhealthy: <the failed check>, ESC HA Fault: <why, what to do>, ESC HA
    Starting: <why>, or ESC HA is stopped.

    Exit code: 0 running and healthy, 1 running but unhealthy (a service the
    supervisor gave up is named, with why; on an HA node also a fault or a
    role not decided yet), 3 stopped.
    """
    settings = load_settings(home)
    state = node_state(home, settings, ca_file())
    lines, code = status_lines(state, verbose=verbose)
    ha = None
    if settings.ha.enabled:
        from esc.node.ha_status import ha_status

        ha = ha_status(home, settings, state)
        lines, code = [*lines[:-1], ha.line], ha.code
    line = lines[-1]
    if as_json:
        print_json(
            {
                "running": state.running,
                "healthy": ha.healthy if ha else state.healthy,
                "role": (ha.role or "UNKNOWN") if ha else "standalone",
                "ha": ha is not None,
                "message": line,
                "reason": ha.reason if ha else None,
                "role_record": ha.record.as_dict() if ha and ha.record else None,
                "given_up": [g.name for g in state.given_up],
                "services": [
                    {
                        "name": s.name,
                        "running": s.running,
                        "held": s.held,
                        "pid": s.record.pid if s.record else None,
                        "pgid": s.record.pgid if s.record else None,
                        "given_up": s.given_up.as_dict() if s.given_up else None,
                    }
                    for s in state.services
                ],
            }
        )
    else:
        click.echo("\n".join(lines))
    raise SystemExit(code)


@click.command("health")
@home_option
@json_option
def health_command(home: NodeHome, as_json: bool) -> None:
    """Check the database, the API, the VIM and every service.

    Prints ESC HEALTH PASSED, or ESC HEALTH FAILED and one line per failed
    check. Exit code 0 passed, 1 failed.
    """
    from esc.node.health import node_checks

    results = node_checks(home, load_settings(home), ca_file())
    passed = all(r.ok for r in results)
    if as_json:
        print_json({"passed": passed, "checks": [r.as_dict() for r in results]})
    else:
        click.echo("ESC HEALTH PASSED" if passed else "ESC HEALTH FAILED")
        for result in results:
            if not result.ok:
                click.echo(f"  {result.name}: {result.detail}")
    raise SystemExit(0 if passed else 1)


@click.command("version")
@json_option
def version_command(as_json: bool) -> None:
    """Print the installed version (as esc_version does)."""
    if as_json:
        print_json(
            {"version": CURRENT.version, "release": str(CURRENT.build), "full": str(CURRENT)}
        )
        return
    click.echo("\n".join(version_lines()))


def esc_version_main() -> None:
    """The `esc_version` console script: exactly what `escadm version` prints."""
    print("\n".join(version_lines()))
