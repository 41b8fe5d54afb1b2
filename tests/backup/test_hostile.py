"""Issue must-show: damaged and hostile archives are refused with a clear message, and
the node's database is exactly as it was (SQLite: the same bytes; both: the same rows),
with nothing left aside."""

from __future__ import annotations

import hashlib
import os
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from backup_helpers import (
    Archive,
    DatabaseState,
    end_of_archive,
    huge_header,
    open_database,
    padded,
    regular,
    special,
    tar_bytes,
    url_of,
    write_tar,
)
from conftest import Node, escadm

from esc.backup.archive import MAX_MANIFEST_BYTES, MAX_MEMBER_BYTES
from esc.backup.dump import write_backup
from esc.backup.restore import RestoreError, restore
from esc.backup.tables import backed_up_tables
from esc.db.models import Tenant
from esc.engine.lease import DatabaseLease
from esc.node.processes import ProcessRecord, remove_record, write_record
from esc.version import CURRENT


@dataclass
class Good:
    """A good backup of the node, as .tar.bz2 and as .tar, taken apart."""

    bz2: Path
    tar: Path
    archive: Archive
    out: Path

    def path(self, name: str) -> Path:
        return self.out / name


@pytest.fixture
def good(node: Node, tmp_path: Path) -> Good:
    db = open_database(node)
    try:
        with db.write() as session:
            session.add(Tenant(name="in-the-backup"))
        # As on a node of a pair: the active role's lease has its row, so the archive's
        # first table (parents first) has rows to tamper with.
        lease = DatabaseLease(db, "node-a", "")
        lease.acquire()
        lease.release()
        bz2 = write_backup(db, tmp_path / "good.tar.bz2", "good").path
        tar = write_backup(db, tmp_path / "good.tar", "good").path
        # Changed after the backup: a restore that wrongly went through would undo it.
        with db.write() as session:
            session.add(Tenant(name="after-the-backup"))
    finally:
        db.dispose()
    out = tmp_path / "hostile"
    out.mkdir()
    return Good(bz2, tar, Archive.read(tar), out)


FIRST = backed_up_tables()[0].name  # the archive's first table (parents first)
Build = Callable[[Good], Path]


def cut_in_half(good: Good) -> Path:
    data = good.bz2.read_bytes()
    return _write(good.path("half.tar.bz2"), data[: len(data) // 2])


def cut_mid_member(good: Good) -> Path:
    with tarfile.open(good.tar) as tar:
        users = tar.getmember("data/users.tsv")
        cut = users.offset_data + users.size // 2
    return _write(good.path("cut.tar"), good.tar.read_bytes()[:cut])


def flip_data_bit(good: Good) -> Path:
    data = bytearray(good.archive.content("users"))
    at = data.index(b"admin\t") + 1
    data[at] ^= 0x01  # "admin" -> "aemin": still a valid row, not the same bytes
    altered = good.archive.replaced("users", bytes(data), recompute=False)
    return write_tar(good.path("flipped.tar"), altered.entries())


def flip_compressed_bit(good: Good) -> Path:
    data = bytearray(good.bz2.read_bytes())
    data[len(data) // 2] ^= 0x10
    return _write(good.path("flipped.tar.bz2"), bytes(data))


def no_manifest(good: Good) -> Path:
    return write_tar(good.path("nomanifest.tar.gz"), good.archive.entries()[1:], "gz")


def with_manifest(good: Good, name: str, **changes: object) -> Path:
    manifest = dict(good.archive.manifest, **changes)
    forged = Archive(manifest, good.archive.members)
    return write_tar(good.path(name), forged.entries(), "bz2")


def manifest_not_json(good: Good) -> Path:
    entries = good.archive.entries()
    entries[0] = regular("manifest.json", b'{"format": "esc-backup", "format_version": 1,')
    return write_tar(good.path("badmanifest.tar.bz2"), entries, "bz2")


def first_member_as(replacement: Callable[[str, bytes], tuple]) -> Build:
    """The first data member replaced by another kind of member (or name)."""

    def build(good: Good) -> Path:
        entries = good.archive.entries()
        entries[1] = replacement(f"data/{FIRST}.tsv", good.archive.content(FIRST))
        return write_tar(good.path("replaced.tar"), entries)

    return build


def renamed(name: str) -> Build:
    return first_member_as(lambda _, data: regular(name, data))


def larger_than_manifest(good: Good) -> Path:
    entries = good.archive.entries()
    data = good.archive.content(FIRST)
    entries[1] = regular(f"data/{FIRST}.tsv", data + b"x\ty\t2024-01-01 00:00:00+00\n")
    return write_tar(good.path("larger.tar"), entries)


def huge_member(manifest_allows: bool) -> Build:
    """A member whose header declares more than MAX_MEMBER_BYTES, with only a few bytes
    after it; with the manifest saying the table is as large as the bound allows, or not."""

    def build(good: Good) -> Path:
        archive = good.archive
        if manifest_allows:
            archive = Archive(dict(archive.manifest), archive.members)
            tables = {k: dict(v) for k, v in archive.manifest["tables"].items()}
            tables[FIRST]["bytes"] = MAX_MEMBER_BYTES
            archive.manifest["tables"] = tables
        head = tar_bytes(archive.entries()[:1])
        header = huge_header(f"data/{FIRST}.tsv", MAX_MEMBER_BYTES + 1)
        body = padded(archive.content(FIRST))
        return _write(good.path("huge.tar"), head + header + body + end_of_archive())

    return build


def huge_manifest(good: Good) -> Path:
    header = huge_header("manifest.json", MAX_MANIFEST_BYTES + 1)
    body = padded(good.archive.manifest_bytes())
    return _write(good.path("hugemanifest.tar"), header + body + end_of_archive())


def extra_member(good: Good) -> Path:
    entries = [*good.archive.entries(), regular("data/zz_extra.tsv", b"x\n")]
    return write_tar(good.path("extra.tar.xz"), entries, "xz")


def changed_rows(table: str, change: Callable[[bytes], bytes], name: str) -> Build:
    """One table's member altered, its manifest entry recomputed: checksums hold."""

    def build(good: Good) -> Path:
        data = change(good.archive.content(table))
        forged = good.archive.replaced(table, data, recompute=True)
        return write_tar(good.path(name), forged.entries(), "gz")

    return build


def one_value_short(data: bytes) -> bytes:
    return data + b"x\ty\n"


def end_of_copy_marker(data: bytes) -> bytes:
    """COPY's end-of-data line before the last row: a server would stop reading there."""
    lines = data.splitlines(keepends=True)
    return b"".join([*lines[:-1], b"\\.\n", lines[-1]])


def last_row_unended(data: bytes) -> bytes:
    return data + b"x\ty\t2024-01-01 00:00:00+00"


def not_utf8(data: bytes) -> bytes:
    return data + b"\xff\xfe\tvalue\t2024-01-01 00:00:00+00\n"


def duplicated_first_row(data: bytes) -> bytes:
    return data + data.splitlines(keepends=True)[0]


def bad_timestamp(value: bytes) -> Callable[[bytes], bytes]:
    def change(data: bytes) -> bytes:
        # tenants: [id, name, created_at]
        return data + b"00000000-0000-0000-0000-000000000001\tforged\t" + value + b"\n"

    return change


def script_with_text_timeout(data: bytes) -> bytes:
    # custom_scripts: [name, content, timeout, updated_at]; timeout is a float column.
    return data + b"x.sh\t#!/bin/sh\\n\tnot a number\t2026-01-01 00:00:00+00\n"


def unknown_table(good: Good) -> Path:
    manifest = dict(good.archive.manifest)
    data = b"x\n"
    manifest["tables"] = {
        **manifest["tables"],
        "evil": {
            "columns": ["id"],
            "rows": 1,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        },
    }
    forged = Archive(manifest, [*good.archive.members, ("data/evil.tsv", data)])
    return write_tar(good.path("unknowntable.tar"), forged.entries())


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


CASES: dict[str, tuple[Build, list[str]]] = {
    "truncated-bz2": (cut_in_half, ["truncated"]),
    "truncated-tar-mid-member": (cut_mid_member, ["truncated"]),
    "empty-file": (lambda g: _write(g.path("empty.tar"), b""), ["not a readable tar"]),
    "not-an-archive": (
        lambda g: _write(g.path("junk.tar.gz"), b"PK\x03\x04" + os.urandom(3000)),
        ["not a readable tar"],
    ),
    "flipped-data-bit": (flip_data_bit, ["data/users.tsv", "sha256"]),
    "flipped-compressed-bit": (flip_compressed_bit, ["damaged"]),
    "missing-manifest": (no_manifest, ["unexpected member", "manifest.json"]),
    "manifest-not-json": (manifest_not_json, ["manifest.json", "not valid JSON"]),
    "unknown-format-version": (
        lambda g: with_manifest(g, "v99.tar.bz2", format_version=99),
        ["format version 99", "reads versions 1 and 2"],
    ),
    "not-an-esc-manifest": (
        lambda g: with_manifest(g, "other.tar.bz2", format="other"),
        ["not an ESC backup manifest"],
    ),
    "path-dotdot": (renamed("../evil"), ["'../evil'", "unexpected member"]),
    "path-absolute": (renamed("/etc/passwd"), ["'/etc/passwd'", "unexpected member"]),
    "path-inner-dotdot": (renamed("data/../../x"), ["'data/../../x'", "unexpected member"]),
    "symlink": (
        first_member_as(lambda name, _: special(name, tarfile.SYMTYPE, "/etc/passwd")),
        ["is a symlink", "only regular files"],
    ),
    "hard-link": (
        first_member_as(lambda name, _: special(name, tarfile.LNKTYPE, "manifest.json")),
        ["is a hard link", "only regular files"],
    ),
    "character-device": (
        first_member_as(lambda name, _: special(name, tarfile.CHRTYPE)),
        ["is not a file", "only regular files"],
    ),
    "fifo": (
        first_member_as(lambda name, _: special(name, tarfile.FIFOTYPE)),
        ["is not a file", "only regular files"],
    ),
    "larger-than-manifest": (larger_than_manifest, [f"data/{FIRST}.tsv", "declares"]),
    "huge-member": (huge_member(manifest_allows=False), ["declares", str(MAX_MEMBER_BYTES + 1)]),
    "huge-member-at-the-bound": (
        huge_member(manifest_allows=True),
        ["declares", f"more than the {MAX_MEMBER_BYTES} allowed"],
    ),
    "huge-manifest": (huge_manifest, ["manifest.json", "declares"]),
    "extra-member": (extra_member, ["data/zz_extra.tsv", "after the last table"]),
    "row-one-value-short": (
        changed_rows(FIRST, one_value_short, "short.tar.gz"),
        [f"data/{FIRST}.tsv", "altered"],
    ),
    "end-of-copy-marker": (
        changed_rows(FIRST, end_of_copy_marker, "endmarker.tar.gz"),
        [f"data/{FIRST}.tsv", "altered"],
    ),
    "last-row-without-end-of-line": (
        changed_rows(FIRST, last_row_unended, "unended.tar.gz"),
        [f"data/{FIRST}.tsv", "no end of line"],
    ),
    "not-utf8": (
        changed_rows(FIRST, not_utf8, "notutf8.tar.gz"),
        [f"data/{FIRST}.tsv", "altered"],
    ),
    "duplicate-row": (
        changed_rows("users", duplicated_first_row, "duplicate.tar.gz"),
        ["does not load"],
    ),
    "timestamp-not-a-timestamp": (
        changed_rows("tenants", bad_timestamp(b"not a timestamp"), "badtime.tar.gz"),
        ["altered"],
    ),
    "timestamp-a-number": (
        changed_rows("tenants", bad_timestamp(b"12345"), "numtime.tar.gz"),
        ["altered"],
    ),
    "value-of-the-wrong-type": (
        changed_rows("custom_scripts", script_with_text_timeout, "wrongtype.tar.gz"),
        ["altered"],
    ),
    "unknown-table": (unknown_table, ["evil"]),
    "newer-release": (
        lambda g: with_manifest(g, "newer.tar.bz2", product_version="9.9.9.9"),
        ["9.9.9.9", "newer", str(CURRENT)],
    ),
    "older-release": (
        lambda g: with_manifest(g, "older.tar.bz2", product_version="0.9.0.1"),
        ["0.9.0.1", str(CURRENT), "does not restore"],
    ),
    "unknown-schema-revision": (
        lambda g: with_manifest(g, "schema.tar.bz2", schema_revision="9999"),
        ["'9999'", "schema revision"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_archive_is_refused(case: str, node: Node, good: Good) -> None:
    build, words = CASES[case]
    hostile = build(good)
    url = url_of(node)
    before = DatabaseState.of(url)
    assert any(t["name"] == "after-the-backup" for t in before.rows["tenants"])

    started = time.monotonic()
    with pytest.raises(RestoreError) as refused:
        restore(node.home, node.settings, hostile, allow_unsigned=True)
    elapsed = time.monotonic() - started

    message = str(refused.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    before.assert_unchanged(url)
    assert elapsed < 10, f"refused only after {elapsed:.1f} s"
    if case.startswith("huge"):
        assert elapsed < 2, f"a huge member refused only after {elapsed:.1f} s"


@pytest.mark.parametrize("case", ["manifest-not-json", "symlink"])
def test_hostile_archive_through_the_cli(case: str, node: Node, good: Good) -> None:
    build, words = CASES[case]
    hostile = build(good)
    url = url_of(node)
    before = DatabaseState.of(url)

    result = escadm("restore", "--file", str(hostile), "--allow-unsigned", home=node.home.root)

    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("Error: ")
    for word in words:
        assert word in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    before.assert_unchanged(url)


def test_restore_refused_while_the_node_runs(node: Node, good: Good) -> None:
    url = url_of(node)
    before = DatabaseState.of(url)
    write_record(node.home.run, ProcessRecord.of("escmanager", os.getpid()))
    try:
        with pytest.raises(RestoreError) as refused:
            restore(node.home, node.settings, good.bz2)
    finally:
        remove_record(node.home.run, "escmanager")
    assert "escmanager" in str(refused.value) and "escadm stop" in str(refused.value)
    before.assert_unchanged(url)


def test_restore_of_a_missing_file(node: Node, tmp_path: Path) -> None:
    url = url_of(node)
    before = DatabaseState.of(url)
    with pytest.raises(RestoreError, match="no backup file"):
        restore(node.home, node.settings, tmp_path / "nothing.tar.bz2")
    result = escadm("restore", "--file", str(tmp_path / "nothing.tar.bz2"), home=node.home.root)
    assert result.returncode == 2 and "no backup file" in result.stderr, result.stderr
    before.assert_unchanged(url)


def test_backup_with_an_unknown_suffix_is_a_usage_error(node: Node, tmp_path: Path) -> None:
    target = tmp_path / "db.zip"
    result = escadm("backup", "--file", str(target), home=node.home.root)
    assert result.returncode == 2, result.stderr
    assert "db.zip" in result.stderr and ".tar.bz2" in result.stderr
    assert "Traceback" not in result.stderr
    assert not target.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".db.zip")]
