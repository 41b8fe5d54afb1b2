"""escadm upgrade plan: which upgrade is allowed, and the steps of each method."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import click

from esc import __version__
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
from esc.release.catalog import VIMS, CatalogError, load_catalog
from esc.release.numbers import ReleaseNumber, ReleaseNumberError
from esc.release.planner import Plan, plan_upgrade
from esc.release.procedures import procedure

EXIT_ALLOWED = 0
EXIT_REFUSED = 3

METHOD_TITLES = {
    "package": "Package upgrade in place",
    "backup_restore": "Backup and Restore upgrade",
    "in_service_package": "In-service upgrade of the HA pair, package method",
    "in_service_image": "In-service upgrade of the HA pair, image method",
}


@click.group("upgrade")
def upgrade_group() -> None:
    """Plan upgrades, run a Backup and Restore upgrade, roll it back."""


def _print_plan(plan: Plan) -> None:
    if not plan.allowed:
        click.echo(
            f"Upgrade {plan.source} → {plan.target} on {plan.vim}"
            f"{' (HA pair)' if plan.ha else ''}: REFUSED"
        )
        click.echo(f"Reason: {plan.reason}")
        click.echo(f"Next step: {plan.next_step}")
        return
    click.echo(
        f"Upgrade {plan.source} → {plan.target} on {plan.vim}"
        f"{' (HA pair)' if plan.ha else ''}: allowed ({plan.change.value} change)"
    )
    for index, method in enumerate(plan.methods, 1):
        click.echo(f"\nMethod {index}: {METHOD_TITLES[method.value]}")
        sections = procedure(method, plan.vim, plan.target)
        number = 0
        for section in ("prechecks", "steps", "verification", "rollback"):
            click.echo(f"  {section.capitalize()}:")
            for step in sections[section]:
                number += 1
                click.echo(f"    {number}. {step}")


@upgrade_group.command("plan")
@click.option("--to", "target", required=True, help="Release to upgrade to, e.g. 5.5.0.")
@click.option(
    "--from",
    "source",
    default=__version__,
    show_default="the installed release",
    help="Release upgraded from.",
)
@click.option("--vim", type=click.Choice(VIMS), default="local", show_default=True)
@click.option("--ha", is_flag=True, help="The node is one of an active/standby pair.")
@click.option(
    "--catalog",
    "catalog_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A release catalog (TOML) instead of the one shipped with this release.",
)
@json_option
def plan_command(
    target: str, source: str, vim: str, ha: bool, catalog_file: Path | None, as_json: bool
) -> None:
    """Say whether SOURCE → TARGET is allowed, by which methods, with their steps.

    Exit 0 allowed, 3 refused (the reason and the next step are printed),
    2 bad input.
    """
    try:
        plan = plan_upgrade(
            load_catalog(catalog_file),
            ReleaseNumber.parse(source),
            ReleaseNumber.parse(target),
            vim,
            ha,
        )
    except (ReleaseNumberError, CatalogError) as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    if as_json:
        print_json(plan.as_dict())
    else:
        _print_plan(plan)
    raise SystemExit(EXIT_ALLOWED if plan.allowed else EXIT_REFUSED)


def _reporter(as_json: bool) -> Callable[[str], None]:
    """Each step on its own line (stderr with --json, so stdout stays one document)."""
    return lambda step: click.echo(f"==> {step}", err=as_json)


@upgrade_group.command("backup-restore")
@click.option(
    "--package",
    "wheel",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The new release's wheel, e.g. releases/esc-1.1.0.1-py3-none-any.whl.",
)
@click.option(
    "--venv",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to install the new release (default: esc-VERSION beside the node home).",
)
@home_option
@json_option
def backup_restore_command(wheel: Path, venv: Path | None, home: NodeHome, as_json: bool) -> None:
    """Upgrade this standalone node to the release in WHEEL by Backup and Restore.

    The upgrade planner must allow it. Maintenance mode, wait for transactions,
    backup, stop, install the new release into its own venv, a new node home
    with the same esc.toml, restore, move the VMs' instances over (the VMs keep
    running), start, check health and version, operation mode. The old home is
    kept as HOME.rollback for `escadm upgrade rollback`. Exit 0 upgraded,
    1 refused or a step failed (what to do is printed), 2 no such WHEEL.
    """
    from esc.upgrade.backup_restore import UpgradeError, upgrade

    settings = load_settings(home)
    try:
        record = upgrade(home, settings, wheel, venv, _reporter(as_json))
    except UpgradeError as exc:
        raise CliError(str(exc), EXIT_FAILED) from None
    if as_json:
        print_json(asdict(record))
        return
    click.echo(
        f"ESC upgraded from {record.old_version} to {record.new_version}; the old node is kept "
        f"at {record.old_home} (escadm upgrade rollback brings it back)"
    )


@upgrade_group.command("rollback")
@click.option(
    "--pair",
    "pair_spec",
    metavar="PAIR",
    help="Roll back an HA pair's in-service upgrade instead (the pair access file, or "
    "A,B with --vip); the node's own home is not used then.",
)
@click.option("--vip", default="", help="The pair's VIP, with --pair A,B.")
@click.option(
    "--releases",
    type=click.Path(file_okay=False, path_type=Path),
    help="With --pair: the directory of the release packages and their SHA256SUMS "
    "(default: ./releases).",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="With --pair: where the upgrade's record is (as given to in-service).",
)
@click.option(
    "--quick/--full",
    default=True,
    help="With --pair: --quick (default) gives each node its old release back, standby "
    "first (an upgrade by image: while the new release has acknowledged no write, the "
    "old active, kept powered off with its data, comes back); --full also restores the "
    "backup taken before the upgrade (an upgrade that changed the data).",
)
@home_option
@json_option
def rollback_command(
    pair_spec: str | None,
    vip: str,
    releases: Path | None,
    state_dir: Path | None,
    quick: bool,
    home: NodeHome,
    as_json: bool,
) -> None:
    """Bring back the node an `upgrade backup-restore` replaced, with its VMs; with
    --pair, bring an HA pair back to the release it ran before `upgrade in-service`.

    Standalone: stops the upgraded node, puts the old home back in place (the
    upgraded one is kept as HOME.failed-VERSION) and starts the old release. A pair
    upgraded by package: node by node, the standby first, each given its old release
    by its package agent, with a planned switchover between, so no acknowledged write
    is lost; a rollback cut short is continued by running it again. A pair upgraded
    by image: before the switchover, the replaced standby is deployed again from the
    old image; after it, until the pair went back to OPERATION, the upgraded node is
    fenced and the old active powered on with its data (later, a quick rollback would
    lose acknowledged writes and is refused). Exit 0 rolled back, 1 nothing to roll
    back to or a step failed, 3 (--pair) refused, nothing changed.
    """
    if pair_spec is not None:
        from esc.cli.upgrade_pair import rollback_pair

        rollback_pair(pair_spec, vip, releases or Path("releases"), state_dir, not quick, as_json)
        return
    from esc.upgrade.backup_restore import UpgradeError, rollback

    try:
        record = rollback(home, _reporter(as_json))
    except UpgradeError as exc:
        raise CliError(str(exc), EXIT_FAILED) from None
    if as_json:
        print_json(asdict(record))
        return
    click.echo(f"ESC rolled back to {record.old_version}")


def _pair_commands() -> None:
    """in-service and status act on an HA pair over its nodes' API (esc.cli.upgrade_pair)."""
    from esc.cli.upgrade_pair import register

    register(upgrade_group)


_pair_commands()
