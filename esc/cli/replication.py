"""escadm replication status, and `drbdadm status` for operators who type DRBD's."""

from __future__ import annotations

import click

from esc.cli.common import (
    EXIT_FAILED,
    EXIT_TIMEOUT,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CliError,
    home_option,
    json_option,
    load_settings,
    print_json,
)
from esc.config import NodeHome
from esc.ha.pgsql import Cluster, PgsqlError, PgsqlUnavailable
from esc.ha.replication import RESOURCE, ReplicationStatus, WaitTimeout, read_status, wait_uptodate

EXIT_CODES_HELP = """\b
Exit codes:
  0  status printed (with --wait-uptodate: UpToDate and synchronous)
  1  this node is not an HA node, or PostgreSQL failed
  2  bad command line, invalid or missing esc.toml
  3  this node's PostgreSQL does not answer (stopped, or no data yet)
  4  --wait-uptodate timed out (the last status is printed)
"""


def _cluster(home: NodeHome) -> Cluster:
    settings = load_settings(home)
    if not settings.ha.enabled:
        raise CliError(
            f"this node is not an HA node ([ha] enabled is false in {home.config_file}): it "
            "has no replication to report. Replication runs between the two nodes of an "
            "active/standby pair, see docs/ha.md",
            EXIT_FAILED,
        )
    try:
        return Cluster(home, settings.ha)
    except PgsqlError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


def _show(status: ReplicationStatus, as_json: bool, statistics: bool) -> None:
    if as_json:
        print_json(status.as_json())
        return
    click.echo(status.drbd_text(statistics), nl=False)
    for note in status.notes:
        click.echo(f"note: {note}", err=True)


def show_status(
    home: NodeHome, *, as_json: bool, statistics: bool, wait: bool, timeout: float
) -> None:
    cluster = _cluster(home)
    try:
        status = wait_uptodate(cluster, timeout) if wait else read_status(cluster)
    except WaitTimeout as exc:
        if exc.last is not None:
            _show(exc.last, as_json, statistics)
        raise CliError(str(exc), EXIT_TIMEOUT) from None
    except PgsqlUnavailable as exc:
        raise CliError(str(exc), EXIT_UNREACHABLE) from None
    except PgsqlError as exc:
        raise CliError(str(exc), EXIT_FAILED) from None
    _show(status, as_json, statistics)


@click.group("replication")
def replication_group() -> None:
    """The PostgreSQL replication between the two nodes of an HA pair."""


@replication_group.command("status", epilog=EXIT_CODES_HELP)
@click.option(
    "--wait-uptodate",
    "wait",
    is_flag=True,
    help="Wait until both disks are UpToDate and the standby is synchronous.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=300,
    show_default=True,
    help="With --wait-uptodate: give up after this many seconds (exit 4).",
)
@click.option(
    "--statistics", "-s", is_flag=True, help="Add sync state and lag to the peer-disk line."
)
@home_option
@json_option
def replication_status_command(
    wait: bool, timeout: float, statistics: bool, home: NodeHome, as_json: bool
) -> None:
    """This node's replication state, in the words of `drbdadm status`:

    \b
      esc role:Primary
        disk:UpToDate
        198.18.0.12 role:Secondary
          peer-disk:UpToDate

    role is Primary or Secondary; disk and peer-disk are UpToDate, Inconsistent
    (catching up) or Outdated (a standby that lost the stream); a peer that is
    not connected shows as `connection:Connecting`.
    """
    ctx = click.get_current_context()
    if not wait and ctx.get_parameter_source("timeout") == click.core.ParameterSource.COMMANDLINE:
        raise CliError("--timeout applies to --wait-uptodate only", EXIT_USAGE)
    show_status(home, as_json=as_json, statistics=statistics, wait=wait, timeout=timeout)


DRBDADM_HELP = f"""This node's replication state, as `drbdadm status` prints it.

ESC replicates its database with PostgreSQL streaming replication, not DRBD;
this command answers `drbdadm status [{RESOURCE}|all]` only, exactly as
`escadm replication status` does. Every other verb is refused: role changes
are made by keepalived through escadm (see docs/ha.md).
"""


@click.command(
    "drbdadm",
    help=DRBDADM_HELP,
    epilog=EXIT_CODES_HELP.replace(
        "2  bad command line,", "2  a verb other than status or a resource other than esc;\n    "
    ),
    context_settings={
        "help_option_names": ["-h", "--help"],
        "ignore_unknown_options": True,
    },
)
@click.argument("verb", required=False)
@click.argument("resources", nargs=-1, type=click.UNPROCESSED)
@click.option("--statistics", "-s", is_flag=True, help="Add sync state and lag.")
@home_option
@json_option
def drbdadm_command(
    verb: str | None, resources: tuple[str, ...], statistics: bool, home: NodeHome, as_json: bool
) -> None:
    if verb != "status":
        shown = f"drbdadm {verb}" if verb else "drbdadm without a verb"
        raise CliError(
            f"{shown} is not available on an ESC node: ESC replicates with PostgreSQL, not "
            "DRBD, and only `drbdadm status` is answered. See the state with `escadm "
            "replication status`; roles change through keepalived and escadm (docs/ha.md)",
            EXIT_USAGE,
        )
    unknown = [r for r in resources if r not in (RESOURCE, "all")]
    if unknown:
        raise CliError(
            f"no resource {unknown[0]!r} on this node: its one replicated resource is "
            f"{RESOURCE} (drbdadm status {RESOURCE})",
            EXIT_USAGE,
        )
    show_status(home, as_json=as_json, statistics=statistics, wait=False, timeout=0)
