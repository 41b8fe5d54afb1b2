"""A forged archive whose checksums hold but whose rows break what the controller
relies on (a VM's copy of its deployment, a dangling reference, a second schema
revision, a name the API would refuse) is refused naming the table, the row and the
problem, on both backends, the node's database unchanged."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
from backup_helpers import Archive, DatabaseState, open_database, url_of, write_tar
from conftest import Node, escadm

from esc.backup.archive import member_name
from esc.backup.dump import write_backup
from esc.backup.restore import RestoreError, restore
from esc.db.models import (
    CustomScript,
    Deployment,
    DeploymentStatus,
    RecoveryPolicy,
    Tenant,
    Vm,
    VmGroup,
    VmState,
)

TENANT = "00000000-0000-4000-8000-00000000000a"
DEPLOYMENTS = ("00000000-0000-4000-8000-0000000000d1", "00000000-0000-4000-8000-0000000000d2")
GROUPS = ("00000000-0000-4000-8000-0000000000a1", "00000000-0000-4000-8000-0000000000a2")
VMS = ("00000000-0000-4000-8000-0000000000f1", "00000000-0000-4000-8000-0000000000f2")


def seed(node: Node) -> None:
    db = open_database(node)
    try:
        with db.write() as session:
            session.add(Tenant(id=TENANT, name="demo"))
            session.add(CustomScript(name="ok.sh", content="#!/bin/sh\nexit 0\n", timeout=5.0))
            for n, (deployment, group, vm) in enumerate(zip(DEPLOYMENTS, GROUPS, VMS, strict=True)):
                session.add(
                    Deployment(
                        id=deployment,
                        tenant_id=TENANT,
                        name=f"web{n}",
                        data_model_version=1,
                        status=DeploymentStatus.ACTIVE,
                        descriptor={},
                    )
                )
                session.add(
                    VmGroup(
                        id=group,
                        deployment_id=deployment,
                        name="g",
                        image="img",
                        flavor="small",
                        min_active=1,
                        max_active=1,
                        desired_count=1,
                        recovery_policy=RecoveryPolicy.REBOOT_ONLY,
                        bootup_time=10.0,
                        recovery_wait_time=10.0,
                        max_recovery_attempts=3,
                    )
                )
                session.add(
                    Vm(
                        id=vm,
                        vm_group_id=group,
                        deployment_id=deployment,
                        name=f"web{n}_g_0",
                        ordinal=0,
                        state=VmState.ALIVE,
                    )
                )
    finally:
        db.dispose()


Rows = list[dict[str, bytes]]


def edited(archive: Archive, table: str, change: Callable[[Rows], Rows]) -> Archive:
    """The archive with one table's rows changed, its manifest entry recomputed."""
    columns = archive.manifest["tables"][table]["columns"]
    lines = archive.content(table).splitlines()
    rows = [dict(zip(columns, line.split(b"\t"), strict=True)) for line in lines]
    data = b"".join(b"\t".join(r[c] for c in columns) + b"\n" for r in change(rows))
    return archive.replaced(table, data, recompute=True)


def setting(column: str, value: bytes, where: str, equals: bytes) -> Callable[[Rows], Rows]:
    def change(rows: Rows) -> Rows:
        return [dict(r, **{column: value}) if r[where] == equals else r for r in rows]

    return change


def with_alembic_version(archive: Archive) -> Archive:
    data = b"9999\n"
    manifest = dict(archive.manifest)
    manifest["tables"] = {
        **manifest["tables"],
        "alembic_version": {
            "columns": ["version_num"],
            "rows": 1,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        },
    }
    return Archive(manifest, [*archive.members, (member_name("alembic_version"), data)])


CASES: dict[str, tuple[Callable[[Archive], Archive], list[str]]] = {
    "vm-in-another-deployment": (
        lambda a: edited(
            a, "vms", setting("deployment_id", DEPLOYMENTS[1].encode(), "id", VMS[0].encode())
        ),
        ["table vms", VMS[0], "deployment_id", DEPLOYMENTS[0], "vm_groups"],
    ),
    "vm-group-of-no-deployment": (
        lambda a: edited(
            a,
            "vm_groups",
            setting(
                "deployment_id", b"00000000-0000-4000-8000-000000000bad", "id", GROUPS[0].encode()
            ),
        ),
        ["vm_groups", "deployment"],
    ),
    "forged-schema-revision": (with_alembic_version, ["alembic_version", "schema_revision"]),
    "nul-in-a-tenant-name": (
        lambda a: edited(a, "tenants", setting("name", b"de\x00mo", "id", TENANT.encode())),
        ["tenants"],
    ),
    "deployment-name-the-api-refuses": (
        lambda a: edited(
            a, "deployments", setting("name", b"../web", "id", DEPLOYMENTS[0].encode())
        ),
        ["table deployments", DEPLOYMENTS[0], "'../web' is not a valid name"],
    ),
    "script-the-api-refuses": (
        lambda a: edited(a, "custom_scripts", setting("content", b"exit 0", "name", b"ok.sh")),
        ["table custom_scripts", "'ok.sh'", "interpreter line"],
    ),
}


@pytest.fixture
def good(node: Node, tmp_path: Path) -> Archive:
    seed(node)
    db = open_database(node)
    try:
        path = write_backup(db, tmp_path / "good.tar", "good").path
    finally:
        db.dispose()
    return Archive.read(path)


@pytest.mark.parametrize("case", list(CASES))
def test_an_inconsistent_archive_is_refused(
    case: str, node: Node, good: Archive, tmp_path: Path
) -> None:
    forge, words = CASES[case]
    archive = write_tar(tmp_path / "forged.tar.gz", forge(good).entries(), "gz")
    url = url_of(node)
    before = DatabaseState.of(url)

    with pytest.raises(RestoreError) as refused:
        restore(node.home, node.settings, archive, allow_unsigned=True)

    message = str(refused.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    before.assert_unchanged(url)


def test_the_consistent_archive_restores(node: Node, good: Archive, tmp_path: Path) -> None:
    archive = write_tar(tmp_path / "same.tar.gz", good.entries(), "gz")
    result = restore(node.home, node.settings, archive, allow_unsigned=True)
    assert result.rows["vms"] == 2


def test_a_forged_schema_revision_through_the_cli(
    node: Node, good: Archive, tmp_path: Path
) -> None:
    archive = write_tar(tmp_path / "forged.tar.gz", with_alembic_version(good).entries(), "gz")
    url = url_of(node)
    before = DatabaseState.of(url)
    result = escadm("restore", "--file", str(archive), "--allow-unsigned", home=node.home.root)
    assert result.returncode == 1, result.stderr
    assert "alembic_version" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) <= 2
    before.assert_unchanged(url)
