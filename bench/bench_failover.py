"""Failover and switchover of an ESC pair, against Patroni in the same run.

    sudo .venv/bin/python bench/bench_failover.py [--host-down 30] [--switchovers 10]
        [--patroni-runs 5] [--no-patroni] [--no-write] [--json FILE]

An ESC pair runs in a network-namespace lab (198.18.61.0/24) as tests/ha sets it up:
`escadm init --ha` on two test hosts, the lab's node provider, `escadm start`. A
client in the root namespace writes through the VIP (`POST /v0/tenants` every
10 ms, a new connection after any failure). Each host-down run takes the active's
link down and SIGKILLs everything in its namespace at a random moment; each
switchover runs `escadm switchover` on the active. The figures are those of the
Patroni peer's client (failover_client.py), whose JSON fields they reuse:
failover_s (fault to the first write acknowledged by the other node), max_gap_s
(the longest time between two acknowledged writes around the fault), lost
(acknowledged writes missing on the new active). After each host-down run the old
active is powered on and started, and rejoins as the standby by itself.

Beside it, during each fault, a second client writes to the pair's PostgreSQL itself,
as the peer's client does: an INSERT every 10 ms into a table of its own
(failover_bench_writes in database postgres) through libpq's multi-host string
`host=N1,N2 target_session_attrs=read-write` with the peer's timeouts, a new
connection after any failure, logging in as the nodes do (role replicator, the
secret of the node's data/pgsql.passfile) from the gateway address, which the pair
admits through `[ha] pg_clients`. Its acks name the node by `inet_server_addr()`.

And a deploy of two slow-booting VMs on the lab's VIM host (the lab's third host) is
in flight at each fault: posted through the VIP, IN_PROGRESS when the fault comes,
then awaited to its end (SUCCESS or not, how often it was resumed) and undeployed,
so that VMs do not pile up.

The Patroni peer (../shared/peers/patroni/setup-and-run.sh, moved to 198.18.7.0/24)
runs in the same invocation, after ESC, so docs/benchmarks.md gives ratios from one
run: noisy machines make only same-run ratios comparable.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "tests"), str(ROOT / "tests" / "ha")]

from esc_pair import Node, Pair, wait_for  # noqa: E402
from lab import Lab  # noqa: E402
from report import write_section  # noqa: E402
from writes import DbWriteLoad, WriteLoad, figures  # noqa: E402

from esc.config import NodeHome  # noqa: E402
from esc.ha.pgsql import REPLICATION_ROLE, Cluster  # noqa: E402

NET = "198.18.61.0/24"
PEER = ROOT.parent / "shared" / "peers" / "patroni" / "setup-and-run.sh"
PEER_NET = "198.18.7"
DB_TABLE = "failover_bench_writes"
# The peer's client's settings, so that the database-level figures compare: libpq
# spends at most 2 s (its floor) on a host that does not answer, and a write to a
# dead host is given up after 2 s instead of hanging on TCP retransmissions.
DB_TIMEOUTS = {
    "connect_timeout": 2,
    "tcp_user_timeout": 2000,
    "keepalives": 1,
    "keepalives_idle": 1,
    "keepalives_interval": 1,
    "keepalives_count": 2,
}
# Each fault's ids start here times its number: no two faults write the same id.
IDS_PER_FAULT = 1_000_000
# Its VMs answer their health check BOOT_S seconds after they start: long enough that
# the deploy is still in progress when the fault comes (at most 2 s after IN_PROGRESS),
# short enough not to lengthen a fault much.
BOOT_S = 5
IN_FLIGHT = """
tenant: inflight
deployment:
  name: {name}
  vm_groups:
    - name: g
      image: 'slow-boot:{boot}'
      flavor: m1.tiny
      bootup_time: 60
      scaling: {{min_active: 2, max_active: 2}}
"""


def db_conninfo(pair: Pair) -> str:
    """The pair's PostgreSQL as a client outside it reaches it: both nodes listed, libpq
    finds the primary; the nodes' own login (the replication role and its passfile)."""
    home = NodeHome(pair.nodes[0].home)
    cluster = Cluster(home, home.load().ha)
    return make_conninfo(
        host=",".join(node.address for node in pair.nodes),
        port=cluster.port,
        dbname="postgres",
        user=REPLICATION_ROLE,
        passfile=str(cluster.secret_file),
        target_session_attrs="read-write",
        **DB_TIMEOUTS,
    )


def make_db_table(pair: Pair) -> None:
    """The database client's table, made once on the active's primary (as superuser,
    over its socket); it replicates like any other row. Not one of ESC's tables, and
    not in ESC's database."""
    home = NodeHome(pair.active().home)
    with Cluster(home, home.load().ha).connect() as conn:
        table = sql.Identifier(DB_TABLE)
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (id bigint PRIMARY KEY, host text NOT NULL,"
                " t timestamptz NOT NULL DEFAULT clock_timestamp())"
            ).format(table)
        )
        conn.execute(
            sql.SQL("GRANT SELECT, INSERT ON {} TO {}").format(
                table, sql.Identifier(REPLICATION_ROLE)
            )
        )


def _transaction(pair: Pair, tx_id: str) -> dict | None:
    """The transaction as the active shows it, None while no node answers."""
    try:
        with pair.client() as client:
            response = client.get(f"/v0/transactions/{tx_id}")
            response.raise_for_status()
            return response.json()
    except httpx.HTTPError:
        return None


def start_deploy(pair: Pair, name: str) -> str:
    with pair.client() as client:
        accepted = client.post(
            "/v0/deployments",
            content=IN_FLIGHT.format(name=name, boot=BOOT_S),
            headers={"content-type": "application/yaml"},
        )
    assert accepted.status_code == 202, accepted.text
    tx_id = accepted.json()["transaction_id"]
    wait_for(
        lambda: (_transaction(pair, tx_id) or {}).get("state") == "IN_PROGRESS",
        30,
        f"the deploy {name} runs",
    )
    return tx_id


def _epoch(stamp: str | None) -> float | None:
    if not stamp:
        return None
    moment = datetime.fromisoformat(stamp)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def deploy_ended(pair: Pair, name: str, tx_id: str, state_at_fault: str, fault_at: float) -> dict:
    """How the deploy in flight at the fault ended, on whichever node is active."""
    ended = wait_for(
        lambda: (t := _transaction(pair, tx_id)) and t["state"] in ("SUCCESS", "FAILED") and t,
        180,
        f"the deploy {name} ends\n{pair.logs()}",
    )
    finished = _epoch(ended.get("finished_at"))
    return {
        "state_at_fault": state_at_fault,
        "state": ended["state"],
        "resumes": ended["resumes"],
        "error": ended["error"],
        "ended_after_fault_s": round(finished - fault_at, 3) if finished else None,
    }


def undeploy(pair: Pair, name: str) -> str | None:
    """Start removing the deployment (its VMs with it); its transaction id, or None
    when there is nothing to remove."""
    with pair.client() as client:
        response = client.delete(f"/v0/tenants/inflight/deployments/{name}")
    if response.status_code == 404:
        return None
    assert response.status_code == 202, response.text
    return response.json()["transaction_id"]


def undeploy_ended(pair: Pair, tx_id: str | None) -> str:
    if tx_id is None:
        return "nothing to remove"
    return wait_for(
        lambda: (t := _transaction(pair, tx_id)) and t["state"] in ("SUCCESS", "FAILED") and t,
        120,
        "the undeploy ends",
    )["state"]


def _db_figures(db: DbWriteLoad, fault_at: float) -> dict:
    try:
        verified_on, present = db.present()
        result = figures(db, fault_at, present).as_json()
    except (AssertionError, psycopg.Error) as error:
        return {"failover_s": None, "max_gap_s": None, "lost": None, "error": str(error)}
    result["verified_on"] = verified_on
    result["errors"] = db.errors
    return result


def one_fault(pair: Pair, old: Node, kind: str, index: int, number: int, conninfo: str) -> dict:
    """One fault of the active `old` (the caller knows it: asking both nodes' status
    costs seconds per fault)."""
    began = time.monotonic()
    label = f"{kind}-{index}"
    load = WriteLoad(pair.api_url, ("admin", pair.password), prefix=f"{kind[:2]}{index}")
    db = DbWriteLoad(conninfo, DB_TABLE, first_id=number * IDS_PER_FAULT)
    deployment = f"web-{label}"
    load.start()
    db.start()
    try:
        load.wait_acks(30, 60)
        db.wait_acks(30, 60)
        tx_id = start_deploy(pair, deployment)
        time.sleep(random.uniform(0, 2.0))  # not always the same phase of the cycles
        state_at_fault = (_transaction(pair, tx_id) or {}).get("state", "unknown")
        fault_at = time.time()
        phases = {"before_fault": time.monotonic() - began}
        if kind == "host-down":
            pair.lab.host_down(old.ns)
        else:
            pair.ok(old, "switchover")
        wait_for(
            lambda: any(a.acked > fault_at and a.node != old.name for a in load.acks),
            60,
            f"a write acknowledged by the other node after {kind}",
        )
        # The database client sees the new primary on its own clock (its libpq timeouts);
        # not finding it is a figure of this run, not the end of the benchmark.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(
            a.acked > fault_at and a.node != old.address for a in db.acks
        ):
            time.sleep(0.05)
        time.sleep(1.0)
    finally:
        load.stop()
        db.stop()
    result = figures(load, fault_at, pair.tenants()).as_json()
    result["label"] = label
    result["db"] = _db_figures(db, fault_at)
    phases["fault_to_figures"] = time.time() - fault_at
    result["in_flight"] = deploy_ended(pair, deployment, tx_id, state_at_fault, fault_at)
    phases["deploy_end"] = time.monotonic() - began - sum(phases.values())
    # The undeploy runs on the new active while the old one comes back: both take
    # seconds, and neither waits for the other.
    removing = undeploy(pair, deployment)
    if kind == "host-down":
        pair.power_on_and_start(old)
    pair.wait_pair(active=pair.other(old), timeout=180)
    phases["old_active_back"] = time.monotonic() - began - sum(phases.values())
    result["in_flight"]["undeploy"] = undeploy_ended(pair, removing)
    result["seconds"] = round(time.monotonic() - began, 1)
    # Where a fault's time goes, for keeping the whole run short.
    result["phases_s"] = {name: round(value, 1) for name, value in phases.items()}
    print(json.dumps(result), flush=True)
    return result


def run_esc(host_down: int, switchovers: int) -> list[dict]:
    base = Path(tempfile.mkdtemp(prefix="bf-"))
    base.chmod(0o711)
    results = []
    with Lab(3, net=NET, prefix="bf") as lab:
        pair = Pair(lab, base, kad_vri=67, pg_clients=(f"{lab.gateway}/32",))
        try:
            pair.start_agent()
            pair.start_vim_host()
            pair.create()
            make_db_table(pair)
            conninfo = db_conninfo(pair)
            faults = [("host-down", i) for i in range(1, host_down + 1)]
            faults += [("switchover", i) for i in range(1, switchovers + 1)]
            active = pair.nodes[0]  # create() waits for it to be the active
            for number, (kind, index) in enumerate(faults, start=1):
                results.append(one_fault(pair, active, kind, index, number, conninfo))
                active = pair.other(active)  # one_fault waited for that pair
        except BaseException:
            print(f"the nodes' homes and logs are kept in {base}", file=sys.stderr)
            raise
        finally:
            pair.stop()
    shutil.rmtree(base, ignore_errors=True)  # kept when a run failed, for its logs
    return results


def run_patroni(runs: int) -> list[dict]:
    out = Path(tempfile.mkdtemp(prefix="patroni-results-"))
    env = {
        **os.environ,
        "RESULTS_DIR": str(out),
        "PFB_NET": PEER_NET,
        "RUNS": str(runs),
        "SWITCHOVER_RUNS": str(max(1, runs // 2)),
        "SCENARIOS": "aggressive switchover",
    }
    subprocess.run(["bash", str(PEER)], env=env, check=True, timeout=3600)
    results = []
    for path in sorted(out.rglob("*.json")):
        data = json.loads(path.read_text())
        data["label"] = path.stem
        results.append(data)
    shutil.rmtree(out, ignore_errors=True)
    return results


def _stats(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return statistics.median(ordered), p99, ordered[-1]


def _row(name: str, runs: list[dict]) -> str:
    """One table row; a run without figures (its client never saw the new primary)
    counts in the runs column as not ok."""
    ok = [r for r in runs if r.get("failover_s") is not None]
    count = f"{len(ok)}" if len(ok) == len(runs) else f"{len(ok)} of {len(runs)}"
    if not ok:
        return f"| {name} | {count} | - | - | - |"
    f50, f99, fmax = _stats([r["failover_s"] for r in ok])
    g50, g99, gmax = _stats([r["max_gap_s"] for r in ok])
    lost = sum(int(r.get("lost") or 0) for r in ok)
    return (
        f"| {name} | {count} | {f50:.2f} / {f99:.2f} / {fmax:.2f} | "
        f"{g50:.2f} / {g99:.2f} / {gmax:.2f} | {lost} |"
    )


def _ratio(theirs: list[dict], ours: list[dict], key: str) -> float | None:
    theirs = [r[key] for r in theirs if r.get(key) is not None]
    ours = [r[key] for r in ours if r.get(key) is not None]
    if not theirs or not ours:
        return None
    return statistics.median(theirs) / statistics.median(ours)


def _in_flight(runs: list[dict]) -> str:
    flights = [r["in_flight"] for r in runs if "in_flight" in r]
    done = [f for f in flights if f["state"] == "SUCCESS"]
    return f"{len(done)} of {len(flights)}"


def report(esc: list[dict], patroni: list[dict], seconds: float, esc_seconds: float) -> str:
    down = [r for r in esc if r["label"].startswith("host-down")]
    over = [r for r in esc if r["label"].startswith("switchover")]
    p_down = [r for r in patroni if r["label"].startswith("aggressive")]
    p_over = [r for r in patroni if r["label"].startswith("switchover")]
    flights = [r["in_flight"] for r in esc if "in_flight" in r]
    in_progress = sum(1 for f in flights if f["state_at_fault"] == "IN_PROGRESS")
    resumed = sum(1 for f in flights if f["resumes"] >= 1)
    endings = [f["ended_after_fault_s"] for f in flights if f["ended_after_fault_s"] is not None]
    per_fault = statistics.median(r["seconds"] for r in esc) if esc else 0.0
    lines = [
        "## HA failover and switchover (ESC pair and Patroni, one run)",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d} by `bench/bench_failover.py` in "
        f"{seconds / 60:.0f} min (2 cores; ESC's part {esc_seconds / 60:.1f} min for "
        f"{len(down)} host-down runs and {len(over)} switchovers, a median {per_fault:.0f} "
        "s per fault with the in-flight deploy and the old active's return): an ESC pair in two"
        " network namespaces and a VIM host in a third, the fault at a random moment. Two "
        "clients in the root namespace write during each fault, each every 10 ms with a new "
        "connection after any failure: one through the VIP (`POST /v0/tenants`), one straight "
        "into the pair's PostgreSQL (an `INSERT` into a table of its own, libpq `host=N1,N2 "
        "target_session_attrs=read-write` with the peer's 2 s timeouts, admitted by `[ha] "
        "pg_clients`). Then Patroni 4.1.5 in the same run with its own harness (3 nodes, Raft, "
        "`synchronous_mode`, its lowest timings), whose client writes to PostgreSQL the same "
        "way: the DB-level rows are the like-for-like "
        "comparison.",
        "",
        "| system, fault | runs | failover s p50 / p99 / max | max write gap s "
        "p50 / p99 / max | acknowledged writes lost |",
        "|---|---|---|---|---|",
        _row("ESC, active host down (link down + SIGKILL of all)", down),
        _row("ESC, `escadm switchover`", over),
        _row("ESC DB-level, active host down", [r["db"] for r in down]),
        _row("ESC DB-level, `escadm switchover`", [r["db"] for r in over]),
        _row("Patroni (DB-level), primary host down (ttl 20, loop_wait 1)", p_down),
        _row("Patroni (DB-level), `patronictl switchover`", p_over),
        "",
        "failover s runs from the start of the fault to the first write acknowledged by "
        "the other node; for a switchover it includes the command's own time before the "
        "role moves, and the max write gap is the outage. The DB-level client finds the "
        "new primary in steps of libpq's 2 s connect timeout when the dead node comes "
        "first in its host list, as the peer's client does.",
        "",
        f"In-flight transactions resumed: {_in_flight(esc)} ended SUCCESS (host down "
        f"{_in_flight(down)}, switchover {_in_flight(over)}). Each was a deploy of two VMs "
        f"posted through the VIP before the fault, its VMs booting {BOOT_S} s on the VIM "
        f"host; {in_progress} were IN_PROGRESS at the fault and {resumed} were taken up "
        "by the new active (resumed at least once)"
        + (
            f"; they ended {statistics.median(endings):.1f} s after the fault (median)."
            if endings
            else "."
        ),
        "",
    ]
    ratios = [
        ("Unplanned failover, median: ESC through the VIP", p_down, down, "failover_s"),
        ("Unplanned failover, median: ESC DB-level", p_down, [r["db"] for r in down], "failover_s"),
        ("Planned switchover write gap, median: ESC through the VIP", p_over, over, "max_gap_s"),
        (
            "Planned switchover write gap, median: ESC DB-level",
            p_over,
            [r["db"] for r in over],
            "max_gap_s",
        ),
    ]
    for what, theirs, ours, key in ratios:
        ratio = _ratio(theirs, ours, key)
        if ratio is None:
            continue
        better, worse = ("faster", "slower") if key == "failover_s" else ("shorter", "longer")
        if ratio >= 1:
            lines.append(f"{what} is {ratio:.1f}x {better} than Patroni.")
        else:
            lines.append(f"{what} is {1 / ratio:.1f}x {worse} than Patroni.")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host-down", type=int, default=30)
    parser.add_argument("--switchovers", type=int, default=10)
    parser.add_argument("--patroni-runs", type=int, default=5)
    parser.add_argument("--no-patroni", action="store_true", help="ESC only (no ratio)")
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    parser.add_argument("--no-write", action="store_true", help="do not touch benchmarks.md")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("run as root: the lab makes network namespaces")
    started = time.monotonic()
    esc = run_esc(args.host_down, args.switchovers)
    esc_seconds = time.monotonic() - started
    patroni = [] if args.no_patroni else run_patroni(args.patroni_runs)
    text = report(esc, patroni, time.monotonic() - started, esc_seconds)
    print(text)
    if args.json:
        args.json.write_text(
            json.dumps({"esc": esc, "esc_seconds": esc_seconds, "patroni": patroni}, indent=1)
        )
    if not args.no_write:
        write_section("HA failover and switchover (ESC pair and Patroni, one run)", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
