"""escadm: one command to administer an ESC node."""

from __future__ import annotations

import click

from esc import __version__
from esc.cli.backup import backup_command, restore_command
from esc.cli.backup_key import backup_key_group
from esc.cli.common import add_shared_options
from esc.cli.deployment import deployment_group
from esc.cli.dynamic_mapping import dynamic_mapping_group
from esc.cli.ha import ha_group, switchover_command
from esc.cli.keepalived import keepalived_group
from esc.cli.monitor import monitor_group, script_group
from esc.cli.node import init_command, passwd_command, run_command
from esc.cli.node_vm import node_group
from esc.cli.operations import ip_trans_command, log_group, op_mode_group
from esc.cli.replication import drbdadm_command, replication_group
from esc.cli.service import (
    health_command,
    restart_command,
    start_command,
    status_command,
    stop_command,
    version_command,
)
from esc.cli.upgrade import upgrade_group
from esc.cli.vim import vim_group
from esc.node.private import make_files_private


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="escadm")
def cli() -> None:
    """Administer an ESC (Elastic Services Controller) node.

    Every command takes --home DIR (or $ESC_HOME; default ~/.esc), the node's
    home directory, after the command or before it (escadm --home DIR CMD).
    Exit codes: 0 done, 1 refused or FAILED, 2 bad usage or input, 3 controller
    not reachable, 4 timed out waiting.
    """


cli.add_command(init_command)
cli.add_command(run_command)
cli.add_command(deployment_group)
for command in (
    start_command,
    stop_command,
    restart_command,
    status_command,
    health_command,
    version_command,
    passwd_command,
    op_mode_group,
    ip_trans_command,
    log_group,
    upgrade_group,
    dynamic_mapping_group,
    monitor_group,
    script_group,
    backup_command,
    restore_command,
    backup_key_group,
    replication_group,
    switchover_command,
    ha_group,
    keepalived_group,
    vim_group,
    node_group,
):
    cli.add_command(command)
# What a group alone runs: a look, never a change.
DEFAULT_SUBCOMMANDS = {
    "op_mode": "show",
    "deployment": "list",
    "monitor": "status",
    "dynamic_mapping": "show",
    "script": "list",
    "replication": "status",
    "ha": "show",
    "vim": "list",
    "node": "list",
}
add_shared_options(cli, DEFAULT_SUBCOMMANDS)


def main() -> None:
    make_files_private()
    cli(prog_name="escadm")


# The names ESC's operators type, installed as console scripts beside esc_version.
def health_sh_main() -> None:
    """`health.sh [OPTIONS]`: exactly `escadm health [OPTIONS]`."""
    make_files_private()
    health_command.main(prog_name="health.sh")


def collect_esc_log_sh_main() -> None:
    """`collect_esc_log.sh [OPTIONS]`: exactly `escadm log collect [OPTIONS]`."""
    make_files_private()
    log_group.commands["collect"].main(prog_name="collect_esc_log.sh")


def drbdadm_main() -> None:
    """`drbdadm status`: this node's replication state, as `escadm replication status`."""
    make_files_private()
    drbdadm_command.main(prog_name="drbdadm")
