"""escadm switchover, escadm ha show|force-active: the active/standby pair's roles."""

from __future__ import annotations

import click

from esc.cli.client import ApiClient
from esc.cli.common import EXIT_USAGE, CliError, home_option, json_option, load_settings, print_json
from esc.config import NodeHome

# A switchover waits for the peer to take the role; the API answers once it has.
SWITCHOVER_TIMEOUT = 60.0


@click.command("switchover")
@home_option
@json_option
def switchover_command(home: NodeHome, as_json: bool) -> None:
    """Hand the active role to the standby, on the active node: planned, no write lost.

    Refused unless the standby is UpToDate and synchronous. Writes stop while the
    role moves (well under a second); transactions in flight are resumed on the new
    active. This node then follows it as the standby.

    Exit codes: 0 switched over, 1 refused (not the active, standby not in sync, or
    the peer did not take the role), 3 ESC not reachable.
    """
    with ApiClient(home, load_settings(home), timeout=SWITCHOVER_TIMEOUT) as client:
        done = client.request("POST", "/esc/ha/switchover")
    if as_json:
        print_json(done)
        return
    click.echo(
        f"Switched over: {done['to']} is the active after {done['seconds']:.3f} s; "
        f"this node ({done['from']}) follows it as the standby"
    )
    if done["left_in_flight"]:
        click.echo(f"resumed on the new active: {', '.join(done['left_in_flight'])}")


@click.group("ha")
def ha_group() -> None:
    """This node's role in its active/standby pair."""


@ha_group.command("show")
@home_option
@json_option
def ha_show(home: NodeHome, as_json: bool) -> None:
    """Print this node's role (ACTIVE, STANDBY, FAULT, STARTING) and why."""
    with ApiClient(home, load_settings(home)) as client:
        view = client.get("/esc/ha")
    if as_json:
        print_json(view)
    else:
        click.echo(f"{view['node']} ({view['address']}) {view['role']}: {view['reason']}")


@ha_group.command("force-active")
@click.option(
    "--discard-unreplicated",
    is_flag=True,
    help="Required: what the lost active acknowledged but did not replicate is given up.",
)
@home_option
@json_option
def ha_force_active(home: NodeHome, discard_unreplicated: bool, as_json: bool) -> None:
    """Make a node in FAULT take the active role anyway.

    A standby goes FAULT instead of taking over when it may lack writes the lost
    active acknowledged (it was marked outdated, or the witness could not be asked).
    When that active is lost for good, this is the operator's explicit choice to go
    on with this node's copy. The old active is still fenced unless it certainly
    cannot write.

    Exit codes: 0 the node takes the role at keepalived's next election, 1 refused
    (not in FAULT), 2 without --discard-unreplicated, 3 ESC not reachable.
    """
    if not discard_unreplicated:
        raise CliError(
            "forcing the active role gives up what the lost active did not replicate: "
            "say so with --discard-unreplicated",
            EXIT_USAGE,
        )
    with ApiClient(home, load_settings(home)) as client:
        view = client.request("POST", "/esc/ha/force-active", json={"discard_unreplicated": True})
    if as_json:
        print_json(view)
    else:
        click.echo(f"{view['node']} {view['role']}: {view['reason']}")
