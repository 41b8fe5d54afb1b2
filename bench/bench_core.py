"""Controller core benchmark: transaction throughput, read latency, VM footprint.

Starts a real `escadm run` node on SQLite and on PostgreSQL 15 (a throwaway
server on loopback) and measures, per backend:

- deploy+undeploy transactions per second: `--deployments` one-VM
  deployments deployed then undeployed by `--writers` concurrent clients,
  each waiting for its transaction to end; figure = transactions / wall time;
- read latency at 16 concurrent clients: GET of a deployment (with its
  vm_groups and VMs) and of a transaction, `--reads` requests in all;
  p50 and p99 of the client-side round trip;
- resident set size (RSS) of one local VM process.

Usage: .venv/bin/python bench/bench_core.py [--deployments 40] [--reads 4000]
Writes a dated section to docs/benchmarks.md unless --no-write.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import (  # noqa: E402 - the tests' real-node helpers
    ControllerProcess,
    Node,
    fast_settings,
    kill_vms,
    live_vm_processes,
)
from pg_server import PostgresServer, availability  # noqa: E402

from esc.config import NodeHome  # noqa: E402
from esc.node.setup import init_node  # noqa: E402

ONE_VM = """
tenant: bench
deployment:
  name: {name}
  vm_groups:
    - {{name: g, image: healthy, flavor: m1.tiny}}
"""


def wait_end(client: httpx.Client, tx_id: str) -> dict:
    while True:
        tx = client.get(f"/v0/transactions/{tx_id}").json()
        if tx["state"] in ("SUCCESS", "FAILED"):
            return tx
        time.sleep(0.02)


def deploy_undeploy(node: Node, index: int) -> None:
    with httpx.Client(base_url=node.base_url, auth=node.auth, timeout=30) as client:
        name = f"d{index}"
        accepted = client.post(
            "/v0/deployments",
            content=ONE_VM.format(name=name),
            headers={"content-type": "application/yaml"},
        ).json()
        assert wait_end(client, accepted["transaction_id"])["state"] == "SUCCESS"
        gone = client.delete(f"/v0/tenants/bench/deployments/{name}").json()
        assert wait_end(client, gone["transaction_id"])["state"] == "SUCCESS"


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def measure_reads(node: Node, total: int, clients: int) -> tuple[float, float, float]:
    with httpx.Client(base_url=node.base_url, auth=node.auth, timeout=30) as client:
        accepted = client.post(
            "/v0/deployments",
            content=ONE_VM.format(name="read-target"),
            headers={"content-type": "application/yaml"},
        ).json()
        wait_end(client, accepted["transaction_id"])
    paths = [
        "/v0/tenants/bench/deployments/read-target",
        f"/v0/transactions/{accepted['transaction_id']}",
    ]
    latencies: list[float] = []
    lock = threading.Lock()

    def reader(count: int) -> None:
        mine = []
        with httpx.Client(base_url=node.base_url, auth=node.auth, timeout=30) as client:
            client.get(paths[0])  # connection set up outside the measurement
            for i in range(count):
                start = time.perf_counter()
                response = client.get(paths[i % 2])
                mine.append(time.perf_counter() - start)
                assert response.status_code == 200
        with lock:
            latencies.extend(mine)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(reader, [total // clients] * clients))
    elapsed = time.perf_counter() - started
    return (
        percentile(latencies, 50) * 1000,
        percentile(latencies, 99) * 1000,
        len(latencies) / elapsed,
    )


def run_backend(backend: str, db_url: str, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="esc-bench-") as tmp:
        home = NodeHome(Path(tmp) / "home")
        settings = fast_settings(db_url)
        node = Node(home, settings, init_node(home, settings).admin_password or "")
        process = ControllerProcess(node)
        process.start()
        try:
            started = time.perf_counter()
            with ThreadPoolExecutor(args.writers) as pool:
                list(pool.map(lambda i: deploy_undeploy(node, i), range(args.deployments)))
            elapsed = time.perf_counter() - started
            tx_per_s = 2 * args.deployments / elapsed
            p50, p99, rps = measure_reads(node, args.reads, 16)
            vm = live_vm_processes(home)[0]
            rss_mb = vm.memory_info().rss / 2**20
        finally:
            process.terminate()
            kill_vms(home)
    result = {
        "backend": backend,
        "tx_per_s": tx_per_s,
        "p50_ms": p50,
        "p99_ms": p99,
        "reads_per_s": rps,
        "vm_rss_mb": rss_mb,
    }
    print(result, flush=True)
    return result


def write_results(results: list[dict], args: argparse.Namespace) -> None:
    cpu = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    memory = psutil.virtual_memory().total / 2**30
    lines = [
        f"## Controller core ({datetime.now(UTC):%Y-%m-%d}, `bench/bench_core.py`)",
        "",
        f"Machine: {cpu} cores, {memory:.0f} GiB. A real `escadm run` node per backend "
        "(4 engine workers), local VIM, client and server on one host over loopback.",
        "",
        f"- deploy+undeploy: {args.deployments} one-VM deployments, each deployed then "
        f"undeployed by one of {args.writers} concurrent clients that wait for every "
        "transaction to end (VM process started and answering its health check; "
        "undeployed and process gone). Figure = transactions / wall time.",
        f"- reads: {args.reads} GETs of a deployment (with VMs) and a transaction by 16 "
        "concurrent clients with keep-alive; client-side round-trip latency.",
        "- VM RSS: resident set of one local VM process (`psutil`).",
        "",
        "| backend | deploy+undeploy tx/s | read p50 | read p99 | reads/s | VM process RSS |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['backend']} | {r['tx_per_s']:.1f} | {r['p50_ms']:.1f} ms | "
            f"{r['p99_ms']:.1f} ms | {r['reads_per_s']:.0f} | {r['vm_rss_mb']:.1f} MB |"
        )
    lines += ["", "Aim: read p99 under 20 ms, a local VM process under 20 MB RSS.", ""]
    section = "\n".join(lines)
    path = ROOT / "docs" / "benchmarks.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    marker = "## Controller core"
    if marker in text:
        start = text.index(marker)
        end = text.find("\n## ", start + 1)
        text = text[:start] + section + (text[end + 1 :] if end != -1 else "")
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deployments", type=int, default=40)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--reads", type=int, default=4000)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    results = []
    if args.backend in ("sqlite", "both"):
        with tempfile.TemporaryDirectory() as tmp:
            results.append(run_backend("SQLite", f"sqlite:///{tmp}/esc.db", args))
    if args.backend in ("postgresql", "both"):
        reason = availability()
        if reason:
            sys.exit(f"PostgreSQL benchmark impossible: {reason}")
        server = PostgresServer()
        server.start()
        try:
            results.append(run_backend("PostgreSQL 15", server.create_database("bench"), args))
        finally:
            server.stop()
    if not args.no_write:
        write_results(results, args)


if __name__ == "__main__":
    main()
