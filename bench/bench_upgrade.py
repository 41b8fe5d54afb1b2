"""The in-service upgrade of an HA pair: its wall time and its write interruption.

    sudo .venv/bin/python bench/bench_upgrade.py [--method package|image] [--runs 5]
        [--no-write] [--json FILE]

Package method: a lab pair (198.18.82.0/24) runs the newest kept patch build of this
checkout's maintenance release (releases/), each node from a venv of its own holding
that wheel, as tests/upgrade sets it up. Each run is `escadm upgrade in-service` of
this checkout's escadm to this checkout's wheel, then `escadm upgrade rollback
--pair` back to the kept release, so the next run starts alike.

Image method: the lab's host agent deploys a pair (198.18.84.0/24) from the newest
kept release of the previous train, as VMs are deployed from an image; each run
deploys it afresh, then `escadm upgrade in-service --method image` replaces both
nodes with this checkout's across its schema migrations.

Throughout, a client writes through the VIP (`POST /v0/tenants` every 10 ms, retried
with its Idempotency-Key on no answer or a 503 for up to 30 s, as escadm does).

Figures per run, for the upgrade and for the rollback:
- wall: the command's own time, from its report (pre-checks excluded);
- write interruption, two ways: the orchestrator's VIP probe (the longest time no
  active answered at the VIP, sampled every 20 ms), and the client's (the longest
  time between two acknowledged writes while the command ran);
- the switchover's time as the old active measured it;
- failed writes (given up after 30 s of retries), 409s on retries (a write done
  twice), acknowledged writes missing from the pair afterwards.

There is no peer for an in-service upgrade (Patroni upgrades PostgreSQL, not the
application above it), so no ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "tests"), str(ROOT / "tests" / "ha")]
sys.path.insert(0, str(ROOT / "tests" / "upgrade"))

from deployed_pair import DeployedPair  # noqa: E402
from esc_pair import ESCADM, Pair  # noqa: E402
from kept_releases import (  # noqa: E402
    build_current,
    previous_patch_build,
    previous_train_release,
    release_of,
    releases_dir,
)
from lab import Lab  # noqa: E402
from needs import running_pair  # noqa: E402
from report import write_section  # noqa: E402
from writes import WriteLoad  # noqa: E402

from esc.upgrade.image_method import image_name  # noqa: E402
from esc.version import CURRENT  # noqa: E402

NET = "198.18.82.0/24"
IMAGE_NET = "198.18.84.0/24"
COMMAND_BOUND = 900.0


def client_gap(load: WriteLoad, since: float, until: float) -> float:
    acked = sorted(a.acked for a in load.acks if since <= a.acked <= until)
    return max((b - a for a, b in itertools.pairwise(acked)), default=0.0)


def timed(pair: Pair | DeployedPair, command: list[str], prefix: str) -> dict:
    """Run one upgrade command under the write load; its report and the client's view."""
    load = WriteLoad(pair.api_url, ("admin", pair.password), prefix=prefix, retry_for=30)
    load.start()
    try:
        load.wait_acks(20, 60)
        started = time.time()
        done = subprocess.run(command, capture_output=True, text=True, timeout=COMMAND_BOUND)
        ended = time.time()
        time.sleep(0.5)
    finally:
        load.stop()
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[1:4])} failed: {done.stdout}{done.stderr}")
    report = json.loads(done.stdout)
    acked = {load.name(a.seq) for a in load.acks}
    return {
        "wall_s": report["seconds"],
        "probe_interruption_s": report["write_interruption_s"],
        "client_interruption_s": round(client_gap(load, started, ended), 3),
        "switchover_s": report["switchover_s"],
        "maintenance_s": report.get("maintenance_s"),
        "migration_s": (report.get("migration") or {}).get("seconds"),
        "writes": len(load.acks),
        "retries": load.retries,
        "failed": load.failures,
        "twice": len(load.conflicts),
        "lost": len(acked - pair.tenants()),
        "steps": {s["name"]: s["seconds"] for s in report["steps"]},
    }


def run(runs: int) -> tuple[str, list[dict]]:
    source = previous_patch_build()
    if source is None:
        raise SystemExit(f"releases/ holds no earlier patch build of {CURRENT}")
    work = Path(tempfile.mkdtemp(prefix="bench-upgrade-"))
    releases = releases_dir(work / "releases", source, build_current(work))
    results = []
    pairs = contextlib.contextmanager(running_pair)
    with pairs(NET, "bu", kad_vri=82, vim_host=True, keep_env="BU_KEEP", wheel=source) as pair:
        access = pair.access_file("bench")
        base = ["--pair", str(access), "--releases", str(releases), "--json"]
        for number in range(1, runs + 1):
            upgrade = [ESCADM, "upgrade", "in-service", "--to", str(CURRENT), "--yes", *base]
            up = timed(pair, upgrade, f"u{number}")
            back = timed(pair, [ESCADM, "upgrade", "rollback", *base], f"r{number}")
            results.append({"run": number, "upgrade": up, "rollback": back})
            print(json.dumps(results[-1]), flush=True)
    return source.name.split("-")[1], results


def run_image(runs: int) -> tuple[str, list[dict]]:
    source = previous_train_release()
    work = Path(tempfile.mkdtemp(prefix="bench-upgrade-image-"))
    work.chmod(0o711)
    releases = releases_dir(work / "releases", source, build_current(work))
    results = []
    with Lab(1, net=IMAGE_NET, prefix="bi") as lab:
        assert lab.dir is not None
        lab.dir.chmod(0o711)
        pair = DeployedPair(lab, releases, image_name(str(release_of(source))), kad_vri=84)
        try:
            pair.start()
            for number in range(1, runs + 1):
                pair.redeploy()
                access = pair.access_file("bench")
                upgrade = [ESCADM, "upgrade", "in-service", "--to", str(CURRENT), "--yes"]
                upgrade += ["--method", "image", "--pair", str(access)]
                upgrade += ["--releases", str(releases), "--json"]
                results.append({"run": number, "upgrade": timed(pair, upgrade, f"i{number}")})
                print(json.dumps(results[-1]), flush=True)
        finally:
            pair.stop()
    return str(release_of(source)), results


def image_report(source: str, results: list[dict], seconds: float) -> str:
    date = datetime.now(UTC).date().isoformat()
    middle = sorted(results, key=lambda r: r["upgrade"]["wall_s"])[len(results) // 2]
    lines = [
        f"## HA pair upgrade by image ({date}, `bench/bench_upgrade.py --method image`)",
        "",
        f"Image method, {source} (kept, the previous train) → {CURRENT} (this checkout), "
        f"across its schema migrations, {len(results)} runs on a lab pair the lab's host "
        "agent deploys afresh from the kept release's image for each run (198.18.84.0/24, "
        "2-core machine), a client writing through the VIP every 10 ms throughout; the "
        f"whole benchmark took {seconds / 60:.1f} min. Writes are refused while the pair is "
        "in MAINTENANCE: the old active's orderly shutdown handing the role over, the "
        "schema migration on the new active, its verification.",
        "",
        "| run | wall | interruption (probe / client) | MAINTENANCE | migration "
        "| failed | twice | lost |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        up = r["upgrade"]
        lines.append(
            f"| {r['run']} | {up['wall_s']:.1f} s | {up['probe_interruption_s']:.3f} / "
            f"{up['client_interruption_s']:.3f} s | {up['maintenance_s']:.3f} s | "
            f"{up['migration_s']:.3f} s | {up['failed']} | {up['twice']} | {up['lost']} |"
        )
    lines += [
        "",
        f"Median: {_median(results, 'upgrade', 'wall_s'):.1f} s wall (aim ≤ 180 s); writes "
        f"refused (MAINTENANCE) {_median(results, 'upgrade', 'maintenance_s'):.3f} s, of "
        f"which the migration {_median(results, 'upgrade', 'migration_s'):.3f} s (aim ≤ 0.5 s "
        "+ the migration); no active at the VIP for "
        f"{_median(results, 'upgrade', 'probe_interruption_s'):.3f} s; the client's longest "
        "wait between two acknowledged writes "
        f"{_median(results, 'upgrade', 'client_interruption_s'):.3f} s (the window plus its "
        "retry's backoff, 40 ms doubling). Steps of the median run: "
        + ", ".join(f"{name} {secs:.1f} s" for name, secs in middle["upgrade"]["steps"].items())
        + ".",
    ]
    return "\n".join(lines) + "\n"


def _median(results: list[dict], kind: str, figure: str) -> float:
    return statistics.median(r[kind][figure] for r in results)


def report(source: str, results: list[dict], seconds: float) -> str:
    date = datetime.now(UTC).date().isoformat()
    middle = sorted(results, key=lambda r: r["upgrade"]["wall_s"])[len(results) // 2]
    lines = [
        f"## HA pair in-service upgrade ({date}, `bench/bench_upgrade.py`)",
        "",
        f"Package method, {source} (kept) → {CURRENT} (this checkout) and the rollback back, "
        f"{len(results)} runs each on a lab pair (198.18.82.0/24, 2-core machine), a client "
        "writing through the VIP every 10 ms throughout; the whole benchmark took "
        f"{seconds / 60:.1f} min. Interruption: the orchestrator's VIP probe / the client's "
        "longest time between two acknowledged writes.",
        "",
        "| run | upgrade wall | interruption (probe / client) | switchover | rollback wall "
        "| interruption (probe / client) | failed | twice | lost |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        up, back = r["upgrade"], r["rollback"]
        lines.append(
            f"| {r['run']} | {up['wall_s']:.1f} s | {up['probe_interruption_s']:.3f} / "
            f"{up['client_interruption_s']:.3f} s | {up['switchover_s']:.3f} s | "
            f"{back['wall_s']:.1f} s | {back['probe_interruption_s']:.3f} / "
            f"{back['client_interruption_s']:.3f} s | {up['failed'] + back['failed']} | "
            f"{up['twice'] + back['twice']} | {up['lost'] + back['lost']} |"
        )
    lines += [
        "",
        f"Median upgrade: {_median(results, 'upgrade', 'wall_s'):.1f} s wall (aim ≤ 180 s), "
        f"write interruption {_median(results, 'upgrade', 'probe_interruption_s'):.3f} s by "
        f"the probe and {_median(results, 'upgrade', 'client_interruption_s'):.3f} s by the "
        "client (aim ≤ 0.5 s); median rollback "
        f"{_median(results, 'rollback', 'wall_s'):.1f} s. Steps of the median run's upgrade: "
        + ", ".join(f"{name} {secs:.1f} s" for name, secs in middle["upgrade"]["steps"].items())
        + ".",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", choices=["package", "image"], default="package")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    parser.add_argument("--no-write", action="store_true", help="do not touch benchmarks.md")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("run as root: the lab makes network namespaces")
    started = time.monotonic()
    if args.method == "image":
        source, results = run_image(args.runs)
        text = image_report(source, results, time.monotonic() - started)
        title = "HA pair upgrade by image"
    else:
        source, results = run(args.runs)
        text = report(source, results, time.monotonic() - started)
        title = "HA pair in-service upgrade"
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"source": source, "runs": results}, indent=1))
    if not args.no_write:
        write_section(title, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
