"""escadm backup --file F, escadm restore --file F."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from esc.cli.common import (
    EXIT_FAILED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CliError,
    home_option,
    json_option,
    load_settings,
    print_json,
)
from esc.config import NodeHome, Settings

# The active node's swap: the engine's pause (up to 2 s for its transactions to end),
# one transaction, and the active role taken again (reconciliation, VIM recovery).
SWAP_TIMEOUT = 120.0

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


force_option = click.option(
    "--force", is_flag=True, help="Replace the file if it exists (refused otherwise, exit 2)."
)


@click.command("backup")
@file_option
@force_option
@home_option
@json_option
def backup_command(file: Path, force: bool, home: NodeHome, as_json: bool) -> None:
    """Back up the node's database online (a consistent snapshot even while it works).

    The archive holds the deployments, VMs, transactions, events,
    subscriptions, op_mode, dynamic mappings and custom scripts, with a
    manifest of checksums, signed with the node's backup key (created on
    first use; see escadm backup-key); mode 0600. An existing file is
    replaced only with --force. Exit 0 written, 1 failed, 2 bad file name or
    the file exists.
    """
    from esc.backup.archive import ArchiveError, compression_for
    from esc.backup.dump import BackupError, BackupExists, write_backup
    from esc.backup.signing import BackupKeyError, ensure_key, key_id
    from esc.db.session import Database

    settings = load_settings(home)
    _run(lambda: compression_for(file.name), (ArchiveError,), EXIT_USAGE)
    key = _run(lambda: ensure_key(home), (BackupKeyError,), EXIT_FAILED)
    db = Database(home.database_url(settings), pool_size=1, max_overflow=0)
    try:
        with _working(f"backing up to {file}", as_json):
            result = write_backup(db, file, settings.node.name, key, force)
    except BackupExists as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    except BackupError as exc:
        raise CliError(str(exc), EXIT_FAILED) from None
    finally:
        db.dispose()
    rows = sum(t.rows for t in result.manifest.tables.values())
    if as_json:
        print_json(
            {
                "file": str(result.path),
                "bytes": result.size,
                "seconds": round(result.seconds, 3),
                "signed_by": key_id(key),
                "manifest": result.manifest.model_dump(),
            }
        )
        return
    click.echo(
        f"backup of {settings.node.name} (ESC {result.manifest.product_version}, schema "
        f"{result.manifest.schema_revision}): {rows} rows, {result.size} bytes in "
        f"{result.seconds:.1f} s, signed with backup key {key_id(key)}"
    )
    click.echo(str(result.path))


@click.command("restore")
@file_option
@click.option(
    "--allow-unsigned",
    is_flag=True,
    help="Restore an archive whose signature is missing or not this node's key's "
    "(e.g. a backup of a release before 1.1.0.2): only for an archive you know the "
    "origin of.",
)
@home_option
@json_option
def restore_command(file: Path, allow_unsigned: bool, home: NodeHome, as_json: bool) -> None:
    """Replace the node's database with a backup's (a standalone node must be stopped;
    on an HA pair, run it on the active node, the pair running).

    Checks the archive (its signature by this node's backup key, format,
    every checksum) and asks the upgrade planner whether this release takes
    a backup of that one; builds the new database aside, migrates it to this
    release's schema, checks its rows, and only then swaps it in. Any
    failure leaves the node's database as it was. An unsigned archive, or
    one signed by another key, is refused unless --allow-unsigned is given
    (import the other node's key with escadm backup-key import to verify
    it).

    On an HA pair the restore runs on the active node while the pair runs: it is
    refused on the standby (naming the active) and unless the standby is
    UpToDate and synchronous. The active's engine pauses for the swap (writes
    get 503 meanwhile), the node keeps the VIP, the swap reaches the standby by
    replication, and the engine resumes on the restored data.

    Exit 0 restored, 1 refused or failed (the reason is printed; nothing
    changed), 2 bad command line or no such file, 3 on an HA node: ESC does not
    answer on this node.
    """
    from esc.backup.restore import RestoreError, not_restored, restore, result_document

    settings = load_settings(home)
    if not file.is_file():
        raise CliError(f"no backup file {file}: check the path", EXIT_USAGE)
    pair = _PairRestore(home, settings) if settings.ha.enabled else None
    with _working(f"restoring {file}", as_json):
        result = _run(
            lambda: restore(home, settings, file, allow_unsigned, pair),
            (RestoreError,),
            EXIT_FAILED,
        )
    manifest = result.manifest
    mode = _op_mode(home, settings)
    if as_json:
        print_json(result_document(result, str(file), mode))
        return
    if result.unverified_because:
        click.echo(
            f"warning: {result.signature.summary}; restored unverified because "
            f"{result.unverified_because}",
            err=True,
        )
    click.echo(
        f"restored the backup of {manifest.source_node} taken {manifest.created_at} by ESC "
        f"{manifest.product_version}: {sum(result.rows.values())} rows in {result.seconds:.1f} s"
    )
    if result.signature.verified:
        click.echo(result.signature.summary)
    for line in not_restored(manifest, result.rows):
        click.echo(line)
    if mode == "MAINTENANCE":
        click.echo(
            "the node is in MAINTENANCE (as the backup was): deploys and other writes are "
            "refused until you run: escadm op_mode set --mode=operation"
        )
    if result.pair is None:
        click.echo("start ESC: escadm start")
        return
    swapped = result.pair
    click.echo(
        f"the active node {swapped['node']} runs on the restored data (engine paused "
        f"{swapped['seconds']:.1f} s, active role at epoch {swapped['epoch']}); its standby "
        f"{swapped['standby']} has it through replication"
    )


class _PairRestore:
    """A restore on a node of an HA pair, through the node's running escmanager
    (esc.backup.restore.PairSwap)."""

    def __init__(self, home: NodeHome, settings: Settings) -> None:
        self.home = home
        self.settings = settings

    def _client(self, timeout: float = 30.0) -> Any:
        from esc.cli.client import ApiClient

        return ApiClient(self.home, self.settings, timeout=timeout)

    def check(self) -> None:
        from esc.backup.restore import RestoreError
        from esc.ha import replication
        from esc.ha.pgsql import Cluster, PgsqlError

        try:
            with self._client() as client:
                view = client.get("/esc/ha")
        except CliError as exc:
            if exc.exit_code != EXIT_UNREACHABLE:
                raise
            raise CliError(
                f"{exc.message}; on an HA pair the restore runs on the active node with the "
                "pair running (escadm start on both nodes)",
                EXIT_UNREACHABLE,
            ) from None
        if view["role"] != "ACTIVE":
            raise RestoreError(self._not_active(view))
        try:
            status = replication.read_status(Cluster(self.home, self.settings.ha))
        except PgsqlError as exc:
            raise CliError(
                f"this node's PostgreSQL does not answer: {exc}", EXIT_UNREACHABLE
            ) from None
        if not status.uptodate:
            raise RestoreError(
                f"the standby {self.settings.ha.peer} is not UpToDate and synchronous "
                f"({replication.not_uptodate_reason(status)}): a restore now could leave the "
                "pair's two copies apart; wait for it with 'escadm replication status "
                "--wait-uptodate', then restore again; nothing was changed"
            )

    def _not_active(self, view: dict[str, Any]) -> str:
        """Why this node does not restore, and which node does."""
        from esc.backup.restore import the_active_node
        from esc.db.session import Database

        db = Database(self.home.database_url(self.settings), pool_size=1, max_overflow=0)
        try:
            active = the_active_node(db, view["node"], view["peer"])
        finally:
            db.dispose()
        me = f"this node ({view['node']}, {view['address']})"
        what = "the standby" if view["role"] == "STANDBY" else f"{view['role']} ({view['reason']})"
        return (
            f"{me} is {what} of the pair, not its active: run escadm restore on {active}; "
            "the standby gets the restored data from it through replication; nothing was "
            "changed"
        )

    def swap(self, token: str) -> dict[str, Any]:
        from esc.backup.restore import RestoreError, SwapOutcomeUnknown

        try:
            with self._client(SWAP_TIMEOUT) as client:
                return client.request("POST", "/esc/ha/restore", json={"aside": token})
        except CliError as exc:
            told = exc.message
            if exc.status == 409:  # refused before anything was changed
                raise RestoreError(
                    told if "nothing was changed" in told else f"{told}; nothing was changed"
                ) from None
            if exc.status is not None:  # it says what happened after the swap
                raise SwapOutcomeUnknown(told) from None
            raise SwapOutcomeUnknown(
                f"{told}: the active node did not say whether it swapped the restored data "
                "in (it is one transaction: the data is the old or the restored, never a "
                "mix); see escadm status and log/escmanager.log"
            ) from None


def _op_mode(home: NodeHome, settings: Any) -> str:
    """The restored database's op_mode."""
    from esc.db.session import Database
    from esc.engine.op_mode import current

    db = Database(home.database_url(settings), pool_size=1, max_overflow=0)
    try:
        with db.read() as session:
            return current(session).value
    finally:
        db.dispose()
