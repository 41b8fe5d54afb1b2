"""The backup archive: what is in it, and reading one that may be hostile.

A tar file, compressed as its name says (`.tar.bz2` as operators know it,
`.tar.gz`/`.tgz`, `.tar.xz`, or plain `.tar`); on reading the compression
is recognised by content. Members, in this order:

  manifest.json          format, versions, source node, tables: columns,
                         row counts, sizes and sha256 of the data members
  data/<table>.tsv       one row per line in PostgreSQL's COPY text format,
                         values in manifest order (copytext.py)

The data is backend-neutral: each value has one canonical form (timestamps
in UTC, JSON columns as JSON text, booleans t/f); a backup from SQLite
restores into PostgreSQL and back. Format version 1 (ESC 1.0) held
`data/<table>.jsonl`, one JSON array per row; it is still read, so a 1.0
backup restores into this release.

The reader trusts nothing: only the members above, only regular files, each
no larger than its manifest says and than a hard bound, each checked
against its sha256 before the restore is allowed to finish. Nothing is ever
extracted to disk.
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

FORMAT = "esc-backup"
FORMAT_VERSION = 2
JSON_ROWS_FORMAT = 1  # ESC 1.0's: data/<table>.jsonl, read but no longer written
READABLE_FORMATS = (JSON_ROWS_FORMAT, FORMAT_VERSION)
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"  # optional, right after the manifest (signing.py)
MAX_SIGNATURE_BYTES = 4096
MAX_MANIFEST_BYTES = 1_048_576
# A bound on any one member, whatever the manifest declares (a bomb is refused early).
MAX_MEMBER_BYTES = 64 * 2**30
MAX_ROW_BYTES = 256 * 2**20  # far above any row ESC writes; a line without end is refused
IDENTIFIER = r"^[a-z][a-z0-9_]{0,62}$"  # a table or column name of ESC's schema
TABLE = re.compile(IDENTIFIER)
COMPRESSION_BY_SUFFIX = {
    ".tar.bz2": "bz2",
    ".tbz2": "bz2",
    ".tar.gz": "gz",
    ".tgz": "gz",
    ".tar.xz": "xz",
    ".tar": "",
}


class ArchiveError(Exception):
    """The archive cannot be used; the message names the problem and what to do."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TableEntry(_Strict):
    columns: Annotated[list[Annotated[str, Field(pattern=IDENTIFIER)]], Field(min_length=1)]
    rows: Annotated[int, Field(ge=0)]
    bytes: Annotated[int, Field(ge=0, le=MAX_MEMBER_BYTES)]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class Manifest(_Strict):
    format: str
    format_version: int
    product_version: Annotated[str, Field(max_length=32)]
    schema_revision: Annotated[str, Field(max_length=32)]
    created_at: str
    source_node: Annotated[str, Field(max_length=256)]
    backend: Annotated[str, Field(pattern=r"^(sqlite|postgresql)$")]
    # In dump order (parents before children); the archive holds them in this order.
    tables: dict[Annotated[str, Field(pattern=IDENTIFIER)], TableEntry]
    notes: str = ""


def member_name(table: str, format_version: int = FORMAT_VERSION) -> str:
    return f"data/{table}.jsonl" if format_version == JSON_ROWS_FORMAT else f"data/{table}.tsv"


def compression_for(path: str) -> str:
    """The compression a file name asks for ("" for none); refuses a name it does not know."""
    for suffix, compression in COMPRESSION_BY_SUFFIX.items():
        if path.endswith(suffix):
            return compression
    known = ", ".join(COMPRESSION_BY_SUFFIX)
    raise ArchiveError(f"backup file name {path!r} must end in one of {known} (e.g. db.tar.bz2)")


def parse_manifest(data: bytes) -> Manifest:
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ArchiveError(
            f"manifest.json is not valid JSON ({exc}): the archive is damaged"
        ) from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ArchiveError("manifest.json is not an ESC backup manifest: is this an ESC backup?")
    if raw.get("format_version") not in READABLE_FORMATS:
        readable = " and ".join(str(v) for v in READABLE_FORMATS)
        raise ArchiveError(
            f"backup archive format version {raw.get('format_version')!r} is not one this "
            f"release reads (it reads versions {readable}); restore it with the ESC release "
            f"that wrote it ({raw.get('product_version', 'unknown')}) or a newer one"
        )
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ArchiveError(f"manifest.json: {where}: {first['msg']}") from None


@dataclass
class Member:
    """A data member being read: its bytes, checked as they go against the manifest."""

    name: str
    table: str
    entry: TableEntry
    stream: IO[bytes]

    def chunks(self) -> Iterator[bytes]:
        """The member's bytes in pieces of whole rows; once the last is out, the size,
        sha256 and row count are checked (ArchiveError), before the caller may commit."""
        digest = hashlib.sha256()
        read = rows = 0
        rest = b""
        while chunk := self._chunk():
            read += len(chunk)
            if read > self.entry.bytes:
                raise ArchiveError(
                    f"{self.name} is larger than the {self.entry.bytes} bytes the manifest "
                    "declares: the archive is damaged or forged"
                )
            digest.update(chunk)
            rows += chunk.count(b"\n")
            cut = chunk.rfind(b"\n") + 1
            if cut:
                yield rest + chunk[:cut]
                rest = chunk[cut:]
            else:
                rest += chunk
            if len(rest) > MAX_ROW_BYTES:
                raise ArchiveError(
                    f"{self.name}: a row longer than {MAX_ROW_BYTES} bytes: the archive is "
                    "damaged or forged"
                )
        if read != self.entry.bytes or digest.hexdigest() != self.entry.sha256:
            raise ArchiveError(
                f"{self.name} does not match its sha256 in the manifest: the archive is "
                "damaged (copy it again) or was altered"
            )
        if rest:
            raise ArchiveError(f"{self.name}: the last row has no end of line")
        if rows != self.entry.rows:
            raise ArchiveError(
                f"{self.name}: {rows} rows in the archive, the manifest says {self.entry.rows}"
            )

    def lines(self) -> Iterator[bytes]:
        """The member's rows, without their end of line (checked as chunks() does)."""
        for chunk in self.chunks():
            yield from chunk.split(b"\n")[:-1]

    def _chunk(self) -> bytes:
        try:
            return self.stream.read(1 << 20)
        except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
            raise ArchiveError(f"the archive is truncated or damaged: {exc}") from None


# What a tar file adds to its members' bytes: a header or three per member (PAX
# records for long names and large sizes) and padding to a block, then the end
# blocks and padding to a record. Far above what tarfile or GNU tar write.
TAR_BYTES_PER_MEMBER = 8 * tarfile.BLOCKSIZE
TAR_BYTES_AT_END = 8 * tarfile.RECORDSIZE


def tar_bound(member_bytes: int, members: int) -> int:
    """The most bytes a tar of `members` members holding `member_bytes` may have."""
    return member_bytes + members * TAR_BYTES_PER_MEMBER + TAR_BYTES_AT_END


class _Bounded:
    """The decompressed archive, refused as soon as it holds more than `limit` bytes:
    a small file that decompresses to gigabytes is stopped there, not read through."""

    def __init__(self, stream: IO[bytes], limit: int) -> None:
        self._stream = stream
        self.limit = limit
        self.read_bytes = 0

    def read(self, size: int = -1) -> bytes:
        wanted = self.limit - self.read_bytes + 1  # one byte more tells "too large"
        data = self._stream.read(wanted if size < 0 else min(size, wanted))
        self.read_bytes += len(data)
        if self.read_bytes > self.limit:
            raise ArchiveError(
                f"the archive decompresses to more than the {self.limit} bytes its manifest "
                "declares (with the tar headers): a compression bomb or an altered archive"
            )
        return data

    def drain(self) -> None:
        """Read what follows the tar's end: only padding may, within the bound."""
        while self.read(1 << 20):
            pass


class ArchiveReader:
    """Reads a backup as a stream: the manifest first, then each table in order."""

    def __init__(self, fileobj: IO[bytes]) -> None:
        # Until the manifest is read, only it may come; then what it declares.
        self._stream = _Bounded(fileobj, tar_bound(MAX_MANIFEST_BYTES, 1))
        try:
            self._tar = tarfile.open(fileobj=self._stream, mode="r|")  # noqa: SIM115 - closed by close()
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise ArchiveError(
                f"not a readable tar archive ({exc}): truncated, damaged, or not a backup"
            ) from None
        self._pending: tarfile.TarInfo | None = None
        self.manifest_bytes, self.manifest = self._read_manifest()
        self.signature = self._read_signature()
        declared = sum(entry.bytes for entry in self.manifest.tables.values())
        self._stream.limit = tar_bound(
            self._stream.read_bytes + declared, len(self.manifest.tables) + 1
        )

    def _next(self) -> tarfile.TarInfo | None:
        try:
            return self._tar.next()
        except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
            raise ArchiveError(f"the archive is truncated or damaged: {exc}") from None

    def _take(self) -> tarfile.TarInfo | None:
        """The next member: the one looked at for a signature, else the tar's next."""
        if self._pending is not None:
            info, self._pending = self._pending, None
            return info
        return self._next()

    def _check(self, info: tarfile.TarInfo, expected: str, bound: int) -> None:
        if info.name != expected:
            raise ArchiveError(
                f"unexpected member {info.name!r} where {expected!r} belongs: not an ESC backup, "
                "or one that was altered (members with paths such as '..' or '/' are refused)"
            )
        if not info.isreg():
            kind = "a symlink" if info.issym() else "a hard link" if info.islnk() else "not a file"
            raise ArchiveError(f"member {info.name!r} is {kind}: only regular files are accepted")
        if info.size > bound:
            raise ArchiveError(
                f"member {info.name!r} declares {info.size} bytes, more than the {bound} allowed"
            )

    def _read_manifest(self) -> tuple[bytes, Manifest]:
        info = self._next()
        if info is None:
            raise ArchiveError("the archive is empty: no manifest.json")
        self._check(info, MANIFEST, MAX_MANIFEST_BYTES)
        data = self._content(info)
        return data, parse_manifest(data)

    def _read_signature(self) -> bytes | None:
        """The signature member's bytes, or None for an unsigned archive (whose first
        data member is then kept for members())."""
        info = self._next()
        if info is not None and info.name == SIGNATURE:
            self._check(info, SIGNATURE, MAX_SIGNATURE_BYTES)
            return self._content(info)
        self._pending = info
        return None

    def _content(self, info: tarfile.TarInfo) -> bytes:
        stream = self._tar.extractfile(info)
        assert stream is not None
        try:
            return stream.read()
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise ArchiveError(f"the archive is truncated or damaged: {exc}") from None

    def members(self) -> Iterator[Member]:
        """Each table's member, in manifest order; then nothing else may follow."""
        for table, entry in self.manifest.tables.items():
            name = member_name(table, self.manifest.format_version)
            info = self._take()
            if info is None:
                raise ArchiveError(f"the archive ends before {name}: it is truncated")
            self._check(info, name, min(entry.bytes, MAX_MEMBER_BYTES))
            if info.size != entry.bytes:
                raise ArchiveError(
                    f"{info.name} holds {info.size} bytes, the manifest says {entry.bytes}"
                )
            stream = self._tar.extractfile(info)
            assert stream is not None
            yield Member(name, table, entry, stream)
        extra = self._take()
        if extra is not None:
            raise ArchiveError(f"unexpected member {extra.name!r} after the last table")
        try:
            self._stream.drain()
        except (EOFError, OSError, ValueError) as exc:
            raise ArchiveError(f"the archive is truncated or damaged: {exc}") from None

    def close(self) -> None:
        self._tar.close()


def decode_json_row(line: bytes, member: Member) -> list[Any]:
    """A row of format version 1: a JSON array of the table's values."""
    try:
        row = json.loads(line)
    except ValueError:
        raise ArchiveError(f"{member.name}: a row is not valid JSON") from None
    width = len(member.entry.columns)
    if not isinstance(row, list) or len(row) != width:
        raise ArchiveError(f"{member.name}: a row does not have {width} values")
    return row
