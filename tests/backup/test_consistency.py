"""Issue must-show: a backup taken while transactions commit is the database at one
moment: row counts as the manifest says, every reference inside the snapshot resolved,
and the rows each transaction wrote either all there or all absent."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from pathlib import Path

from backup_helpers import open_database
from conftest import Node
from sqlalchemy import insert

from esc.backup.archive import ArchiveReader
from esc.backup.compress import open_decompressed
from esc.backup.copytext import split_row
from esc.backup.dump import write_backup
from esc.db.models import (
    Delivery,
    DeliveryState,
    Deployment,
    DeploymentStatus,
    Event,
    Operation,
    RecoveryPolicy,
    Subscription,
    Tenant,
    Transaction,
    TransactionState,
    Vm,
    VmGroup,
    VmState,
)
from esc.db.session import Database

WRITER_SECONDS = 10  # at most; the writer stops as soon as the backups are done
PRELOADED_EVENTS = 10_000  # so that each snapshot takes a while to read
BACKUPS = [".tar.gz", ".tar", ".tar.bz2", ".tar.xz"]


class Writer(threading.Thread):
    """Writes, in one transaction per iteration: a tenant, its deployment, vm_group, VM,
    a transaction and its event; every fifth iteration a subscription and a delivery."""

    def __init__(self, db: Database) -> None:
        super().__init__(name="backup-load-writer", daemon=True)
        self.db = db
        self.done = threading.Event()
        self.iterations = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        deadline = time.monotonic() + WRITER_SECONDS
        try:
            while not self.done.is_set() and time.monotonic() < deadline:
                self.write_one(self.iterations)
                self.iterations += 1
        except BaseException as exc:  # reported by the test
            self.error = exc

    def write_one(self, i: int) -> None:
        with self.db.write() as session:
            tenant = Tenant(name=f"tenant-{i}")
            session.add(tenant)
            session.flush()
            deployment = Deployment(
                tenant_id=tenant.id,
                name=f"dep-{i}",
                data_model_version=1,
                status=DeploymentStatus.ACTIVE,
                descriptor={},
            )
            session.add(deployment)
            session.flush()
            group = VmGroup(
                deployment_id=deployment.id,
                name="g",
                image="healthy",
                flavor="m1.tiny",
                min_active=1,
                max_active=1,
                elastic=False,
                desired_count=1,
                recovery_policy=RecoveryPolicy.REBOOT_THEN_REDEPLOY,
                bootup_time=10.0,
                recovery_wait_time=5.0,
                max_recovery_attempts=3,
                kpis=[],
                rules=[],
                day0_config={},
            )
            session.add(group)
            session.flush()
            vm = Vm(
                vm_group_id=group.id,
                deployment_id=deployment.id,
                name=f"dep-{i}_g_0",
                ordinal=0,
                state=VmState.ALIVE,
            )
            tx = Transaction(
                operation=Operation.DEPLOY,
                state=TransactionState.SUCCESS,
                tenant=tenant.name,
                deployment_name=deployment.name,
                deployment_id=deployment.id,
                request={"i": i},
            )
            session.add_all([vm, tx])
            session.flush()
            event = Event(
                type="SERVICE_ALIVE",
                status="SUCCESS",
                message=f"iteration {i}",
                tenant=tenant.name,
                deployment_name=deployment.name,
                deployment_id=deployment.id,
                transaction_id=tx.id,
                vm_id=vm.id,
                vm_name=vm.name,
            )
            session.add(event)
            session.flush()
            if i % 5 == 0:
                sub = Subscription(callback_url=f"http://127.0.0.1:9/{i}")
                session.add(sub)
                session.flush()
                session.add(
                    Delivery(
                        subscription_id=sub.id,
                        event_id=event.id,
                        ordering_key=f"{tenant.name}/{deployment.name}",
                        state=DeliveryState.PENDING,
                    )
                )


def read_archive(path: Path) -> tuple[dict[str, int], dict[str, list[dict]]]:
    """The manifest's row counts and every row, through the reader a restore uses."""
    with contextlib.closing(open_decompressed(str(path))) as stream:
        reader = ArchiveReader(stream)
        try:
            declared = {t: e.rows for t, e in reader.manifest.tables.items()}
            rows: dict[str, list[dict]] = {}
            for member in reader.members():
                columns = member.entry.columns
                rows[member.table] = [
                    dict(zip(columns, split_row(line, len(columns)), strict=True))
                    for line in member.lines()
                ]
        finally:
            reader.close()
    return declared, rows


def check_snapshot(path: Path) -> dict[str, int]:
    declared, rows = read_archive(path)
    found = {table: len(r) for table, r in rows.items()}
    assert found == declared, f"{path.name}: rows differ from the manifest"

    def ids(table: str) -> set:
        return {r["id"] for r in rows[table]}

    tenants, deployments, groups = ids("tenants"), ids("deployments"), ids("vm_groups")
    events, subscriptions, transactions = ids("events"), ids("subscriptions"), ids("transactions")
    assert all(r["vm_group_id"] in groups for r in rows["vms"])
    assert all(r["deployment_id"] in deployments for r in rows["vm_groups"])
    assert all(r["tenant_id"] in tenants for r in rows["deployments"])
    assert all(r["event_id"] in events for r in rows["deliveries"])
    assert all(r["subscription_id"] in subscriptions for r in rows["deliveries"])
    assert all(r["transaction_id"] in transactions for r in rows["events"] if r["transaction_id"])
    # One iteration wrote one of each in one transaction: a consistent snapshot has them
    # all in equal numbers (a torn one has more of the tables it read last).
    written = {t: found[t] for t in ("tenants", "deployments", "vm_groups", "vms", "transactions")}
    assert len(set(written.values())) == 1, f"{path.name}: torn snapshot {written}"
    with_tx = Counter(bool(r["transaction_id"]) for r in rows["events"])[True]
    assert with_tx == found["transactions"]
    assert found["deliveries"] == found["subscriptions"]
    return found


def preload_events(db: Database) -> None:
    rows = [
        {
            "type": "VM_ALIVE",
            "status": "SUCCESS",
            "message": "preloaded " + "x" * 100,
            "tenant": "old",
            "deployment_name": "old",
            "deployment_id": None,
            "transaction_id": None,
        }
        for _ in range(PRELOADED_EVENTS)
    ]
    with db.write() as session:
        session.execute(insert(Event), rows)


def test_backups_under_load_are_consistent(node: Node, tmp_path: Path) -> None:
    db = open_database(node)
    try:
        preload_events(db)
        writer = Writer(db)
        writer.start()
        taken: list[tuple[Path, int, int]] = []
        try:
            while writer.iterations < 5 and writer.is_alive():
                time.sleep(0.01)  # the writer is under way before the first snapshot
            for n, suffix in enumerate(BACKUPS):
                if not writer.is_alive():
                    break
                before = writer.iterations
                path = write_backup(db, tmp_path / f"load-{n}{suffix}", "load").path
                taken.append((path, before, writer.iterations))
        finally:
            writer.done.set()
            writer.join(WRITER_SECONDS + 5)
        assert not writer.is_alive()
        assert writer.error is None, repr(writer.error)
    finally:
        db.dispose()

    assert len(taken) >= 3, "the writer stopped before three backups were taken"
    # The writer committed while snapshots were being read (else this shows nothing).
    assert any(after > before for _, before, after in taken), taken
    snapshots = []
    for path, before, after in taken:
        found = check_snapshot(path)
        # Between what was committed when it began and when it ended (+1: a commit
        # may precede the counter's increment).
        assert before <= found["tenants"] <= after + 1, (path.name, before, found, after)
        snapshots.append(found["tenants"])
    assert len(set(snapshots)) > 1  # the backups saw different moments
