"""Signed backups: who made an archive, and that it was not altered since.

An archive's manifest holds the size and sha256 of every member, so a MAC
of the manifest covers the whole archive. The MAC is HMAC-SHA256 with a
32-byte key kept in the node's home (data/backup.key, mode 0600), in a
member `manifest.sig` right after the manifest.

Why a shared key and not Ed25519: the node that restores must be able to
tell its own backups from an attacker's, and the operator carries the key
between the nodes that exchange backups (`escadm backup-key export` /
`import`); every such node both writes and checks archives, so a
verify-only public key would buy nothing, and HMAC needs no dependency and
no key-pair management. Anyone holding the key can sign: keep it as
private as the database.

What a valid signature proves: the archive was made by a holder of the key
and not altered since. What it does not: secrecy (the archive is not
encrypted; its password hashes are readable) nor freshness (an old signed
archive stays valid; restoring it brings back the state of its day).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from esc.config import NodeHome
from esc.files import write_atomic

ALGORITHM = "hmac-sha256"
KEY_BYTES = 32
KEY_TEXT = re.compile(r"[0-9a-f]{64}\Z")
# What the MAC is computed over besides the manifest: a signature of anything else
# made with the same key can never pass for an archive's.
CONTEXT = b"esc-backup-manifest\n"


class BackupKeyError(Exception):
    """A backup key cannot be read, written or imported; the message says why."""


def key_id(key: bytes) -> str:
    """A short public name of the key, to tell keys apart in messages (not secret)."""
    return hashlib.sha256(b"esc-backup-key-id\n" + key).hexdigest()[:16]


def parse_key(text: str, where: str) -> bytes:
    value = text.strip()
    if not KEY_TEXT.match(value):
        raise BackupKeyError(
            f"{where} is not an ESC backup key: it must hold {2 * KEY_BYTES} lowercase "
            "hexadecimal characters, as `escadm backup-key export` writes them"
        )
    return bytes.fromhex(value)


def key_text(key: bytes) -> bytes:
    return key.hex().encode() + b"\n"


def load_key(home: NodeHome) -> bytes | None:
    path = home.backup_key_file
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BackupKeyError(f"cannot read the backup key {path}: {exc.strerror or exc}") from None
    return parse_key(text, str(path))


def ensure_key(home: NodeHome) -> bytes:
    """The node's key, created (random, mode 0600) on first use."""
    key = load_key(home)
    if key is None:
        key = secrets.token_bytes(KEY_BYTES)
        store_key(home, key)
    return key


def store_key(home: NodeHome, key: bytes) -> None:
    home.data.mkdir(parents=True, exist_ok=True)
    write_atomic(home.backup_key_file, key_text(key), mode=0o600)


def write_key_file(path: Path, key: bytes, force: bool) -> None:
    """The key exported to `path`, mode 0600; an existing file only with force."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key_text(key))
    os.chmod(path, 0o600)


def _mac(key: bytes, manifest: bytes) -> str:
    return hmac.new(key, CONTEXT + manifest, hashlib.sha256).hexdigest()


def signature_for(key: bytes, manifest: bytes) -> bytes:
    """The `manifest.sig` member of an archive whose manifest is `manifest`."""
    record = {"algorithm": ALGORITHM, "key_id": key_id(key), "mac": _mac(key, manifest)}
    return json.dumps(record, indent=1).encode()


@dataclass(frozen=True)
class Verdict:
    """What the signature check found: verified, or why not (then `problem` is set)."""

    verified: bool
    summary: str

    @property
    def problem(self) -> str | None:
        return None if self.verified else self.summary


IMPORT_HINT = (
    "to verify it, import the key of the node that wrote it (there: escadm backup-key export "
    "--file KEY; here: escadm backup-key import --file KEY); to restore it unverified, "
    "knowing where it comes from, add --allow-unsigned"
)


def verify(key: bytes | None, manifest: bytes, signature: bytes | None) -> Verdict:
    if signature is None:
        return Verdict(
            False,
            "the archive is not signed (releases before 1.1.0.2 wrote unsigned backups; "
            "otherwise its signature was removed)",
        )
    try:
        record = json.loads(signature)
        algorithm, signer, mac = record["algorithm"], record["key_id"], record["mac"]
        if not all(isinstance(v, str) for v in (algorithm, signer, mac)):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        return Verdict(False, "the archive's manifest.sig is not a valid signature record")
    if algorithm != ALGORITHM:
        return Verdict(False, f"the archive is signed with {algorithm!r}, not {ALGORITHM}")
    if key is None:
        return Verdict(
            False, f"the archive is signed by key {signer}, and this node holds no backup key"
        )
    if signer != key_id(key):
        return Verdict(
            False,
            f"the archive is signed by key {signer}, this node's backup key is {key_id(key)}",
        )
    if not hmac.compare_digest(mac, _mac(key, manifest)):
        return Verdict(
            False,
            f"the archive's signature by key {signer} (this node's) does not match its "
            "manifest: it was altered after it was signed",
        )
    return Verdict(True, f"signed by this node's backup key {signer}")


UPGRADE_DIR = "upgrade"
UPGRADE_STAGING_SUFFIX = ".upgrading"


def written_by_the_upgrade_of_its_node(home: NodeHome, archive: Path) -> bool:
    """Whether `archive` is the backup `escadm upgrade backup-restore` took of node
    HOME into HOME/upgrade/ and is restoring into its new home HOME.upgrading.

    Releases before 1.1.0.2 sign nothing, and it is their upgrade command that runs
    this release's restore (without --allow-unsigned). Such an archive never left
    the node's own home: HOME/upgrade/ is the node user's, mode 0700, and whoever can
    write there can as well change HOME/data/esc.db itself, so a signature would
    prove nothing more. Anything else about the path and the archive is not trusted."""
    try:
        path = archive.resolve(strict=True)
        folder, node = path.parent, path.parent.parent
        if folder.name != UPGRADE_DIR or not (node / "esc.toml").is_file():
            return False
        if home.root.resolve() != node.with_name(node.name + UPGRADE_STAGING_SUFFIX):
            return False
        uid = os.geteuid()
        # (path, permission bits that others must not have)
        for where, forbidden in ((node, 0o022), (folder, 0o077), (path, 0o022)):
            status = where.stat()
            if status.st_uid != uid or status.st_mode & forbidden:
                return False
    except OSError:
        return False
    return True
