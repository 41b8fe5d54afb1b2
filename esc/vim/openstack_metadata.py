"""How the openstack driver keeps a VM's metadata (VimDriver.set_vm_metadata) in its
nova server's metadata.

A server's nova metadata is one flat map that the driver's own tags
(`esc-controller`, `esc-vm-id`) share with whatever the project's users put there,
and nova holds values of at most 255 characters. So a key KEY is kept under
`esc.meta.KEY`: no tag and no one else's key can be one (KEY has no dot), and a
user's key shows as one of ESC's. A value that fits is kept whole there; a longer
one (a node's recorded parameters are) in parts, `esc.meta.KEY.1` to
`esc.meta.KEY.N`, with their count in `esc.meta.KEY.parts`.

Nova sets any number of keys in one request, in one save, but deletes one key per
request. So a change is one request that writes the value's new form, then the
deletes of what is left of its old form, the whole value first, the count next,
the parts last: a count names parts that are there, and a reader between two
requests reads the old value or the new one, never a mix.
"""

from __future__ import annotations

from collections.abc import Mapping

from esc.vim.base import METADATA_KEY

PREFIX = "esc.meta."
COUNT = ".parts"
# The longest value nova keeps (its API's limit, in characters).
VALUE_LIMIT = 255


def _whole(key: str) -> str:
    return PREFIX + key


def _count(key: str) -> str:
    return PREFIX + key + COUNT


def _parts(key: str) -> str:
    """What the names of `key`'s parts begin with (a part's number follows)."""
    return f"{PREFIX}{key}."


def _part(key: str, index: int) -> str:
    return f"{_parts(key)}{index}"


def _value(metadata: Mapping[str, str], key: str) -> str | None:
    count = metadata.get(_count(key), "")
    if count.isdigit() and int(count) > 0:
        parts = [metadata.get(_part(key, i)) for i in range(1, int(count) + 1)]
        if all(p is not None for p in parts):
            return "".join(p or "" for p in parts)
    return metadata.get(_whole(key))


def decode(metadata: Mapping[str, str]) -> dict[str, str]:
    """The driver's metadata, by key, that a server's nova metadata holds."""
    keys = {k.removeprefix(PREFIX).split(".", 1)[0] for k in metadata if k.startswith(PREFIX)}
    found = {}
    for key in sorted(keys):
        value = _value(metadata, key) if METADATA_KEY.match(key) else None
        if value is not None:
            found[key] = value
    return found


def _form(key: str, value: str) -> dict[str, str]:
    """The nova keys and values that hold `value` of `key`."""
    if len(value) <= VALUE_LIMIT:
        return {_whole(key): value}
    parts = [value[i : i + VALUE_LIMIT] for i in range(0, len(value), VALUE_LIMIT)]
    return {
        _count(key): str(len(parts)),
        **{_part(key, i): part for i, part in enumerate(parts, 1)},
    }


def _stored(metadata: Mapping[str, str], key: str) -> list[str]:
    """The nova keys that hold something of `key`, in the order they are deleted."""
    prefix = _parts(key)
    parts = sorted(
        (k for k in metadata if k.startswith(prefix) and k.removeprefix(prefix).isdigit()),
        key=lambda k: int(k.removeprefix(prefix)),
    )
    return [k for k in (_whole(key), _count(key)) if k in metadata] + parts


def plan(
    metadata: Mapping[str, str], changes: Mapping[str, str | None]
) -> tuple[dict[str, str], list[str]]:
    """What makes `changes` (None: remove the key) on a server whose nova metadata is
    `metadata`: the keys to set in one request, then the keys to delete, in order.
    Nothing for a change that is made already."""
    writes: dict[str, str] = {}
    deletes: list[str] = []
    for key, value in changes.items():
        new = {} if value is None else _form(key, str(value))
        writes.update({k: v for k, v in new.items() if metadata.get(k) != v})
        deletes += [k for k in _stored(metadata, key) if k not in new]
    return writes, deletes
