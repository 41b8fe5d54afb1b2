"""The HA pair: this node's role, the planned switchover, and forcing the active role.

These take no Idempotency-Key: each is an action on the node asked, answered with
that node's state, not a write of the pair's data that a commit could keep with its
answer (a switchover moves the role, and the database with it, to the other node).
Their truth is the node's state now: a switchover sent again to the node that handed
the role over is refused there (it is the standby), which is the answer a client
that lost the first one needs, where a replay would tell it nothing new; `escadm`
sends them once.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from esc.api.deps import ControllerDep, require_user
from esc.api.schemas import ForceActiveIn, HaView, RestoreSwapIn, RestoreSwapView, SwitchoverView
from esc.engine.controller import Controller
from esc.errors import Conflict, InvalidRequest

router = APIRouter(prefix="/esc/ha", tags=["ha"], dependencies=[Depends(require_user)])


def _manager(controller: Controller) -> Any:  # esc.ha's RoleManager
    if controller.ha is None:
        raise Conflict("this node is standalone, not one of an HA pair")
    return controller.ha


@router.get("", response_model=HaView)
def ha_role(controller: ControllerDep) -> HaView:
    manager = _manager(controller)
    ha = controller.settings.ha
    return HaView(
        role=manager.role,
        reason=manager.reason,
        node=controller.settings.node.name,
        address=str(ha.address),
        peer=str(ha.peer),
    )


@router.post("/switchover", response_model=SwitchoverView)
def switchover(controller: ControllerDep) -> SwitchoverView:
    """Hand the active role to the in-sync standby (run on the active): no acknowledged
    write lost, transactions in flight resumed there."""
    return SwitchoverView(**_manager(controller).switchover())


@router.post("/force-active", response_model=HaView)
def force_active(body: ForceActiveIn, controller: ControllerDep) -> HaView:
    """The operator's explicit choice on a node in FAULT because it may lack writes the
    lost active acknowledged: take the active role anyway, giving those writes up."""
    if not body.discard_unreplicated:
        raise InvalidRequest(
            "forcing the active role gives up what the lost active did not replicate: "
            "say so with discard_unreplicated=true"
        )
    _manager(controller).force_active()
    return ha_role(controller)


@router.post("/restore", response_model=RestoreSwapView)
def swap_in_restore(body: RestoreSwapIn, controller: ControllerDep) -> RestoreSwapView:
    """The last step of `escadm restore` on the active node: the data it built aside and
    checked replaces the pair's, in one transaction, and the engine resumes on it."""
    return RestoreSwapView(**_manager(controller).swap_in_restore(body.aside))
