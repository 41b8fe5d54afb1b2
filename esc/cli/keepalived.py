"""escadm keepalived stop | start: hand the VIP over, and take part in VRRP again."""

from __future__ import annotations

import click

from esc.cli.common import EXIT_FAILED, EXIT_TIMEOUT, CliError, home_option, load_settings
from esc.config import NodeHome

EXIT_CODES_HELP = """\b
Exit codes:
  0  done (or nothing to do: already stopped / already running)
  1  not an HA node, or the node is not running under its supervisor
  2  bad command line, invalid or missing esc.toml
  4  the supervisor did not do it in time (see log/supervisor.log)
"""


def _ha_home(home: NodeHome):
    settings = load_settings(home)
    if not settings.ha.enabled:
        raise CliError(
            f"this node is not an HA node ([ha] enabled is false in {home.config_file}): it "
            "runs no keepalived",
            EXIT_FAILED,
        )
    return settings


def _request(call, *args):
    from esc.node.service_requests import ServiceRequestError

    try:
        return call(*args)
    except ServiceRequestError as exc:
        timed_out = "did not happen within" in str(exc)
        raise CliError(str(exc), EXIT_TIMEOUT if timed_out else EXIT_FAILED) from None


@click.group("keepalived")
def keepalived_group() -> None:
    """This HA node's keepalived, which holds the pair's VIP while the node is active."""


@keepalived_group.command("stop", epilog=EXIT_CODES_HELP)
@home_option
def stop_command(home: NodeHome) -> None:
    """Stop keepalived and keep it stopped. On the active node the active role is first
    handed over to the standby as by `escadm switchover` (refused unless the standby is
    UpToDate and synchronous), then keepalived's SIGTERM hands the VIP over at once.
    The other services keep running. `escadm keepalived start` (or `escadm start`)
    starts it again."""
    from esc.ha.node_services import holds_vip
    from esc.node.service_requests import request_stop

    settings = _ha_home(home)
    held = holds_vip(settings.ha)
    if held:
        # Without the handover the peer would take over as from a failed node, and
        # fence this one.
        from esc.cli.client import ApiClient

        with ApiClient(home, settings, timeout=60) as client:
            client.request("POST", "/esc/ha/switchover")
    if not _request(request_stop, home, "keepalived"):
        click.echo("keepalived is already stopped")
        return
    vip = settings.ha.kad_vip.ip
    if held:
        click.echo(f"keepalived stopped: the VIP {vip} was handed over to {settings.ha.peer}")
    else:
        click.echo(f"keepalived stopped (this node did not hold the VIP {vip})")


@keepalived_group.command("start", epilog=EXIT_CODES_HELP)
@home_option
def start_command(home: NodeHome) -> None:
    """Start keepalived again after `escadm keepalived stop`. It comes back as BACKUP
    and, with nopreempt, does not take the VIP back from the peer."""
    from esc.node.service_requests import request_start

    _ha_home(home)
    if not _request(request_start, home, "keepalived"):
        click.echo("keepalived is already running")
        return
    click.echo("keepalived started: it is BACKUP and does not take the VIP back (nopreempt)")
