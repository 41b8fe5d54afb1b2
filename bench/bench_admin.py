"""How fast `escadm status` and `escadm health` answer on a running node.

Each command is run --runs times as a new process (as an operator types
it), on a started standalone node (SQLite, local VIM, one deployment of
three VMs); wall time from exec to exit. Aim: under 1 s.

Usage: .venv/bin/python bench/bench_admin.py [--runs 20] [--no-write]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
ESCADM = str(Path(sys.executable).with_name("escadm"))

from report import write_section  # noqa: E402


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def escadm(*args: str, home: Path) -> None:
    subprocess.run([ESCADM, *args, "--home", str(home)], check=True, capture_output=True)


def timed(args: list[str], home: Path, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([ESCADM, *args, "--home", str(home)], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="esc-bench-") as tmp:
        home = Path(tmp) / "home"
        escadm("init", "--api-port", str(free_port()), home=home)
        escadm("start", home=home)
        try:
            escadm("deployment", "deploy", str(ROOT / "examples" / "deployment.yaml"), home=home)
            results = {
                "escadm status": timed(["status"], home, args.runs),
                "escadm status --v": timed(["status", "--v"], home, args.runs),
                "escadm health": timed(["health"], home, args.runs),
            }
            escadm("deployment", "undeploy", "web", home=home)
        finally:
            escadm("stop", home=home)
    rows = []
    for name, times in results.items():
        ms = sorted(t * 1000 for t in times)
        rows.append(f"| `{name}` | {statistics.median(ms):.0f} ms | {ms[-1]:.0f} ms |")
        print(name, f"median {statistics.median(ms):.0f} ms, max {ms[-1]:.0f} ms")
    if not args.no_write:
        write_section(
            "Admin commands",
            "\n".join(
                [
                    f"## Admin commands ({datetime.now(UTC):%Y-%m-%d}, `bench/bench_admin.py`)",
                    "",
                    f"Each command run {args.runs} times as a new process against a started "
                    "standalone node (SQLite, local VIM, the example deployment's three VMs); "
                    "wall time from exec to exit, so Python start-up and imports are included. "
                    "Aim: under 1 s.",
                    "",
                    "| command | median | max |",
                    "|---|---|---|",
                    *rows,
                ]
            ),
        )


if __name__ == "__main__":
    main()
