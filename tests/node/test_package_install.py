"""A real install through the node API: a node whose venv holds one release wheel (as a
lab node's disk is made: esc.ha.labnodes), supervised on loopback (escadm init and
start), upgraded by uploading another wheel and asking for its install, and the new
release's API then answering for it; a release whose node cannot start is rolled back,
the old release running again; a downgrade, asked for as a rollback, is installed too.

No version string is mocked: each wheel is built from a copy of this tree with its own
test version written into esc/__init__.py, as scripts/build-release builds a release.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import free_port

from esc.ha.labnodes import Machine

ROOT = Path(__file__).parents[2]
OLD, NEW, BROKEN = "1.2.0.98", "1.2.0.99", "1.2.0.100"
INSTALL_BOUND = 300.0  # seconds, one install and its rollback; measured 15 s each, loaded


def build_wheel(out: Path, version: str, *, broken: bool = False) -> Path:
    """This tree as a release wheel of `version`; `broken`: its package raises on import,
    so its node cannot start."""
    source = out / f"src-{version}"
    shutil.copytree(ROOT / "esc", source / "esc", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    init = source / "esc" / "__init__.py"
    text = init.read_text()
    assert '__version__ = "' in text
    text = text.split('__version__ = "')[0] + f'__version__ = "{version}"\n'
    if broken:
        text += 'raise RuntimeError("this test release cannot start")\n'
    init.write_text(text)
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(source)]
    subprocess.run(build, check=True, capture_output=True, timeout=300)
    return out / f"esc-{version}-py3-none-any.whl"


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("wheels")
    with ThreadPoolExecutor() as builds:  # pip's builds are processes: they run at once
        made = {
            version: builds.submit(build_wheel, out, version, broken=version == BROKEN)
            for version in (OLD, NEW, BROKEN)
        }
        return {version: build.result() for version, build in made.items()}


@dataclass
class PackagedNode:
    machine: Machine
    api: httpx.Client

    @property
    def escadm(self) -> str:
        return str(self.machine.venv / "bin" / "escadm")

    def escadm_run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [self.escadm, *args, "--home", str(self.machine.home)],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=self.machine.directory,  # not the checkout: its `esc` would shadow the venv's
        )

    def installed(self) -> list[str]:
        (site,) = self.machine.venv.glob("lib/python3*/site-packages")
        return sorted(p.name for p in site.glob("esc-*.dist-info"))

    def upload(self, wheel: Path) -> None:
        body = wheel.read_bytes()
        response = self.api.put(
            f"/esc/node/packages/{wheel.name}",
            content=body,
            headers={"X-Checksum-Sha256": hashlib.sha256(body).hexdigest()},
        )
        assert response.status_code == 201, response.text

    def install(self, version: str, **extra: object) -> dict:
        """Ask for the install and follow it to its end, across the API's restart."""
        asked = self.api.post("/esc/node/package/install", json={"version": version, **extra})
        assert asked.status_code == 202, asked.text
        assert asked.headers["location"] == "/esc/node/package/install"
        assert asked.json()["to"] == version and asked.json()["state"] == "stopping"
        deadline = time.monotonic() + INSTALL_BOUND
        seen = set()
        while time.monotonic() < deadline:
            try:
                state = self.api.get("/esc/node/package/install").json()
            except httpx.TransportError:  # stopped, or not started yet
                time.sleep(0.2)
                continue
            seen.add(state["state"])
            if state["state"] in ("done", "failed"):
                state["seen"] = seen
                return state
            time.sleep(0.2)
        log = (self.machine.home / "install" / "installer.log").read_text()
        raise AssertionError(f"the install of {version} did not end: {log[-3000:]}")

    def version(self) -> str:
        return self.api.get("/esc/version").json()["full"]


@pytest.fixture
def node(tmp_path: Path, wheels: dict[str, Path]) -> Iterator[PackagedNode]:
    # Only a lab node's disk: the node listens on loopback, no namespace is needed.
    machine = Machine("pkg-node", tmp_path / "node", ipaddress.IPv4Interface("127.0.0.1/8"), "", "")
    machine.install(wheels[OLD])
    packaged = PackagedNode(machine, httpx.Client(timeout=30))
    port = free_port()
    init = packaged.escadm_run("init", "--api-port", str(port), "--json")
    assert init.returncode == 0, init.stdout + init.stderr
    password = json.loads(init.stdout)["admin_password"]
    packaged.api = httpx.Client(
        base_url=f"http://127.0.0.1:{port}", auth=("admin", password), timeout=30
    )
    started = packaged.escadm_run("start")
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        yield packaged
    finally:
        packaged.escadm_run("stop")
        packaged.api.close()


def test_a_node_is_upgraded_by_package_and_a_release_that_cannot_start_is_rolled_back(
    node: PackagedNode, wheels: dict[str, Path]
) -> None:
    assert node.version() == OLD and node.installed() == [f"esc-{OLD}.dist-info"]
    for version in (NEW, BROKEN):
        node.upload(wheels[version])

    upgraded = node.install(NEW)
    assert upgraded["state"] == "done", json.dumps(upgraded, indent=1, default=str)
    assert (upgraded["from"], upgraded["to"], upgraded["error"]) == (OLD, NEW, None)
    assert [(s["name"], s["ok"]) for s in upgraded["steps"]] == [
        (name, True) for name in ("stop", "save", "install", "start", "check")
    ]
    assert f"the API answers version {NEW}" in upgraded["steps"][-1]["detail"]
    assert all(s["started_at"] <= s["ended_at"] for s in upgraded["steps"])
    assert node.version() == NEW and node.installed() == [f"esc-{NEW}.dist-info"]
    facts = node.api.get("/esc/node").json()
    assert facts["version"] == NEW and facts["health"]["passed"] is True
    again = node.api.post("/esc/node/package/install", json={"version": NEW})
    assert again.status_code == 409 and "runs on this node already" in again.json()["detail"]

    failed = node.install(BROKEN)
    assert failed["state"] == "failed", json.dumps(failed, indent=1, default=str)
    assert failed["rolled_back_to"] == NEW
    assert "start:" in failed["error"] and f"rolled back to {NEW}" in failed["error"]
    assert "this test release cannot start" in failed["error"]
    steps = {s["name"]: s["ok"] for s in failed["steps"]}
    assert steps == {
        "stop": True,
        "save": True,
        "install": True,
        "start": False,
        "restore": True,
        "start-old": True,
        "check-old": True,
    }
    assert "rolling_back" in failed["seen"]
    assert node.version() == NEW and node.installed() == [f"esc-{NEW}.dist-info"]
    status = node.escadm_run("status")
    assert status.returncode == 0, status.stdout + status.stderr

    node.upload(wheels[OLD])
    refused = node.api.post("/esc/node/package/install", json={"version": OLD})
    assert refused.status_code == 409 and '"rollback": true' in refused.json()["detail"]
    back = node.install(OLD, rollback=True)
    assert back["state"] == "done" and back["rollback"] is True, back
    assert node.version() == OLD and node.installed() == [f"esc-{OLD}.dist-info"]
    assert os.stat(node.machine.home / "install" / "state.json").st_mode & 0o077 == 0
