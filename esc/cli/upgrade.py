"""escadm upgrade plan: which upgrade is allowed, and the steps of each method."""

from __future__ import annotations

from pathlib import Path

import click

from esc import __version__
from esc.cli.common import EXIT_USAGE, CliError, json_option, print_json
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
    """Plan (and, in later releases, run) upgrades."""


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
