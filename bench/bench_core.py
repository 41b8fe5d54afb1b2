"""Controller core benchmark: transaction throughput, read latency, VM footprint.

Starts a real `escadm run` node on SQLite and on PostgreSQL 15 (a throwaway
server on loopback) and measures, per backend:

- deploy+undeploy transactions per second: `--deployments` one-VM
  deployments deployed then undeployed by `--writers` concurrent clients,
  each waiting for its transaction to end; figure = transactions / wall time;
- read latency at 16 concurrent clients, GET of a deployment (with its
  vm_groups and VMs) and of a transaction: paced (each client 10 req/s)
  and saturated (wrk, back to back); p50 and p99;
- resident set size (RSS) of one local VM process.

Usage: .venv/bin/python bench/bench_core.py [--deployments 40] [--rate 10] [--seconds 10]
(needs Debian's wrk for the saturated read figures)
Writes a dated section to docs/benchmarks.md unless --no-write.
"""

from __future__ import annotations

import argparse
import base64
import shutil
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
sys.path.insert(0, str(ROOT / "bench"))

from conftest import (  # noqa: E402 - the tests' real-node helpers
    ControllerProcess,
    Node,
    fast_settings,
    kill_vms,
    live_vm_processes,
)
from pg_server import PostgresServer, availability  # noqa: E402
from report import write_section  # noqa: E402

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


def _wrk(node: Node, path: str, seconds: int) -> dict:
    """Saturated load: 16 connections sending back to back (wrk, C, so the load
    generator takes little of the CPU it measures)."""
    token = base64.b64encode(f"admin:{node.admin_password}".encode()).decode()
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            "-c16",
            f"-d{seconds}s",
            "--latency",
            "-H",
            f"Authorization: Basic {token}",
            node.base_url + path,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "Non-2xx" not in out, out
    figures = {}
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] in ("50%", "99%"):
            figures[parts[0]] = _ms(parts[1])
        elif line.startswith("Requests/sec:"):
            figures["rps"] = float(parts[1])
    return figures


def _ms(text: str) -> float:
    for unit, factor in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    raise ValueError(text)


def _paced(node: Node, paths: list[str], clients: int, rate: float, seconds: float) -> list[float]:
    """Each of `clients` clients sends `rate` requests per second on a fixed schedule."""
    latencies: list[float] = []
    lock = threading.Lock()

    def client_loop(index: int) -> None:
        mine = []
        with httpx.Client(base_url=node.base_url, auth=node.auth, timeout=30) as client:
            client.get(paths[0])  # connection set up outside the measurement
            start = time.perf_counter() + index / (clients * rate)  # spread the clients
            for i in range(int(seconds * rate)):
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                sent = time.perf_counter()
                assert client.get(paths[i % len(paths)]).status_code == 200
                mine.append(time.perf_counter() - sent)
        with lock:
            latencies.extend(mine)

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client_loop, range(clients)))
    return latencies


def measure_reads(node: Node, args: argparse.Namespace) -> dict:
    with httpx.Client(base_url=node.base_url, auth=node.auth, timeout=30) as client:
        accepted = client.post(
            "/v0/deployments",
            content=ONE_VM.format(name="read-target"),
            headers={"content-type": "application/yaml"},
        ).json()
        wait_end(client, accepted["transaction_id"])
    show = "/v0/tenants/bench/deployments/read-target"
    transaction = f"/v0/transactions/{accepted['transaction_id']}"
    paced = _paced(node, [show, transaction], 16, args.rate, args.seconds)
    return {
        "paced_p50": percentile(paced, 50) * 1000,
        "paced_p99": percentile(paced, 99) * 1000,
        "saturated_show": _wrk(node, show, int(args.seconds)),
        "saturated_tx": _wrk(node, transaction, int(args.seconds)),
    }


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
            reads = measure_reads(node, args)
            vm = live_vm_processes(home)[0]
            rss_mb = vm.memory_info().rss / 2**20
        finally:
            process.terminate()
            kill_vms(home)
    result = {"backend": backend, "tx_per_s": tx_per_s, "vm_rss_mb": rss_mb, **reads}
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
        f"- reads, paced: 16 concurrent clients (httpx, keep-alive), each sending "
        f"{args.rate:g} requests/s on a fixed schedule for {args.seconds:g} s, alternating GET "
        "of a deployment (with its vm_groups and VMs) and GET of a transaction; "
        "client-side round trip.",
        f"- reads, saturated: `wrk -t2 -c16 -d{int(args.seconds)}s --latency`, 16 connections "
        "sending back to back, on GET of the deployment and GET of the transaction.",
        "- VM RSS: resident set of one local VM process (`psutil`).",
        "",
        "| backend | deploy+undeploy tx/s | paced reads p50 / p99 | saturated deployment GET "
        "p50 / p99 (req/s) | saturated transaction GET p50 / p99 (req/s) | VM process RSS |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        show, tx = r["saturated_show"], r["saturated_tx"]
        lines.append(
            f"| {r['backend']} | {r['tx_per_s']:.1f} | {r['paced_p50']:.1f} / "
            f"{r['paced_p99']:.1f} ms | {show['50%']:.1f} / {show['99%']:.1f} ms "
            f"({show['rps']:.0f}) | {tx['50%']:.1f} / {tx['99%']:.1f} ms ({tx['rps']:.0f}) | "
            f"{r['vm_rss_mb']:.1f} MB |"
        )
    lines += ["", "Aim: read p99 under 20 ms, a local VM process under 20 MB RSS.", ""]
    write_section("Controller core", "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deployments", type=int, default=40)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument(
        "--rate", type=float, default=10.0, help="requests per second per paced client"
    )
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="length of each read measurement"
    )
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("the saturated read measurement needs wrk: apt-get install wrk")
    results = []
    if args.backend in ("sqlite", "both"):
        with tempfile.TemporaryDirectory() as tmp:
            results.append(run_backend("SQLite", f"sqlite:///{tmp}/esc.db", args))
    if args.backend in ("postgresql", "both"):
        reason = availability()
        if reason:
            sys.exit(f"PostgreSQL benchmark impossible: {reason}")
        server = PostgresServer(durable=True)
        server.start()
        try:
            results.append(run_backend("PostgreSQL 15", server.create_database("bench"), args))
        finally:
            server.stop()
    if not args.no_write:
        write_results(results, args)


if __name__ == "__main__":
    main()
