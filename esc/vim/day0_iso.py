"""A VM's day-0 files as one ISO 9660 image: the CD-ROM a VNF reads its first
configuration from.

One image carries any number of files under their own names (Rock Ridge and
Joliet keep them exactly; the plain ISO 9660 names are an upper-case fallback).
Its volume label is `cidata`, so a cloud-init image given files named
`user-data` and `meta-data` reads them as its NoCloud data source, while a VNF
that looks for one named file on its CD (a CSR 1000v's iosxe_config.txt, an
ASAv's day0-config) finds it at the root.
"""

from __future__ import annotations

import io
import re

import pycdlib

VOLUME_LABEL = "cidata"
# What a day-0 file may be called: a plain name, no directory, not hidden.
FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}\Z")
_NOT_ISO_CHARACTER = re.compile(r"[^A-Z0-9_.]")


class Day0Error(ValueError):
    """A day-0 file name the image cannot hold; the message names it."""


def day0_iso(files: dict[str, str]) -> bytes:
    """The ISO image holding `files` (name -> text, written as UTF-8) at its root."""
    image = pycdlib.PyCdlib()
    image.new(interchange_level=4, joliet=3, rock_ridge="1.09", vol_ident=VOLUME_LABEL)
    taken: set[str] = set()
    for name in sorted(files):
        if not FILE_NAME.match(name):
            raise Day0Error(
                f"day-0 file name {name!r} cannot go on the day-0 CD: use letters, digits, "
                "'.', '_' and '-' (no directory, at most 100)"
            )
        data = str(files[name]).encode()
        image.add_fp(
            io.BytesIO(data),
            len(data),
            iso_path=f"/{_iso_name(name, taken)};1",
            rr_name=name,
            joliet_path=f"/{name}",
        )
    out = io.BytesIO()
    image.write_fp(out)
    image.close()
    return out.getvalue()


def _iso_name(name: str, taken: set[str]) -> str:
    """The plain ISO 9660 name: upper case, other characters as '_', unique."""
    base = _NOT_ISO_CHARACTER.sub("_", name.upper())
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        candidate = f"{base}_{n}"
    taken.add(candidate)
    return candidate
