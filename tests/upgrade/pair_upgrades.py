"""What the tests of a pair's in-service upgrade share: the command, the deployments
they make through the VIP, and the upgrade's record read while it runs. A pair here
is the lab's (tests/ha/esc_pair.py) or one the lab's agent deployed
(tests/ha/deployed_pair.py): both give client() and logs()."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from esc_pair import ESCADM, wait_for
from writes import WriteLoad

from esc.version import CURRENT

# Two VMs that come up at once, deployed before an upgrade: untouched by it.
KEPT = """
tenant: kept
deployment:
  name: before
  vm_groups:
    - name: g
      image: healthy
      flavor: m1.tiny
      scaling: {min_active: 2, max_active: 2}
"""


def slow(name: str, boot_s: int) -> str:
    """A deployment whose VMs take `boot_s` s to boot: submitted while the standby is
    upgraded, it is still in flight when the active role moves."""
    return f"""
tenant: inflight
deployment:
  name: {name}
  vm_groups:
    - name: g
      image: 'slow-boot:{boot_s}'
      flavor: m1.tiny
      bootup_time: {boot_s * 3}
      scaling: {{min_active: 2, max_active: 2}}
"""


def upgrade(access: Path, releases: Path, *args: str) -> subprocess.Popen:
    """`escadm upgrade in-service` of the pair to this checkout, reporting in JSON."""
    command = [ESCADM, "upgrade", "in-service", "--pair", str(access), "--to", str(CURRENT)]
    command += ["--releases", str(releases), "--yes", "--json", *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def journal(access: Path) -> dict:
    """The upgrade's record beside the pair access file ({} before there is one)."""
    try:
        return json.loads((access.with_suffix(".upgrade") / "journal.json").read_text())
    except (OSError, ValueError):
        return {}


def step_state(access: Path, name: str) -> str:
    """The state of step `name` in the upgrade under way ("" before it is recorded)."""
    record = journal(access)
    if record.get("state") != "in_progress":
        return ""  # the last one's record, ended
    return next((s["state"] for s in record.get("steps", []) if s["name"] == name), "")


def kill_in(access: Path, run: subprocess.Popen, step: str, timeout: float = 600) -> None:
    """SIGKILL the orchestrator while `step` runs (the record is read every millisecond:
    the shortest steps take a fraction of a second)."""
    deadline = time.monotonic() + timeout
    while step_state(access, step) != "running":
        assert run.poll() is None, f"the upgrade ended before {step}: {run.communicate()}"
        assert time.monotonic() < deadline, f"{step} did not start within {timeout} s"
        time.sleep(0.001)
    run.kill()
    run.wait(10)


def deploy(pair: Any, text: str) -> str:
    """Deploy through the VIP; the transaction's id."""
    with pair.client() as client:
        accepted = client.post(
            "/v0/deployments", content=text, headers={"content-type": "application/yaml"}
        )
    assert accepted.status_code == 202, accepted.text
    return accepted.json()["transaction_id"]


def wait_tx(pair: Any, tx_id: str, timeout: float) -> dict:
    """The transaction once it ended, read through the VIP."""

    def ended() -> dict | None:
        with pair.client() as client:
            tx = client.get(f"/v0/transactions/{tx_id}").json()
        return tx if tx["state"] in ("SUCCESS", "FAILED") else None

    return wait_for(ended, timeout, f"transaction {tx_id} ends\n{pair.logs()}")


def upgraded_under_load(
    pair: Any,
    run: Callable[[], subprocess.Popen],
    access: Path,
    standby_step: str,
    boot_s: int,
    bound: float,
) -> tuple[dict, Any, list[str]]:
    """An upgrade (`run` starts it) under a write load through the VIP, with two slow
    deploys submitted while the standby is upgraded (step `standby_step`): in flight at
    the switchover. Its report, the load, the deploys' transactions; the upgrade must
    have succeeded and the load have lost, failed or doubled no write."""
    # Answers wait up to 2 s: a release before 1.3 (the image method's source) knows no
    # Idempotency-Key, so a late answer retried would be a second write.
    load = WriteLoad(pair.api_url, ("admin", pair.password), prefix="up", retry_for=120, timeout=2)
    load.start()
    try:
        load.wait_acks(30, 60)
        started = run()
        wait_for(
            lambda: step_state(access, standby_step) == "running" or started.poll() is not None,
            120,
            f"{standby_step} starts",
        )
        in_flight = [deploy(pair, slow(f"slow{i}", boot_s)) for i in (1, 2)]
        out, err = started.communicate(timeout=bound)
        time.sleep(1.0)
    finally:
        load.stop()
    assert started.returncode == 0, f"exit {started.returncode}\n{out}\n{err}\n{pair.logs()}"
    report = json.loads(out)
    print(f"\nreport: {json.dumps({k: v for k, v in report.items() if k != 'steps'})}")
    print("steps: " + ", ".join(f"{s['name']} {s['seconds']} s" for s in report["steps"]))
    print(f"load: {len(load.acks)} acks, {load.retries} retries, {load.failures} failed")
    # The client through the VIP: every write answered, none done twice, none lost.
    assert load.failures == 0, load.failed
    assert load.conflicts == []
    present = pair.tenants()
    acked = {load.name(a.seq) for a in load.acks}
    assert acked <= present, f"lost: {sorted(acked - present)[:10]}"
    # The deploys in flight at the switchover were carried over and succeeded.
    assert set(report["in_flight_at_switchover"]) & set(in_flight), report
    for tx_id in in_flight:
        assert wait_tx(pair, tx_id, 300)["state"] == "SUCCESS"
    assert report["acknowledged_lost"] == 0
    assert report["state"] == "completed" and report["rollback"] == "none"
    assert set(report["versions_after"].values()) == {str(CURRENT)}
    return report, load, in_flight
