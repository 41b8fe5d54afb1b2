"""escadm backup --file F, escadm restore --file F."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

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

file_option = click.option(
    "--file",
    "file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The archive, e.g. /tmp/db.tar.bz2 (.tar.bz2, .tar.gz/.tgz, .tar.xz or .tar).",
)


@contextmanager
def _working(message: str, as_json: bool) -> Iterator[None]:
    """A spinner on a terminal, nothing otherwise (scripts read the last line)."""
    from rich.console import Console

    console = Console(stderr=True)
    if as_json or not console.is_terminal:
        yield
        return
    with console.status(message):
        yield


def _run(work: Callable[[], Any], errors: tuple[type[Exception], ...], code: int) -> Any:
    try:
        return work()
    except errors as exc:
        raise CliError(str(exc), code) from None


@click.command("backup")
@file_option
@home_option
@json_option
def backup_command(file: Path, home: NodeHome, as_json: bool) -> None:
    """Back up the node's database online (a consistent snapshot even while it works).

    The archive holds the deployments, VMs, transactions, events,
    subscriptions, op_mode, dynamic mappings and custom scripts, with a
    manifest of checksums; mode 0600. Exit 0 written, 1 failed, 2 bad file name.
    """
    from esc.backup.archive import ArchiveError, compression_for
    from esc.backup.dump import BackupError, write_backup
    from esc.db.session import Database

    settings = load_settings(home)
    _run(lambda: compression_for(file.name), (ArchiveError,), EXIT_USAGE)
    db = Database(home.database_url(settings), pool_size=1, max_overflow=0)
    try:
        with _working(f"backing up to {file}", as_json):
            result = _run(
                lambda: write_backup(db, file, settings.node.name), (BackupError,), EXIT_FAILED
            )
    finally:
        db.dispose()
    rows = sum(t.rows for t in result.manifest.tables.values())
    if as_json:
        print_json(
            {
                "file": str(result.path),
                "bytes": result.size,
                "seconds": round(result.seconds, 3),
                "manifest": result.manifest.model_dump(),
            }
        )
        return
    click.echo(
        f"backup of {settings.node.name} (ESC {result.manifest.product_version}, schema "
        f"{result.manifest.schema_revision}): {rows} rows, {result.size} bytes in "
        f"{result.seconds:.1f} s"
    )
    click.echo(str(result.path))


@click.command("restore")
@file_option
@home_option
@json_option
def restore_command(file: Path, home: NodeHome, as_json: bool) -> None:
    """Replace the node's database with a backup's (the node must be stopped).

    Checks the archive (format, every checksum) and asks the upgrade planner
    whether this release takes a backup of that one; builds the new database
    aside, migrates it to this release's schema, and only then swaps it in.
    Any failure leaves the node's database as it was. Exit 0 restored,
    1 refused or failed (the reason is printed), 2 bad command line or no such file.
    """
    from esc.backup.restore import RestoreError, restore

    settings = load_settings(home)
    if not file.is_file():
        raise CliError(f"no backup file {file}: check the path", EXIT_USAGE)
    with _working(f"restoring {file}", as_json):
        result = _run(lambda: restore(home, settings, file), (RestoreError,), EXIT_FAILED)
    manifest = result.manifest
    if as_json:
        print_json(
            {
                "file": str(file),
                "source_version": manifest.product_version,
                "source_node": manifest.source_node,
                "created_at": manifest.created_at,
                "rows": result.rows,
                "seconds": round(result.seconds, 3),
            }
        )
        return
    click.echo(
        f"restored the backup of {manifest.source_node} taken {manifest.created_at} by ESC "
        f"{manifest.product_version}: {sum(result.rows.values())} rows in {result.seconds:.1f} s"
    )
    click.echo("start ESC: escadm start")
