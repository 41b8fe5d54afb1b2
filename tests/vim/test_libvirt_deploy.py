"""A real controller node (`escadm run`) on the libvirt VIM deploys examples/vims/libvirt.yaml.

The VIM is libvirt's test driver served by a private libvirtd (test+unix:///default),
so the controller's process and the test's each have a connection to the same
domains: the test checks on libvirt itself what the controller made. The test's
connection also keeps the test driver's state alive (it lives while one is open).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import tomli_w
from conftest import ESCADM, escadm, free_port, need
from libvirt_testbed import PrivateLibvirtd, daemon_missing, make_disk_image

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "examples" / "vims" / "libvirt.yaml"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateLibvirtd]:
    need(daemon_missing())
    daemon = PrivateLibvirtd(tmp_path_factory.mktemp("libvirtd"))
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


class Observer:
    """The test's own connection to the daemon's test driver: what libvirt holds."""

    def __init__(self, uri: str) -> None:
        import libvirt

        self.uri = uri
        self.connection = libvirt.open(uri)

    def reopen(self) -> None:
        import libvirt

        self.connection = libvirt.open(self.uri)

    def esc_domains(self) -> dict[str, dict[str, str]]:
        """Every domain with an ESC record: name -> its tags."""
        from esc.vim.libvirt import LibvirtVim

        found = {}
        for dom in self.connection.listAllDomains(0):
            record = LibvirtVim.record_of(dom)
            if record is not None:
                found[dom.name()] = {**record.tags, "active": str(bool(dom.isActive()))}
        return found


class NodeProcess:
    """`escadm run`: the whole controller node in one process."""

    def __init__(self, home: Path, admin_password: str) -> None:
        self.home = home
        self.proc: subprocess.Popen | None = None
        port = tomllib.loads((home / "esc.toml").read_text())["api"]["port"]
        self.api = httpx.Client(
            base_url=f"http://127.0.0.1:{port}", auth=("admin", admin_password), timeout=10
        )

    def start(self, timeout: float = 60) -> None:
        self.proc = subprocess.Popen(
            [ESCADM, "run", "--home", str(self.home)],
            stdout=(self.home / "log" / "escadm-run.out").open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.api.get("/esc/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert self.proc.poll() is None, self.logs()
            assert time.monotonic() < deadline, f"not up within {timeout} s: {self.logs()}"
            time.sleep(0.1)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in (self.home / "log").glob("*"))

    def transaction(self, tx_id: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            tx = self.api.get(f"/v0/transactions/{tx_id}").json()
            if tx["state"] in ("SUCCESS", "FAILED"):
                return tx
            assert time.monotonic() < deadline, f"transaction still {tx['state']}"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.api.close()


@pytest.fixture
def node(daemon: PrivateLibvirtd, tmp_path: Path) -> Iterator[tuple[NodeProcess, Observer]]:
    observer = Observer(daemon.uri("test+unix:///default"))
    home = tmp_path / "home"
    made = escadm("init", "--api-port", str(free_port()), "--json", home=home, check=True)
    images = home / "images"
    images.mkdir()
    make_disk_image(images / "debian-12.qcow2")
    # An image the driver lists but cannot use: no qcow2 inside.
    (images / "broken.qcow2").write_text("not a disk image\n")
    config_file = home / "esc.toml"
    config = tomllib.loads(config_file.read_text())
    config["vim"] = {
        "driver": "libvirt",
        "libvirt": {"uri": observer.uri, "image_dir": "images", "shutdown_timeout": 1},
    }
    config["engine"] = {"vim_backoff": 0.2}
    config_file.write_text(tomli_w.dumps(config))
    node = NodeProcess(home, json.loads(made.stdout)["admin_password"])
    node.start()
    try:
        yield node, observer
    finally:
        node.stop()
        observer.connection.close()


def descriptor(tmp_path: Path, name: str, image: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"tenant: demo\ndeployment:\n  name: {name}\n  vm_groups:\n"
        f"    - {{name: g, image: {image}, flavor: m1.tiny, bootup_time: 30}}\n"
    )
    return path


@pytest.mark.slow
def test_a_node_deploys_the_example_on_libvirt_and_undeploys_it(
    node: tuple[NodeProcess, Observer], daemon: PrivateLibvirtd, tmp_path: Path
) -> None:
    node_process, observer = node
    home = node_process.home
    deployed = escadm("deployment", "deploy", str(EXAMPLE), home=home, check=True)
    assert "DEPLOY demo/kvm-web: SUCCESS" in deployed.stdout

    # On libvirt: one running domain per VM (1 lb + 2 app), each tagged with its VM id
    # and this controller's id, each with its own overlay and seed.
    shown = node_process.api.get("/v0/tenants/demo/deployments/kvm-web").json()
    vm_ids = sorted(vm["id"] for group in shown["vm_groups"] for vm in group["vms"])
    domains = observer.esc_domains()
    assert sorted(d["esc-vm-id"] for d in domains.values()) == vm_ids
    assert len(vm_ids) == 3
    assert sorted(domains) == sorted(f"esc-{vm_id}" for vm_id in vm_ids)
    assert all(d["active"] == "True" for d in domains.values())
    assert len({d["esc-controller"] for d in domains.values()}) == 1
    instances = home / "data" / "vim" / "libvirt" / "instances"
    assert sorted(p.name for p in instances.iterdir()) == vm_ids
    assert all((instances / vm_id / "seed.iso").is_file() for vm_id in vm_ids)

    undeployed = escadm("deployment", "undeploy", "kvm-web", home=home, check=True)
    assert "UNDEPLOY demo/kvm-web: SUCCESS" in undeployed.stdout
    assert observer.esc_domains() == {}
    assert list(instances.iterdir()) == []
    assert (home / "images" / "debian-12.qcow2").is_file()

    # Refused at create: the image is no qcow2; the transaction ends FAILED in
    # qemu-img's own words, and nothing is left on libvirt.
    refused = escadm("deployment", "deploy", str(descriptor(tmp_path, "bad", "broken")), home=home)
    assert refused.returncode != 0
    assert "DEPLOY demo/bad FAILED" in refused.stderr + refused.stdout
    assert "qemu-img create failed" in refused.stderr + refused.stdout
    assert observer.esc_domains() == {}

    # libvirtd is down when the deploy starts: the create fails transiently, is
    # retried, and succeeds once libvirtd is back.
    daemon.stop_libvirtd()
    try:
        accepted = escadm(
            "deployment", "deploy", str(descriptor(tmp_path, "later", "debian-12")),
            "--no-wait", "--json", home=home, check=True,
        )  # fmt: skip
        time.sleep(0.5)
    finally:
        daemon.start_libvirtd()
    observer.reopen()  # the test driver's state went with the old daemon
    tx = node_process.transaction(json.loads(accepted.stdout)["transaction_id"])
    assert tx["state"] == "SUCCESS", tx
    assert "retrying" in node_process.logs() and "Failed to connect socket" in node_process.logs()
    assert len(observer.esc_domains()) == 1
