"""The README's first deployment, run as written against a running node: every
command succeeds, and the post-event script the example's rule names is found."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import live_vm_processes

from esc.config import NodeHome

ROOT = Path(__file__).parents[2]


def _first_deployment_block() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## First deployment", 1)[1]
    return re.search(r"```\n(.*?)```", section, re.DOTALL).group(1)


@pytest.mark.slow
def test_the_readmes_first_deployment_works_as_written(running: Path) -> None:
    home = running
    block = _first_deployment_block()
    assert "escadm deployment deploy examples/deployment.yaml" in block
    venv_bin = Path(sys.executable).parent
    if not (ROOT / ".venv" / "bin" / "activate").exists():  # the suite's own venv elsewhere
        block = block.replace(". .venv/bin/activate", f". {venv_bin / 'activate'}")
    env = {**os.environ, "ESC_HOME": str(home), "PATH": f"{venv_bin}:{os.environ['PATH']}"}
    # The block ends by undeploying; MONA's first VM_ALIVE (which runs the script) comes a
    # poll after the deploy, so run every line up to the undeploy, wait for the script,
    # then run the rest: every command still runs as written, in order.
    lines = block.splitlines()
    cut = next(i for i, line in enumerate(lines) if "deployment undeploy" in line)
    before = _run(lines[:cut], env)
    assert "DEPLOY demo/web: SUCCESS" in before
    deadline = time.monotonic() + 60
    while "script servicebooted.sh exited 0" not in _logs(home) and time.monotonic() < deadline:
        time.sleep(0.5)
    logs = _logs(home)
    assert "not run: no custom script" not in logs
    assert re.search(r"script servicebooted\.sh exited 0 after [\d.]+ s: VM \S+ \(", logs), logs[
        -3000:
    ]
    activate = next(line for line in lines if "activate" in line)
    _run([activate, *lines[cut:]], env)
    assert not live_vm_processes(NodeHome(home)), "undeploy left VM processes behind"


def _run(lines: list[str], env: dict[str, str]) -> str:
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", "\n".join(lines)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _logs(home: Path) -> str:
    return "".join(p.read_text() for p in (home / "log").glob("*.log"))
