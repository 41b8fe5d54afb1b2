"""`escadm run` stops cleanly on Ctrl-C (SIGINT) and on SIGTERM: exit 0, the
final log line, its records removed; no "Aborted!", no death by signal."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from conftest import ESCADM


def _run_until_ready(home: Path) -> subprocess.Popen:
    port = int(re.search(r"port = (\d+)", (home / "esc.toml").read_text()).group(1))
    proc = subprocess.Popen(
        [ESCADM, "run", "--home", str(home)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/esc/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"escadm run not ready: {proc.communicate()}")


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_escadm_run_stops_cleanly(home: Path, stop: signal.Signals) -> None:
    proc = _run_until_ready(home)
    try:
        proc.send_signal(stop)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-2000:]
    assert "Aborted!" not in stderr
    lines = (home / "log" / "escmanager.log").read_text().splitlines()
    assert re.search(
        rf"\[cl=SYSTEM\]\[tags=escmanager\]\[msg=ESC stopped \({stop.name}\)\]", lines[-1]
    )
    assert lines[-1] in stderr.splitlines()  # the console shows it too
    for name in ("escmanager", "mona"):
        assert not (home / "run" / f"{name}.json").exists(), f"{name}'s record left behind"
    # uvicorn's INFO lines are not tagged as errors.
    uvicorn_lines = [line for line in lines if "Uvicorn running on" in line]
    assert uvicorn_lines and all("[cl=NBI][tags=uvicorn]" in line for line in uvicorn_lines)
