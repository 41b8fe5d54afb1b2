"""escadm vim list | show | add | remove | orphans."""

from __future__ import annotations

import tomllib
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
    print_table,
)
from esc.config import NodeHome


@click.group("vim")
def vim_group() -> None:
    """VIM connections: where deployments' VMs run.

    'default' is the node's own [vim] of esc.toml; others are added here, kept in
    the database (so both nodes of a pair and a restored node have them), and a
    deployment names one with deployment.vim in its descriptor.
    """


def _settings_lines(settings: dict[str, Any]) -> list[str]:
    return [f"  {key} = {value!r}" for key, value in sorted(settings.items())]


@vim_group.command("list")
@home_option
@json_option
def list_command(home: NodeHome, as_json: bool) -> None:
    """List the VIM connections and how many deployments each holds."""
    with ApiClient(home, load_settings(home)) as client:
        vims = client.get("/v0/vims")
    if as_json:
        print_json(vims)
        return
    from rich.table import Table

    table = Table("NAME", "DRIVER", "SOURCE", "DEPLOYMENTS", box=None)
    for vim in vims:
        table.add_row(vim["name"], vim["driver"], vim["source"], str(vim["deployments"]))
    print_table(table)


@vim_group.command("show")
@click.argument("name")
@home_option
@json_option
def show_command(name: str, home: NodeHome, as_json: bool) -> None:
    """Show connection NAME's settings and check that its VIM answers.

    Exit 0 when it does, 1 when it does not (the reason is shown).
    """
    with ApiClient(home, load_settings(home)) as client:
        vim = client.get(f"/v0/vims/{name}")
    if as_json:
        print_json(vim)
    else:
        click.echo(f"vim {vim['name']}  driver={vim['driver']}  source={vim['source']}")
        for line in _settings_lines(vim["settings"]):
            click.echo(line)
        click.echo(f"deployments: {vim['deployments']}")
        click.echo(f"{'usable' if vim['usable'] else 'NOT usable'}: {vim['detail']}")
    if not vim["usable"]:
        raise SystemExit(EXIT_FAILED)


def _section(pairs: tuple[str, ...], file: Path | None) -> dict[str, Any]:
    section: dict[str, Any] = {}
    if file is not None:
        try:
            section = tomllib.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise CliError(f"cannot read {file}: {exc}", EXIT_USAGE) from None
        except tomllib.TOMLDecodeError as exc:
            raise CliError(f"{file} is not TOML: {exc}", EXIT_USAGE) from None
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise CliError(f"--set {pair!r}: write KEY=VALUE", EXIT_USAGE)
        section[key.strip()] = value
    return section


@vim_group.command("add")
@click.argument("name")
@click.option("--driver", required=True, help="openstack, libvirt, vmware, csp, local, vimhost.")
@click.option(
    "--set",
    "pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="A key of the driver's section of [vim] (e.g. auth_url=https://...); repeatable.",
)
@click.option(
    "--file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A TOML file holding the driver's section (its keys at top level); --set "
    "overrides its keys.",
)
@home_option
@json_option
def add_command(
    name: str,
    driver: str,
    pairs: tuple[str, ...],
    file: Path | None,
    home: NodeHome,
    as_json: bool,
) -> None:
    """Add connection NAME to a VIM, once the VIM has answered with its credentials.

    The settings are those of the driver's section in esc.toml (docs/vims.md);
    a secret is never given here, only the file (password_file) or environment
    variable (password_env) that holds it on every node. Nothing is added when
    the check fails: the error names what (auth, endpoint, TLS).
    """
    body = {"name": name, "driver": driver, "settings": _section(pairs, file)}
    with ApiClient(home, load_settings(home)) as client:
        vim = client.request("POST", "/v0/vims", json=body)
    if as_json:
        print_json(vim)
    else:
        click.echo(f"VIM connection {vim['name']} ({vim['driver']}) added")


@vim_group.command("remove")
@click.argument("name")
@home_option
@json_option
def remove_command(name: str, home: NodeHome, as_json: bool) -> None:
    """Remove connection NAME (refused while a deployment's VMs are on it)."""
    with ApiClient(home, load_settings(home)) as client:
        client.request("DELETE", f"/v0/vims/{name}")
    if as_json:
        print_json({"removed": name})
    else:
        click.echo(f"VIM connection {name} removed")


@vim_group.command("orphans")
@click.option("--delete", "delete_id", metavar="VM_ID", help="Delete this orphan (after a look).")
@click.option("--vim", "vim_name", default="default", show_default=True, help="Its connection.")
@home_option
@json_option
def orphans_command(delete_id: str | None, vim_name: str, home: NodeHome, as_json: bool) -> None:
    """List the orphans: instances tagged as this controller's with no VM record.

    The controller stops them at the start of its active role and never deletes
    one itself; --delete deletes one, --vim naming its connection. An instance
    without this controller's tags is not listed and never touched. Exit 0; 1
    when a connection could not be asked (shown).
    """
    with ApiClient(home, load_settings(home)) as client:
        if delete_id:
            client.request("DELETE", f"/v0/vims/{vim_name}/orphans/{delete_id}")
            if not as_json:
                click.echo(f"orphan {delete_id} on VIM {vim_name} deleted")
        found = client.get("/v0/vims/orphans")
    if as_json:
        print_json(found)
    elif not found["orphans"]:
        click.echo("No orphans")
    else:
        from rich.table import Table

        table = Table("VIM", "VM ID", "STATE", "DETAIL", box=None)
        for orphan in found["orphans"]:
            table.add_row(orphan["vim"], orphan["vm_id"], orphan["state"], orphan["detail"])
        print_table(table)
    for problem in found["unreachable"]:
        click.echo(f"not asked: {problem}", err=True)
    if found["unreachable"]:
        raise SystemExit(EXIT_FAILED)
