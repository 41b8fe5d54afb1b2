"""A PostgreSQL database's data built aside in a schema of its own, and swapped in.

A restore builds the new data in schema `esc_restoring` of the node's
database while the node's own data stays in `public`, then swaps the two by
renaming schemas in one transaction: every reader sees the old data or the
new, never a mix, and on a pair the one commit replicates to the standby
like any other. The previous data is kept as schema `esc_before_restore`.

The aside schema carries a marker (its comment) written only once its rows
passed every check, naming the restore that built it; the swap takes only
the schema it is told the marker of. So a schema a killed restore left half
built, or one another restore replaced meanwhile, is never swapped in.

Swapped in on a node of a pair (`keep_lease`), the active role's lease row
is the pair's, not the backup's: the backup's epoch may be lower than one
already handed out, and a handover it recorded would let the standby take
over without fencing.
"""

from __future__ import annotations

import re
import uuid

from sqlalchemy import Connection

from esc.db.models import ActiveLease

ASIDE_SCHEMA = "esc_restoring"
KEPT_SCHEMA = "esc_before_restore"
_MARKER = "esc restore {token}: checked"
# Tokens are made by new_token(); anything else is refused before it reaches SQL.
_TOKEN = re.compile(r"^[0-9a-f]{32}$")


class AsideError(Exception):
    """There is no checked aside schema of that restore: nothing was swapped."""


def new_token() -> str:
    return uuid.uuid4().hex


def _marker(token: str) -> str:
    if not _TOKEN.match(token):
        raise AsideError(f"{token!r} is not a restore's token")
    return _MARKER.format(token=token)


def mark_checked(connection: Connection, token: str) -> None:
    """Mark the aside schema as complete and checked by the restore `token`."""
    connection.exec_driver_sql(f"COMMENT ON SCHEMA {ASIDE_SCHEMA} IS '{_marker(token)}'")


def swap_in(connection: Connection, token: str, *, keep_lease: bool) -> None:
    """Put the aside schema marked by `token` in place of `public`, in the caller's
    transaction (commit it to make the swap, roll it back to change nothing)."""
    wanted = _marker(token)
    found = connection.exec_driver_sql(
        "SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace "
        f"WHERE nspname = '{ASIDE_SCHEMA}'"
    ).first()
    if found is None:
        raise AsideError(f"no schema {ASIDE_SCHEMA}: the restore's data is gone; run it again")
    if found[0] != wanted:
        raise AsideError(
            f"schema {ASIDE_SCHEMA} is not the one this restore built and checked (another "
            "restore replaced it, or one was killed half-way): run the restore again"
        )
    for statement in (
        f"DROP SCHEMA IF EXISTS {KEPT_SCHEMA} CASCADE",
        f"ALTER SCHEMA public RENAME TO {KEPT_SCHEMA}",
        f"ALTER SCHEMA {ASIDE_SCHEMA} RENAME TO public",
        "COMMENT ON SCHEMA public IS NULL",  # the marker goes: it is swapped in only once
    ):
        connection.exec_driver_sql(statement)
    if keep_lease:
        table = ActiveLease.__tablename__
        columns = ", ".join(f'"{c.name}"' for c in ActiveLease.__table__.columns)
        connection.exec_driver_sql(f'DELETE FROM public."{table}"')
        connection.exec_driver_sql(
            f'INSERT INTO public."{table}" ({columns}) SELECT {columns} '
            f'FROM {KEPT_SCHEMA}."{table}"'
        )
        connection.exec_driver_sql(f'UPDATE public."{table}" SET handover_to = NULL')
