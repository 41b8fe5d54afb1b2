"""The node API: what the orchestrator of an upgrade, which reaches each node only over
the network, needs of one node: its facts in one answer, a package agent that installs
an uploaded release into the node's own venv (esc.node.installer), and the backups of
its database: taken here, downloaded, uploaded from another node, restored here.

None of these routes is a northbound write, so MAINTENANCE does not refuse them:
installing, backing up and restoring on a node in maintenance is the normal case of an
upgrade. A restore replaces the controller's data as a whole, which is not a write of
it either. Nor do they take an Idempotency-Key, which is kept in that database with its
write (a restore would replace the key's own row): an upload sent again stores the same
file again (a PUT), a backup taken again is another archive, and an install or a
restore is an action on this node whose outcome a client that lost the answer reads
(GET of the install's URL; GET /esc/node/backups and the data itself after a restore).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from esc.api.deps import ControllerDep, require_user
from esc.api.node_facts import STANDALONE, node_facts
from esc.api.node_schemas import (
    BackupIn,
    BackupTaken,
    BackupView,
    InstallIn,
    InstallView,
    NodeView,
    PackageView,
    RestoreIn,
    RestoreView,
)
from esc.ha.role_record import ACTIVE
from esc.node.backups import BACKUP_FILE_FORM, BACKUP_FILE_PATTERN, BackupStore, restore_backup
from esc.node.package_install import STATUS_URL, install_state, package_in_use, start_install
from esc.node.packages import SHA256_PATTERN, PackageStore, release_of_name
from esc.release.numbers import ReleaseNumber
from esc.release.wheel import FILE_NAME_FORM, FILE_NAME_PATTERN

PREFIX = "/esc/node"
# Uploads stream their bodies and bound them themselves (esc.node.uploads).
PACKAGE_UPLOADS = f"{PREFIX}/packages/"
BACKUP_UPLOADS = f"{PREFIX}/backups/"
UPLOADS = (PACKAGE_UPLOADS, BACKUP_UPLOADS)
CHECKSUM_HEADER = "X-Checksum-Sha256"

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
BackupFile = Annotated[
    str,
    Path(
        description=f"The archive's file name: {BACKUP_FILE_FORM}",
        json_schema_extra={"pattern": BACKUP_FILE_PATTERN},
    ),
]
_ARCHIVE_BODY = {
    "requestBody": {
        "required": True,
        "description": "The archive's bytes, as POST /esc/node/backups or escadm backup made it.",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}
_ARCHIVE_ANSWER = {
    200: {
        "description": f"The archive's bytes; its sha256 in {CHECKSUM_HEADER}",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        "headers": {CHECKSUM_HEADER: {"schema": {"type": "string"}}},
    }
}
_WHEEL_BODY = {
    "requestBody": {
        "required": True,
        "description": "The release wheel's bytes, as scripts/build-release makes it.",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


def _store(controller: ControllerDep) -> PackageStore:
    return PackageStore(controller.home.packages)


# The sha256 an upload (a release wheel, a backup archive) is checked against whole.
UploadChecksum = Annotated[
    str,
    Header(
        alias=CHECKSUM_HEADER,
        description="The uploaded file's sha256, 64 hexadecimal digits",
        json_schema_extra={"pattern": SHA256_PATTERN},
    ),
]


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
    checksum: UploadChecksum,
) -> PackageView:
    """Store a release wheel, checked whole before it is kept (else nothing is kept)."""
    await run_in_threadpool(package_in_use, controller.home, release_of_name(file))
    upload = await run_in_threadpool(_store(controller).receive, file, checksum, _declared(request))
    return PackageView(**vars(await _received(request, upload)))


def _declared(request: Request) -> int | None:
    """The size the client announced, if it did."""
    declared = request.headers.get("content-length", "")
    return int(declared) if declared.isdigit() else None


async def _received(request: Request, upload: Any) -> Any:
    """The body streamed into `upload` (esc.node.uploads), checked, kept: what it kept."""
    try:
        async for chunk in request.stream():
            if chunk:
                await run_in_threadpool(upload.write, chunk)
        return await run_in_threadpool(upload.finish)
    finally:
        upload.discard()


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


# backups ------------------------------------------------------------------------------


def _backups(controller: ControllerDep) -> BackupStore:
    return BackupStore(controller.home)


@router.post("/backups", response_model=BackupTaken, status_code=201)
def take_backup(
    controller: ControllerDep,
    response: Response,
    body: Annotated[BackupIn | None, Body()] = None,
) -> BackupTaken:
    """Back up this node's database online, on the active or a standby alike (one
    read-only snapshot), into the node's backups/, signed with its backup key."""
    body = body or BackupIn()
    manager = controller.ha
    role = manager.role if manager is not None else STANDALONE
    backup, result = _backups(controller).take(
        controller.db,
        controller.settings.node.name,
        schema=body.schema_,
        for_release=body.for_release,
    )
    response.headers["Location"] = f"{PREFIX}/backups/{backup.file}"
    return BackupTaken(
        **asdict(backup),
        role=role,
        database_schema=result.database_revision,
        rows=sum(t.rows for t in result.manifest.tables.values()),
        seconds=round(result.seconds, 3),
    )


@router.get("/backups", response_model=list[BackupView])
def list_backups(controller: ControllerDep) -> list[BackupView]:
    """The backups kept on this node, oldest first."""
    return [BackupView(**asdict(b)) for b in _backups(controller).backups()]


@router.get(
    "/backups/{file}",
    response_class=FileResponse,
    responses=_ARCHIVE_ANSWER,  # type: ignore[arg-type]
)
def download_backup(file: BackupFile, controller: ControllerDep) -> FileResponse:
    store = _backups(controller)
    backup = store.get(file)
    return FileResponse(
        store.path(file),
        media_type="application/octet-stream",
        filename=file,
        headers={CHECKSUM_HEADER: backup.sha256},
    )


@router.put(
    "/backups/{file}", response_model=BackupView, status_code=201, openapi_extra=_ARCHIVE_BODY
)
async def put_backup(
    file: BackupFile,
    request: Request,
    controller: ControllerDep,
    checksum: UploadChecksum,
    allow_unsigned: Annotated[
        bool,
        Query(
            description="Keep an archive not signed by this node's backup key (its restore "
            'then needs "allow_unsigned": true too)'
        ),
    ] = False,
) -> BackupView:
    """Store an archive for a restore, checked whole and as escadm restore reads it (its
    manifest, its signature by this node's backup key) before it is kept."""
    upload = await run_in_threadpool(
        _backups(controller).receive,
        file,
        checksum,
        _declared(request),
        allow_unsigned=allow_unsigned,
    )
    return BackupView(**asdict(await _received(request, upload)))


@router.delete("/backups/{file}", status_code=204)
def delete_backup(file: BackupFile, controller: ControllerDep) -> Response:
    _backups(controller).delete(file)
    return Response(status_code=204)


@router.post("/restore", response_model=RestoreView)
def restore(body: RestoreIn, controller: ControllerDep) -> RestoreView:
    """Restore a backup of this node's backups/ as escadm restore does: on the pair's
    active node, the pair running (its engine pauses for the swap, the standby gets the
    data by replication); refused on a standby (naming the active) and on a standalone
    node (which restores stopped, with escadm)."""
    return RestoreView(
        **restore_backup(
            controller.home,
            controller.settings,
            controller.db,
            controller.ha,
            body.file,
            allow_unsigned=body.allow_unsigned,
        )
    )
