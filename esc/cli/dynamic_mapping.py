"""escadm dynamic_mapping import FILE | export [FILE] | show."""

from __future__ import annotations

from pathlib import Path

import click

from esc.cli.client import ApiClient
from esc.cli.common import (
    EXIT_USAGE,
    CliError,
    home_option,
    json_option,
    load_settings,
    print_json,
)
from esc.config import NodeHome


@click.group("dynamic_mapping")
def dynamic_mapping_group() -> None:
    """The VNF monitoring rules' metrics and actions (dynamic_mappings.xml).

    They live in the database, so backup, restore and replication carry them;
    a change takes effect at once, without a restart.
    """


@dynamic_mapping_group.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@home_option
@json_option
def import_command(file: Path, home: NodeHome, as_json: bool) -> None:
    """Validate FILE and put its mappings in force (all or nothing)."""
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {file}: {exc.strerror}", EXIT_USAGE) from None
    with ApiClient(home, load_settings(home)) as client:
        counts = client.request(
            "PUT", "/v0/dynamic_mappings", content=data, headers={"content-type": "application/xml"}
        )
    if as_json:
        print_json(counts)
    else:
        click.echo(
            f"dynamic mappings in force: {counts['actions']} actions, {counts['metrics']} metrics"
        )


def _export(home: NodeHome) -> bytes:
    with ApiClient(home, load_settings(home)) as client:
        response = client.raw("GET", "/v0/dynamic_mappings")
    return response.content


@dynamic_mapping_group.command("export")
@click.argument("file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@home_option
def export_command(file: Path | None, home: NodeHome) -> None:
    """Write the mappings in force as dynamic_mappings.xml to FILE (or print it)."""
    data = _export(home)
    if file is None:
        click.echo(data.decode(), nl=False)
        return
    try:
        file.write_bytes(data)
    except OSError as exc:
        raise CliError(f"cannot write {file}: {exc.strerror}", EXIT_USAGE) from None
    click.echo(str(file))


@dynamic_mapping_group.command("show")
@home_option
@json_option
def show_command(home: NodeHome, as_json: bool) -> None:
    """List the metrics and actions in force."""
    from esc.monitor.mappings import parse_mappings

    mappings = parse_mappings(_export(home))
    if as_json:
        print_json([m.__dict__ for m in mappings])
        return
    for mapping in mappings:
        click.echo(f"{mapping.kind:<7} {mapping.type:<24} {mapping.name}")
