"""Failover and switchover of an ESC pair, against Patroni in the same run.

    sudo .venv/bin/python bench/bench_failover.py [--host-down 30] [--switchovers 10]
        [--patroni-runs 5] [--no-patroni] [--json FILE]

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

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "tests"), str(ROOT / "tests" / "ha")]

from esc_pair import Pair, wait_for  # noqa: E402
from lab import Lab  # noqa: E402
from report import write_section  # noqa: E402
from writes import WriteLoad, figures  # noqa: E402

NET = "198.18.61.0/24"
PEER = ROOT.parent / "shared" / "peers" / "patroni" / "setup-and-run.sh"
PEER_NET = "198.18.7"


def one_fault(pair: Pair, kind: str, index: int) -> dict:
    old = pair.active()
    load = WriteLoad(pair.api_url, ("admin", pair.password), prefix=f"{kind[:2]}{index}")
    load.start()
    try:
        load.wait_acks(30, 60)
        time.sleep(random.uniform(0, 2.0))  # not always the same phase of the cycles
        fault_at = time.time()
        if kind == "host-down":
            pair.lab.host_down(old.ns)
        else:
            pair.ok(old, "switchover")
        wait_for(
            lambda: any(a.acked > fault_at and a.node != old.name for a in load.acks),
            60,
            f"a write acknowledged by the other node after {kind}",
        )
        time.sleep(1.0)
    finally:
        load.stop()
    result = figures(load, fault_at, pair.tenants()).as_json()
    result["label"] = f"{kind}-{index}"
    if kind == "host-down":
        pair.power_on_and_start(old)
    pair.wait_pair(active=pair.other(old), timeout=180)
    print(json.dumps(result), flush=True)
    return result


def run_esc(host_down: int, switchovers: int) -> list[dict]:
    base = Path(tempfile.mkdtemp(prefix="bf-"))
    base.chmod(0o711)
    results = []
    with Lab(2, net=NET, prefix="bf") as lab:
        pair = Pair(lab, base, kad_vri=67)
        try:
            pair.start_agent()
            pair.create()
            for i in range(1, host_down + 1):
                results.append(one_fault(pair, "host-down", i))
            for i in range(1, switchovers + 1):
                results.append(one_fault(pair, "switchover", i))
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
    if not runs:
        return f"| {name} | 0 | - | - | - |"
    f50, f99, fmax = _stats([r["failover_s"] for r in runs])
    g50, g99, gmax = _stats([r["max_gap_s"] for r in runs])
    lost = sum(int(r.get("lost", 0)) for r in runs)
    return (
        f"| {name} | {len(runs)} | {f50:.2f} / {f99:.2f} / {fmax:.2f} | "
        f"{g50:.2f} / {g99:.2f} / {gmax:.2f} | {lost} |"
    )


def report(esc: list[dict], patroni: list[dict], seconds: float) -> str:
    down = [r for r in esc if r["label"].startswith("host-down")]
    over = [r for r in esc if r["label"].startswith("switchover")]
    p_down = [r for r in patroni if r["label"].startswith("aggressive")]
    p_over = [r for r in patroni if r["label"].startswith("switchover")]
    lines = [
        "## HA failover and switchover (ESC pair and Patroni, one run)",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d} by `bench/bench_failover.py` in "
        f"{seconds / 60:.0f} min (2 cores): an ESC pair in two network namespaces, a "
        "client in the root namespace writing through the VIP every 10 ms "
        "(`POST /v0/tenants`), the fault at a random moment; then Patroni 4.1.5 in the "
        "same run with its own harness and the same client figures (3 nodes, Raft, "
        "`synchronous_mode`, its lowest timings).",
        "",
        "| system, fault | runs | failover s p50 / p99 / max | max write gap s "
        "p50 / p99 / max | acknowledged writes lost |",
        "|---|---|---|---|---|",
        _row("ESC, active host down (link down + SIGKILL of all)", down),
        _row("ESC, `escadm switchover`", over),
        _row("Patroni, primary host down (ttl 20, loop_wait 1)", p_down),
        _row("Patroni, `patronictl switchover`", p_over),
        "",
    ]
    if down and p_down:
        ratio = statistics.median(r["failover_s"] for r in p_down) / statistics.median(
            r["failover_s"] for r in down
        )
        lines.append(f"Unplanned failover, median: ESC is {ratio:.1f}x faster than Patroni.")
    if over and p_over:
        ratio = statistics.median(r["max_gap_s"] for r in p_over) / statistics.median(
            r["max_gap_s"] for r in over
        )
        lines.append(f"Planned switchover write gap, median: ESC is {ratio:.1f}x shorter.")
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
    patroni = [] if args.no_patroni else run_patroni(args.patroni_runs)
    text = report(esc, patroni, time.monotonic() - started)
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"esc": esc, "patroni": patroni}, indent=1))
    if not args.no_write:
        write_section("HA failover and switchover (ESC pair and Patroni, one run)", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
