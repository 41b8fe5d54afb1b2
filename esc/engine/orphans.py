"""Orphans: instances a VIM holds, tagged as this controller's, with no VM record.

They come from outside the controller's transactions: a restore of a backup taken
before they were made, a record removed by hand. An orphan may be what keeps a
service up, so the controller never deletes one by itself: at the start of its
active role it stops each one (quarantine) and reports it; the operator looks
(`escadm vim orphans`) and deletes it, or leaves it. An instance without this
controller's tags is someone else's and never an orphan: drivers do not list it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select

from esc.db.models import Vm
from esc.db.session import Database
from esc.engine.vims import Vims
from esc.errors import Conflict, InvalidRequest, NotFound, Unavailable
from esc.vim.base import InstanceState, TransientVimError, VimError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Orphan:
    vim: str  # the connection it is on
    vm_id: str
    state: InstanceState
    detail: str = ""


def find_orphans(db: Database, vims: Vims) -> tuple[list[Orphan], list[str]]:
    """The orphans on every connection, and a line per connection that could not be
    asked (it is not left out silently)."""
    with db.read() as session:
        known = set(session.scalars(select(Vm.id)))
    found, unreachable = [], []
    for name in vims.names():
        try:
            vim = vims.get(name)
            for vm_id in vim.list_instances():
                if vm_id not in known:
                    status = vim.status(vm_id)
                    found.append(Orphan(name, vm_id, status.state, status.detail))
        except VimError as exc:
            unreachable.append(f"VIM {name}: {exc}")
    return found, unreachable


def quarantine_orphans(db: Database, vims: Vims) -> list[Orphan]:
    """Stop every orphan that runs (at the active role's start); returns them all."""
    orphans, unreachable = find_orphans(db, vims)
    for problem in unreachable:
        log.warning("orphans not looked for: %s", problem)
    for orphan in orphans:
        if orphan.state is InstanceState.STOPPED:
            continue
        log.warning(
            "VIM %s: instance %s is tagged as this controller's but has no VM record: "
            "quarantined (stopped, kept); see escadm vim orphans",
            orphan.vim,
            orphan.vm_id,
        )
        try:
            vims.get(orphan.vim).quarantine(orphan.vm_id)
        except VimError as exc:
            log.error("VIM %s: could not quarantine %s: %s", orphan.vim, orphan.vm_id, exc)
    return orphans


def delete_orphan(db: Database, vims: Vims, vim_name: str, vm_id: str) -> None:
    """Delete one orphan, as the operator asked; a VM with a record is refused."""
    with db.read() as session:
        if session.get(Vm, vm_id) is not None:
            raise Conflict(
                f"{vm_id} is a VM of a deployment, not an orphan: undeploy or scale its "
                "deployment instead"
            )
    try:
        vim = vims.get(vim_name)
    except VimError as exc:
        raise NotFound(str(exc)) from None
    try:
        if vm_id not in vim.list_instances():
            raise NotFound(f"VIM {vim_name} holds no orphan {vm_id}: see escadm vim orphans")
        vim.delete_vm(vm_id)
    except TransientVimError as exc:
        raise Unavailable(f"VIM {vim_name} cannot answer now: {exc}; retry") from None
    except VimError as exc:
        raise InvalidRequest(f"VIM {vim_name} refused to delete {vm_id}: {exc}") from None
    log.warning("VIM %s: orphan %s deleted by the operator", vim_name, vm_id)
