"""escadm backup-key export|import: carry the key that signs backups to another node."""

from __future__ import annotations

from pathlib import Path

import click

from esc.cli.common import EXIT_FAILED, EXIT_USAGE, CliError, home_option, load_settings
from esc.config import NodeHome

key_file_option = click.option(
    "--file",
    "file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The key file (64 hexadecimal characters, mode 0600).",
)


@click.group("backup-key")
def backup_key_group() -> None:
    """The node's backup key: escadm backup signs with it, escadm restore checks it.

    Nodes that restore each other's backups hold the same key: export it on
    one, import it on the other. Keep it as private as the database: whoever
    holds it can sign an archive this node will restore.
    """


@backup_key_group.command("export")
@key_file_option
@click.option("--force", is_flag=True, help="Replace the file if it exists.")
@home_option
def export_command(file: Path, force: bool, home: NodeHome) -> None:
    """Write the node's backup key to FILE (created first if the node has none).

    Exit 0 written, 1 the key cannot be read, 2 FILE exists (without --force)
    or cannot be written.
    """
    from esc.backup.signing import BackupKeyError, ensure_key, key_id, write_key_file

    load_settings(home)
    try:
        key = ensure_key(home)
    except BackupKeyError as exc:
        raise CliError(str(exc), EXIT_FAILED) from None
    try:
        write_key_file(file, key, force)
    except FileExistsError:
        raise CliError(
            f"{file} exists: choose another file, or add --force to replace it", EXIT_USAGE
        ) from None
    except OSError as exc:
        raise CliError(f"cannot write {file}: {exc.strerror or exc}", EXIT_USAGE) from None
    click.echo(
        f"backup key {key_id(key)} written to {file} (mode 0600); on the other node: "
        f"escadm backup-key import --file {file.name}"
    )


@backup_key_group.command("import")
@key_file_option
@click.option("--force", is_flag=True, help="Replace a different key the node already holds.")
@home_option
def import_command(file: Path, force: bool, home: NodeHome) -> None:
    """Make the key in FILE this node's backup key.

    Backups signed with it then restore here, and this node's next backups
    are signed with it. A node holding a different key keeps it unless
    --force is given (its backups would then no longer verify here: export
    it first to keep it). Exit 0 imported or already held, 1 a different key
    is held (without --force), 2 FILE is missing or not a backup key.
    """
    from esc.backup.signing import BackupKeyError, key_id, load_key, parse_key, store_key

    load_settings(home)
    try:
        text = file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(
            f"cannot read {file}: {getattr(exc, 'strerror', None) or exc}", EXIT_USAGE
        ) from None
    try:
        key = parse_key(text, str(file))
    except BackupKeyError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    try:
        held = load_key(home)
    except BackupKeyError as exc:
        if not force:
            raise CliError(f"{exc}; add --force to replace it", EXIT_FAILED) from None
        held = None
    if held == key:
        click.echo(f"this node already holds backup key {key_id(key)}")
        return
    if held is not None and not force:
        raise CliError(
            f"this node holds another backup key ({key_id(held)}), not {key_id(key)}: "
            "replacing it means the backups signed with it no longer verify here (keep it "
            "with escadm backup-key export --file OLD first); add --force to replace it",
            EXIT_FAILED,
        )
    store_key(home, key)
    click.echo(
        f"backup key {key_id(key)} imported: backups signed with it restore here, and this "
        "node signs its backups with it"
    )
