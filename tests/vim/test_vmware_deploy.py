"""A real controller node on the vCenter simulator: `escadm deployment deploy` of
examples/vims/vmware.yaml puts its VMs on vCenter (seen there, not through the
controller) and `undeploy` removes them; what vCenter refuses reaches the operator in
vCenter's words, and an HTTP 503 of vCenter is retried until the deploy succeeds."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import (
    ControllerProcess,
    Node,
    controller_id_of,
    escadm,
    escadm_ok,
    fast_settings,
)
from vcsim_process import QUOTA_MESSAGE, Vcsim, shared

from esc.config import NodeHome
from esc.node.setup import init_node

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).parents[2] / "examples" / "vims" / "vmware.yaml"
# The preloaded VMs of the simulator: nobody's, so the controller never touches them.
UNTAGGED = ["DC0_H0_VM0", "DC0_H0_VM1", "DC0_C0_RP0_VM1"]


@dataclass
class VmwareNode:
    home: Path
    vcsim: Vcsim
    api: httpx.Client  # the node's REST API, as admin: what the controller recorded
    controller_id: str  # what its instances are tagged with

    def deploy(self, name: str, **group: str) -> tuple[int, str]:
        """Deploy the example as deployment `name`, its groups' fields as `group` says."""
        descriptor = yaml.safe_load(EXAMPLE.read_text())
        descriptor["deployment"]["name"] = name
        for vm_group in descriptor["deployment"]["vm_groups"]:
            vm_group.update(group)
        path = self.home / f"{name}.yaml"
        path.write_text(yaml.safe_dump(descriptor))
        result = escadm("deployment", "deploy", str(path), "--timeout", "60", home=self.home)
        return result.returncode, result.stdout + result.stderr

    def vm_ids(self, name: str) -> set[str]:
        shown = self.api.get(f"/v0/tenants/demo/deployments/{name}").raise_for_status().json()
        return {vm["id"] for group in shown["vm_groups"] for vm in group["vms"]}

    def on_vcenter(self, name: str) -> dict[str, object]:
        """The VMs vCenter has of deployment `name`, by VM id, found by their tags."""
        ids = self.vm_ids(name)
        tagged = self.vcsim.vms_of(self.controller_id)
        return {vm_id: vm for vm_id, vm in tagged.items() if vm_id in ids}

    def undeploy(self, name: str) -> None:
        escadm_ok("deployment", "undeploy", name, "--timeout", "60", home=self.home)


@pytest.fixture(scope="module")
def node(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VmwareNode]:
    """A node whose [vim] is the simulator's vCenter, its controller an `escadm run`."""
    vcsim = shared(request)
    home = NodeHome(tmp_path_factory.mktemp("vmware-node") / "home")
    settings = fast_settings(
        f"sqlite:///{home.root / 'data' / 'esc.db'}",
        vim={
            "driver": "vmware",
            "vmware": vcsim.settings(password_file="vcenter.password").model_dump(mode="json"),
        },
        engine={"vim_backoff": 0.2},  # a retried 503 waits a fifth of a second
    )
    made = init_node(home, settings)
    shutil.copy(vcsim.password_file, home.root / "vcenter.password")
    (home.root / "vcenter.password").chmod(0o600)
    controller = ControllerProcess(Node(home, settings, made.admin_password or ""))
    controller.start()
    api = httpx.Client(base_url=controller.node.base_url, auth=controller.node.auth, timeout=10)
    try:
        yield VmwareNode(home.root, vcsim, api, controller_id_of(home, settings))
    finally:
        api.close()
        controller.terminate()
        controller.kill()
    for name in UNTAGGED:
        assert vcsim.vm_named(name).runtime.powerState == "poweredOn", f"{name} was touched"


def test_deploy_puts_the_vms_on_vcenter_and_undeploy_removes_them(node: VmwareNode) -> None:
    code, output = node.deploy("vnf-on-vcenter")
    assert code == 0, output
    assert "DEPLOY demo/vnf-on-vcenter: SUCCESS" in output
    on_vcenter = node.on_vcenter("vnf-on-vcenter")
    assert set(on_vcenter) == node.vm_ids("vnf-on-vcenter")
    assert len(on_vcenter) == 3  # router 1, firewall 2
    hardware = sorted(
        (vm.config.hardware.numCPU, vm.config.hardware.memoryMB) for vm in on_vcenter.values()
    )
    assert hardware == [(1, 2048), (2, 4096), (2, 4096)]
    assert all(vm.runtime.powerState == "poweredOn" for vm in on_vcenter.values())
    assert all("guestinfo.userdata" in node.vcsim.options(vm) for vm in on_vcenter.values())
    names = [vm.name for vm in on_vcenter.values()]
    node.undeploy("vnf-on-vcenter")
    assert set(on_vcenter).isdisjoint(node.vcsim.vms_of("esc"))
    assert [node.vcsim.vm_named(name) for name in names] == [None] * 3


def test_a_refusal_of_vcenter_ends_the_deploy_failed_in_its_words(node: VmwareNode) -> None:
    node.vcsim.fail_task("CloneVM_Task", "InsufficientResourcesFault", QUOTA_MESSAGE)
    code, output = node.deploy("over-quota")
    assert code == 1, output
    assert "DEPLOY demo/over-quota FAILED" in output
    assert QUOTA_MESSAGE in " ".join(output.split())
    assert node.on_vcenter("over-quota") == {}


def test_a_missing_template_is_refused_naming_vcenters_images(node: VmwareNode) -> None:
    code, output = node.deploy("no-image", image="ubuntu-99.04")
    assert code == 1, output
    assert "unknown image 'ubuntu-99.04'; the vCenter's images are vnf-image" in output
    assert node.api.get("/v0/tenants/demo/deployments/no-image").status_code == 404


def test_a_503_of_vcenter_is_retried_and_the_deploy_succeeds(node: VmwareNode) -> None:
    node.vcsim.fail_http("CloneVM_Task", status=503)
    code, output = node.deploy("after-503")
    assert code == 0, output
    assert node.vcsim.pending_faults() == []  # the 503 was served...
    assert len(node.on_vcenter("after-503")) == 3  # ...and no VM was made twice
    logs = "".join(p.read_text() for p in (node.home / "log").glob("*.log"))
    assert "503 Service Unavailable" in logs


def test_bad_credentials_are_refused_naming_the_login(node: VmwareNode) -> None:
    password = node.home / "vcenter.password"
    right = password.read_text()
    password.write_text("a-wrong-password\n")
    node.vcsim.end_sessions()  # the controller's session too: it must log in again
    try:
        code, output = node.deploy("bad-login")
        assert code == 1, output
        assert "refused the login of user 'esc@vsphere.local': Login failure" in output
        health = escadm("health", home=node.home)
        assert health.returncode == 1 and "vim: vCenter at" in health.stdout
        assert "refused the login" in health.stdout
    finally:
        password.write_text(right)
    code, output = node.deploy("good-login")  # the next login reads the password again
    assert code == 0, output
    assert len(node.on_vcenter("good-login")) == 3
