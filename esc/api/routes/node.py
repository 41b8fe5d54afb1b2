"""The node API: what the orchestrator of an upgrade, which reaches each node only over
the network, needs of one node: its facts in one answer, and a package agent that
installs an uploaded release into the node's own venv (esc.node.installer).

None of these routes writes the controller's database, so MAINTENANCE does not refuse
them: installing on a node in maintenance is the normal case. Nor do they take an
Idempotency-Key, which is kept in that database with its write: an upload sent again
stores the same wheel again (a PUT), and an install is an action on this node whose
state, GET of the same URL, is what a client that lost the answer reads (one sent
again while the first runs is refused, naming it).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Request, Response
from fastapi.concurrency import run_in_threadpool

from esc.api.deps import ControllerDep, require_user
from esc.api.node_facts import node_facts
from esc.api.node_schemas import InstallIn, InstallView, NodeView, PackageView
from esc.ha.role_record import ACTIVE
from esc.node.package_install import STATUS_URL, install_state, package_in_use, start_install
from esc.node.packages import SHA256_PATTERN, PackageStore, release_of_name
from esc.release.numbers import ReleaseNumber
from esc.release.wheel import FILE_NAME_FORM, FILE_NAME_PATTERN

PREFIX = "/esc/node"
# Uploads stream their bodies and bound them themselves (esc.node.packages).
PACKAGE_UPLOADS = f"{PREFIX}/packages/"

router = APIRouter(prefix=PREFIX, tags=["node"], dependencies=[Depends(require_user)])

PackageFile = Annotated[
    str,
    Path(
        description=f"The release wheel's file name, {FILE_NAME_FORM}",
        # Published, so clients (and the spec) know the rule; checked by the store,
        # whose refusal says what to change.
        json_schema_extra={"pattern": FILE_NAME_PATTERN},
    ),
]
_WHEEL_BODY = {
    "requestBody": {
        "required": True,
        "description": "The release wheel's bytes, as scripts/build-release makes it.",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


def _store(controller: ControllerDep) -> PackageStore:
    return PackageStore(controller.home.packages)


@router.get("", response_model=NodeView)
def node(controller: ControllerDep) -> NodeView:
    """Every fact an upgrade's checks need; a fact that cannot be read says why."""
    return node_facts(controller)


@router.put(
    "/packages/{file}", response_model=PackageView, status_code=201, openapi_extra=_WHEEL_BODY
)
async def put_package(
    file: PackageFile,
    request: Request,
    controller: ControllerDep,
    checksum: Annotated[
        str,
        Header(
            alias="X-Checksum-Sha256",
            description="The wheel's sha256, 64 hexadecimal digits",
            json_schema_extra={"pattern": SHA256_PATTERN},
        ),
    ],
) -> PackageView:
    """Store a release wheel, checked whole before it is kept (else nothing is kept)."""
    await run_in_threadpool(package_in_use, controller.home, release_of_name(file))
    declared = request.headers.get("content-length", "")
    upload = await run_in_threadpool(
        _store(controller).receive, file, checksum, int(declared) if declared.isdigit() else None
    )
    try:
        async for chunk in request.stream():
            if chunk:
                await run_in_threadpool(upload.write, chunk)
        package = await run_in_threadpool(upload.finish)
    finally:
        upload.discard()
    return PackageView(**vars(package))


@router.get("/packages", response_model=list[PackageView])
def list_packages(controller: ControllerDep) -> list[PackageView]:
    return [PackageView(**vars(p)) for p in _store(controller).packages()]


@router.delete("/packages/{file}", status_code=204)
def delete_package(file: PackageFile, controller: ControllerDep) -> Response:
    package_in_use(controller.home, release_of_name(file))
    _store(controller).delete(file)
    return Response(status_code=204)


@router.post("/package/install", response_model=InstallView, status_code=202)
def install_package(body: InstallIn, response: Response, controller: ControllerDep) -> InstallView:
    """Install an uploaded release on this node: its services are stopped, the release
    replaced, started and checked, and the old one put back if the new one fails.
    Refused on a pair's active node. Follow it with GET of the same URL."""
    manager = controller.ha
    state = start_install(
        controller.home,
        controller.settings,
        ReleaseNumber.parse(body.version),
        rollback=body.rollback,
        active=manager is not None and manager.role == ACTIVE,
    )
    response.headers["Location"] = STATUS_URL
    return InstallView(**state)


@router.get("/package/install", response_model=InstallView)
def install_status(controller: ControllerDep) -> InstallView:
    """The last install's state, from its state file: the new release's API answers it."""
    return InstallView(**install_state(controller.home))
