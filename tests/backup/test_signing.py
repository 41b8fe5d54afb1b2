"""Signed backups: an archive altered after it was signed, unsigned, or signed by a key
this node does not hold is refused (unless --allow-unsigned); the key goes from node to
node by escadm backup-key export and import."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from backup_helpers import (
    Archive,
    DatabaseState,
    make_node_fixture,  # noqa: F401 - the make_node fixture
    url_of,
    user_hash,
    write_tar,
)
from conftest import Node, escadm, escadm_ok

from esc.backup.archive import SIGNATURE as SIGNATURE_MEMBER
from esc.backup.signing import key_id, load_key
from esc.security import ADMIN_USER, hash_password, verify_password

ATTACKER = "the attacker's password"


def backup(node: Node, path: Path) -> Path:
    escadm_ok("backup", "--file", str(path), home=node.home.root)
    return path


def with_admin_hash(archive: Archive, password_hash: str) -> Archive:
    """The archive with the admin's password hash replaced, the checksums recomputed (all
    a forger without the key can do)."""
    lines = archive.content("users").splitlines(keepends=True)
    columns = archive.manifest["tables"]["users"]["columns"]
    name, hashed = columns.index("name"), columns.index("password_hash")
    out = []
    for line in lines:
        fields = line.rstrip(b"\n").split(b"\t")
        if fields[name] == ADMIN_USER.encode():
            fields[hashed] = password_hash.encode()
        out.append(b"\t".join(fields) + b"\n")
    return archive.replaced("users", b"".join(out), recompute=True)


def unsigned(archive: Archive) -> Archive:
    return Archive(archive.manifest, [m for m in archive.members if m[0] != SIGNATURE_MEMBER])


def test_an_archive_altered_after_it_was_signed_is_refused(node: Node, tmp_path: Path) -> None:
    good = Archive.read(backup(node, tmp_path / "good.tar"))
    assert SIGNATURE_MEMBER in dict(good.members)
    forged = with_admin_hash(good, hash_password(ATTACKER))
    archive = write_tar(tmp_path / "forged.tar.gz", forged.entries(), "gz")
    url = url_of(node)
    before = DatabaseState.of(url)

    result = escadm("restore", "--file", str(archive), home=node.home.root)

    assert result.returncode == 1, result.stderr
    assert "does not match its manifest" in result.stderr and "altered" in result.stderr
    assert "Traceback" not in result.stderr
    before.assert_unchanged(url)
    assert not verify_password(ATTACKER, user_hash(url, ADMIN_USER))


def test_an_unsigned_archive_is_refused_and_restored_with_allow_unsigned(
    make_node, tmp_path: Path
) -> None:
    node = make_node("sqlite", "node")
    archive = write_tar(
        tmp_path / "unsigned.tar.gz",
        unsigned(Archive.read(backup(node, tmp_path / "good.tar"))).entries(),
        "gz",
    )
    url = url_of(node)
    before = DatabaseState.of(url)

    refused = escadm("restore", "--file", str(archive), home=node.home.root)
    assert refused.returncode == 1, refused.stderr
    for words in ("not signed", "escadm backup-key import --file", "--allow-unsigned"):
        assert words in refused.stderr, refused.stderr
    before.assert_unchanged(url)

    allowed = escadm("restore", "--file", str(archive), "--allow-unsigned", home=node.home.root)
    assert allowed.returncode == 0, allowed.stderr
    assert "warning: the archive is not signed" in allowed.stderr
    assert "because --allow-unsigned was given" in allowed.stderr
    assert "restored the backup of" in allowed.stdout


def test_the_key_goes_from_node_to_node_by_export_and_import(make_node, tmp_path: Path) -> None:
    one, two = make_node("sqlite", "one"), make_node("sqlite", "two")
    archive = backup(one, tmp_path / "one.tar.gz")
    escadm_ok("backup", "--file", str(tmp_path / "two.tar.gz"), home=two.home.root)
    key_one, key_two = load_key(one.home), load_key(two.home)
    assert key_one and key_two and key_one != key_two
    assert stat.S_IMODE(one.home.backup_key_file.stat().st_mode) == 0o600

    # Node two does not take node one's archive: another key signed it.
    refused = escadm("restore", "--file", str(archive), home=two.home.root)
    assert refused.returncode == 1
    assert key_id(key_one) in refused.stderr and key_id(key_two) in refused.stderr

    exported = tmp_path / "one.key"
    out = escadm_ok("backup-key", "export", "--file", str(exported), home=one.home.root)
    assert key_id(key_one) in out
    assert stat.S_IMODE(exported.stat().st_mode) == 0o600
    again = escadm("backup-key", "export", "--file", str(exported), home=one.home.root)
    assert again.returncode == 2 and "--force" in again.stderr

    # Two holds a key of its own: replaced only with --force.
    kept = escadm("backup-key", "import", "--file", str(exported), home=two.home.root)
    assert kept.returncode == 1 and "--force" in kept.stderr, kept.stderr
    assert load_key(two.home) == key_two
    escadm_ok("backup-key", "import", "--file", str(exported), "--force", home=two.home.root)
    assert load_key(two.home) == key_one
    same = escadm_ok("backup-key", "import", "--file", str(exported), home=two.home.root)
    assert "already holds" in same

    restored = escadm_ok("restore", "--file", str(archive), "--json", home=two.home.root)
    assert json.loads(restored)["signature"]["verified"] is True


@pytest.mark.parametrize(
    "content",
    ["", "not a key\n", "ab" * 31 + "\n", "AB" * 32 + "\n", "ab" * 33 + "\n"],
    ids=["empty", "text", "short", "uppercase", "long"],
)
def test_import_refuses_a_malformed_key(make_node, tmp_path: Path, content: str) -> None:
    node = make_node("sqlite", "node")
    bad = tmp_path / "bad.key"
    bad.write_text(content)
    result = escadm("backup-key", "import", "--file", str(bad), "--force", home=node.home.root)
    assert result.returncode == 2, result.stderr
    assert "is not an ESC backup key" in result.stderr and "64" in result.stderr
    assert not node.home.backup_key_file.exists()


def test_the_upgrade_of_a_node_restores_the_unsigned_backup_it_took(
    make_node, tmp_path: Path
) -> None:
    """A release before signing upgrades by restoring the backup it wrote into
    HOME/upgrade/ into HOME.upgrading, without --allow-unsigned: accepted there only."""
    old = make_node("sqlite", "node")
    (old.home.root / "upgrade").mkdir(mode=0o700)
    archive = old.home.root / "upgrade" / "backup-1.0.0.2-1.tar.gz"
    good = Archive.read(backup(old, tmp_path / "good.tar"))
    write_tar(archive, unsigned(good).entries(), "gz")

    elsewhere = make_node("sqlite", "elsewhere")
    refused = escadm("restore", "--file", str(archive), home=elsewhere.home.root)
    assert refused.returncode == 1 and "not signed" in refused.stderr

    staging = make_node("sqlite", "node.upgrading")
    accepted = escadm("restore", "--file", str(archive), home=staging.home.root)
    assert accepted.returncode == 0, accepted.stderr
    assert f"written by the upgrade of the node at {old.home.root}" in accepted.stderr

    (old.home.root / "upgrade").chmod(0o755)  # others could have put it there
    opened = escadm("restore", "--file", str(archive), home=staging.home.root)
    assert opened.returncode == 1 and "not signed" in opened.stderr
