"""How fast the VIP moves between the two nodes of an HA pair.

Two network-namespace test hosts on a bridge (tests/ha/lab.py), each running real
keepalived with the config ESC renders (VRRPv3, advert_int 0.1, unicast, track
files) and its gateway watch; a banner server on each host names who answers. A
client in the root namespace tries a connection to the VIP 10 ms after the last one
ended (one that gets no answer gives up after 50 ms). Each run starts a fresh pair,
waits a random 0-0.5 s (so the fault does not always fall at the same point of the
advert cycle), applies one fault to the MASTER and measures the time from the
fault's start until the other node answers:

- host down: the MASTER's link goes down and every process on it gets SIGKILL;
- health fault: the MASTER's health track file is set to fault;
- gateway loss: the MASTER's traffic to the gateway is dropped (the gateway watch
  needs three missed echoes at 0.2 s);
- graceful stop: the MASTER's keepalived gets SIGTERM (esc.ha.keepalived.stop).

Needs root, keepalived and nftables. Usage:
    .venv/bin/python bench/bench_keepalived.py [--runs 5] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests" / "ha"))

from lab import Lab, availability  # noqa: E402
from pair import Node, Pair  # noqa: E402
from report import write_section  # noqa: E402

from esc.ha import keepalived as ka  # noqa: E402

NET = "198.18.20.0/24"
PREFIX = "kab"


def faults(lab: Lab) -> dict[str, Callable[[Node], object]]:
    def graceful_stop(master: Node) -> None:
        threading.Thread(target=ka.stop, args=(master.paths,), daemon=True).start()

    return {
        "host down (link down + SIGKILL)": lambda master: lab.host_down(master.ns),
        "health track file set to fault": lambda master: master.health.set(False),
        "gateway lost": lambda master: lab.gateway_down(master.ns),
        "graceful stop (SIGTERM)": graceful_stop,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="print, do not update docs")
    args = parser.parse_args()
    reason = availability()
    if reason:
        sys.exit(reason)
    version = subprocess.run(
        [ka.find_keepalived(), "--version"], capture_output=True, text=True
    ).stderr.splitlines()[0]

    results: dict[str, list[float]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="bench-keepalived.") as tmp,
        Lab(2, net=NET, prefix=PREFIX) as lab,
    ):
        for label, fault in faults(lab).items():
            for run in range(args.runs):
                pair = Pair(lab, Path(tmp) / f"{len(results)}-{run}")
                try:
                    master, _ = pair.start()
                    time.sleep(random.uniform(0, 0.5))
                    seconds = pair.takeover(lambda f=fault, m=master: f(m))
                finally:
                    pair.close()
                results.setdefault(label, []).append(seconds)
                print(f"{label} run {run + 1}: {seconds:.3f} s", flush=True)

    rows = [
        f"| {label} | {statistics.median(t):.2f} / {min(t):.2f} / {max(t):.2f} | {len(t)} |"
        for label, t in results.items()
    ]
    body = "\n".join(
        [
            f"## keepalived VIP takeover ({datetime.now(UTC):%Y-%m-%d}, "
            "`bench/bench_keepalived.py`)",
            "",
            f"Machine: {os.cpu_count()} cores, {platform.system()} {platform.release()}; "
            f"{version}. Two network-namespace hosts on a bridge, the config ESC renders "
            "(VRRPv3, advert_int 0.1, unicast, nopreempt); a client in the root namespace "
            "tries a connection to the VIP 10 ms after the last one ended (50 ms timeout). "
            "Time from the start of the fault on the MASTER "
            "to the first connection the other node answers, seconds:",
            "",
            "| fault on the MASTER | median / min / max s | runs |",
            "|---|---|---|",
            *rows,
            "",
            "Aim: under 1 s for every fault (the database promotion and the active role come "
            "on top).",
        ]
    )
    print(body)
    if not args.no_write:
        write_section("keepalived VIP takeover", body)


if __name__ == "__main__":
    main()
