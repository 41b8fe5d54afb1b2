"""escadm deployment deploy | list | show | undeploy."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from esc.cli.client import ApiClient
from esc.cli.common import (
    EXIT_FAILED,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    CliError,
    home_option,
    json_option,
    load_settings,
    print_json,
    print_table,
)
from esc.config import NodeHome

POLL_SECONDS = 0.25


@click.group("deployment")
def deployment_group() -> None:
    """Deploy, list, show and undeploy deployments (thin over the REST API)."""


wait_options = [
    click.option("--no-wait", is_flag=True, help="Return once the request is accepted."),
    click.option(
        "--timeout",
        type=click.FloatRange(min=1),
        default=600,
        show_default=True,
        help="Seconds to wait for the transaction to end.",
    ),
]


def with_wait_options(func: Any) -> Any:
    for option in reversed(wait_options):
        func = option(func)
    return func


def wait_for(client: ApiClient, accepted: dict, timeout: float, as_json: bool) -> dict:
    """Follow a transaction to its end, showing its events; exit non-zero if it FAILED."""
    tx_id = accepted["transaction_id"]
    from rich.console import Console

    console = Console(stderr=as_json)
    deadline = time.monotonic() + timeout
    last_event = 0

    def show_new_events() -> None:
        nonlocal last_event
        for event in client.get_all("/v0/events", transaction_id=tx_id, after=last_event):
            last_event = event["event_id"]
            if not as_json:
                console.print(f"  {event['type']:<22} {event['status']:<8} {event['message']}")

    with console.status(f"transaction {tx_id} {accepted['state']}") as status:
        while True:
            show_new_events()
            tx = client.get(f"/v0/transactions/{tx_id}")
            status.update(f"transaction {tx_id} {tx['state']}")
            if tx["state"] in ("SUCCESS", "FAILED"):
                # The last events commit with the end state: they may have landed
                # between the two reads above.
                show_new_events()
                break
            if time.monotonic() > deadline:
                raise CliError(
                    f"transaction {tx_id} still {tx['state']} after {timeout:g} s; it goes on: "
                    f"follow it with GET /v0/transactions/{tx_id}",
                    EXIT_TIMEOUT,
                )
            time.sleep(POLL_SECONDS)
    if as_json:
        print_json(tx)
    elif tx["state"] == "SUCCESS":
        click.echo(f"{tx['operation']} {tx['tenant']}/{tx['deployment']}: SUCCESS")
    if tx["state"] == "FAILED":
        raise CliError(
            f"{tx['operation']} {tx['tenant']}/{tx['deployment']} FAILED: {tx['error']}",
            EXIT_FAILED,
        )
    return tx


def _report_accepted(
    client: ApiClient, accepted: dict, no_wait: bool, timeout: float, as_json: bool
) -> None:
    if no_wait:
        if as_json:
            print_json(accepted)
        else:
            click.echo(f"accepted: transaction {accepted['transaction_id']} ({accepted['href']})")
        return
    wait_for(client, accepted, timeout, as_json)


def resolve(client: ApiClient, name: str, tenant: str | None) -> tuple[str, str]:
    """(tenant, name) of a deployment given by name, asking for --tenant when ambiguous."""
    if tenant:
        return tenant, name
    found = client.get("/v0/deployments", name=name)
    if not found:
        raise CliError(f"no deployment named {name!r}; see escadm deployment list", EXIT_FAILED)
    if len(found) > 1:
        tenants = ", ".join(d["tenant"] for d in found)
        raise CliError(
            f"deployment {name!r} exists in several tenants ({tenants}): add --tenant", EXIT_USAGE
        )
    return found[0]["tenant"], name


@deployment_group.command("deploy")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@home_option
@with_wait_options
@json_option
def deploy_command(
    file: Path, home: NodeHome, no_wait: bool, timeout: float, as_json: bool
) -> None:
    """Deploy the descriptor in FILE (YAML or JSON)."""
    try:
        body = file.read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {file}: {exc.strerror}", EXIT_USAGE) from None
    content_type = "application/json" if file.suffix == ".json" else "application/yaml"
    with ApiClient(home, load_settings(home)) as client:
        accepted = client.request(
            "POST", "/v0/deployments", content=body, headers={"content-type": content_type}
        )
        _report_accepted(client, accepted, no_wait, timeout, as_json)


@deployment_group.command("undeploy")
@click.argument("name")
@click.option("--tenant", help="Tenant of the deployment (needed when the name is ambiguous).")
@home_option
@with_wait_options
@json_option
def undeploy_command(
    name: str, tenant: str | None, home: NodeHome, no_wait: bool, timeout: float, as_json: bool
) -> None:
    """Undeploy deployment NAME: its VMs are deleted."""
    with ApiClient(home, load_settings(home)) as client:
        tenant, name = resolve(client, name, tenant)
        accepted = client.request("DELETE", f"/v0/tenants/{tenant}/deployments/{name}")
        _report_accepted(client, accepted, no_wait, timeout, as_json)


@deployment_group.command("list")
@click.option("--tenant", help="Only this tenant's deployments.")
@home_option
@json_option
def list_command(tenant: str | None, home: NodeHome, as_json: bool) -> None:
    """List deployments."""
    with ApiClient(home, load_settings(home)) as client:
        deployments = client.get("/v0/deployments", tenant=tenant)
    if as_json:
        print_json(deployments)
        return
    if not deployments:
        click.echo("No deployments")
        return
    from rich.table import Table

    table = Table("TENANT", "NAME", "STATUS", "VMS", "DATA MODEL", "CREATED", box=None)
    for d in deployments:
        table.add_row(
            d["tenant"],
            d["name"],
            d["status"],
            str(d["vm_count"]),
            str(d["data_model_version"]),
            d["created_at"][:19],
        )
    print_table(table)


@deployment_group.command("show")
@click.argument("name")
@click.option("--tenant", help="Tenant of the deployment (needed when the name is ambiguous).")
@home_option
@json_option
def show_command(name: str, tenant: str | None, home: NodeHome, as_json: bool) -> None:
    """Show deployment NAME with its vm_groups and VMs."""
    with ApiClient(home, load_settings(home)) as client:
        tenant, name = resolve(client, name, tenant)
        deployment = client.get(f"/v0/tenants/{tenant}/deployments/{name}")
    if as_json:
        print_json(deployment)
        return
    click.echo(
        f"deployment {deployment['tenant']}/{deployment['name']}  "
        f"status={deployment['status']}  data_model={deployment['data_model_version']}"
    )
    from rich.table import Table

    table = Table("VM_GROUP", "VM", "STATE", "ADDRESS", "VM ID", box=None)
    for group in deployment["vm_groups"]:
        for vm in group["vms"]:
            table.add_row(group["name"], vm["name"], vm["state"], vm["address"] or "-", vm["id"])
    print_table(table)
