"""escadm start | stop | restart | status | version on a real node."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from conftest import ESCADM, escadm, free_port

from esc import __version__
from esc.config import NodeHome
from esc.node.control import live_record

ESC_VERSION = str(Path(ESCADM).with_name("esc_version"))


def test_version_and_esc_version_agree() -> None:
    version, build = __version__.rsplit(".", 1)
    expected = f"version : {version}\nrelease : {build}\n"
    assert subprocess.run([ESCADM, "version"], capture_output=True, text=True).stdout == expected
    assert subprocess.run([ESC_VERSION], capture_output=True, text=True).stdout == expected
    as_json = json.loads(
        subprocess.run([ESCADM, "version", "--json"], capture_output=True, text=True).stdout
    )
    assert as_json == {"version": version, "release": build, "full": __version__}


@pytest.mark.slow
def test_start_status_stop_cycle(home: Path) -> None:
    stopped = escadm("status", home=home)
    assert (stopped.returncode, stopped.stdout) == (3, "ESC status=0 ESC is stopped\n")

    started = escadm("start", home=home)
    assert (started.returncode, started.stdout) == (0, "ESC started\n")
    again = escadm("start", home=home)
    assert (again.returncode, again.stdout) == (0, "ESC is already running\n")

    status = escadm("status", home=home)
    assert (status.returncode, status.stdout) == (0, "ESC status=0 ESC Standalone Healthy\n")
    verbose = escadm("status", "--v", home=home).stdout.splitlines()
    assert re.fullmatch(r"escmanager \(pgid \d+\) is running", verbose[0])
    assert verbose[-1] == "ESC status=0 ESC Standalone Healthy"
    pgid = int(re.search(r"pgid (\d+)", verbose[0]).group(1))
    assert os.getpgid(pgid) == pgid  # a real, live process group

    as_json = json.loads(escadm("status", "--json", home=home).stdout)
    assert as_json["running"] and as_json["healthy"]
    assert as_json["services"][0]["pgid"] == pgid

    assert escadm("stop", home=home).stdout == "ESC stopped\n"
    assert escadm("stop", home=home).stdout == "ESC is already stopped\n"
    after = escadm("status", "--v", home=home)
    assert after.returncode == 3
    assert after.stdout == "escmanager is stopped\nmona is stopped\nESC status=0 ESC is stopped\n"
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)


@pytest.mark.slow
def test_supervisor_restarts_a_killed_service(home: Path) -> None:
    escadm("start", home=home)
    before = live_record(NodeHome(home), "escmanager")
    os.killpg(before.pgid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if escadm("status", home=home).returncode == 0:
            break
        time.sleep(0.3)
    after = live_record(NodeHome(home), "escmanager")
    assert after is not None and after.pid != before.pid
    assert escadm("status", home=home).stdout == "ESC status=0 ESC Standalone Healthy\n"


def test_stale_records_are_not_trusted(home: Path) -> None:
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        run = home / "run"
        record = {
            "name": "supervisor",
            "pid": bystander.pid,
            "pgid": bystander.pid,
            "start_ticks": 1,
        }
        (run / "supervisor.json").write_text(json.dumps(record))
        status = escadm("status", home=home)
        assert status.returncode == 3, "a reused pid was taken for the supervisor"
        assert escadm("stop", home=home).stdout == "ESC is already stopped\n"
        assert bystander.poll() is None, "an unrelated process was signalled"
        assert not (run / "supervisor.json").exists()
    finally:
        bystander.kill()
        bystander.wait()


def test_port_in_use_is_a_clear_error(home: Path) -> None:
    port = int(re.search(r"port = (\d+)", (home / "esc.toml").read_text()).group(1))
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        result = escadm("start", home=home)
    assert result.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
    assert escadm("status", home=home).returncode == 3


@pytest.mark.slow
def test_health_passed_and_failed(home: Path) -> None:
    stopped = escadm("health", home=home)
    assert stopped.returncode == 1
    lines = stopped.stdout.splitlines()
    assert lines[0] == "ESC HEALTH FAILED"
    assert any(line.startswith("  escmanager: not running") for line in lines[1:])
    assert any(line.startswith("  api: no answer") for line in lines[1:])

    escadm("start", home=home)
    passed = escadm("health", home=home)
    assert (passed.returncode, passed.stdout) == (0, "ESC HEALTH PASSED\n")
    checks = json.loads(escadm("health", "--json", home=home).stdout)["checks"]
    names = sorted(c["name"] for c in checks)  # each once
    assert names == sorted(["api", "database", "vim", "engine", "notifier", "escmanager", "mona"])
    assert all(c["ok"] for c in checks)

    port = int(re.search(r"port = (\d+)", (home / "esc.toml").read_text()).group(1))
    served = httpx.get(f"http://127.0.0.1:{port}/esc/health", timeout=5).json()
    assert served["status_code"] == 2000 and served["stage"] == "READY"
    served_names = {c["name"] for c in served["checks"]}
    assert served_names == {"database", "vim", "engine", "notifier", "mona"}

    # With the API down, the database is checked directly: an unreachable one is named.
    escadm("stop", home=home)
    config = home / "esc.toml"
    original = config.read_text()
    dead = f"postgresql+psycopg://esc@127.0.0.1:{free_port()}/esc"
    # Only the [database] url: other sections have url keys too.
    config.write_text(original.replace('[database]\nurl = ""', f'[database]\nurl = "{dead}"'))
    assert dead in config.read_text()
    try:
        failed = escadm("health", home=home)
    finally:
        config.write_text(original)
    assert failed.returncode == 1
    assert "\n  database: cannot query" in failed.stdout


def test_operators_scripts_health_sh_and_collect_esc_log_sh(home: Path, tmp_path: Path) -> None:
    bin_dir = Path(ESCADM).parent
    health_sh = subprocess.run(
        [str(bin_dir / "health.sh"), "--home", str(home)], capture_output=True, text=True
    )
    health = escadm("health", home=home)
    assert (health_sh.returncode, health_sh.stdout) == (health.returncode, health.stdout)
    assert health_sh.stdout.startswith("ESC HEALTH FAILED\n")  # the node is stopped

    out = tmp_path / "logs"
    out.mkdir()
    collected = subprocess.run(
        [str(bin_dir / "collect_esc_log.sh"), "--home", str(home), "--dir", str(out)],
        capture_output=True,
        text=True,
    )
    assert collected.returncode == 0, collected.stderr
    archive = Path(collected.stdout.strip())
    assert archive.parent == out and archive.name.startswith("esc_log-") and archive.is_file()
