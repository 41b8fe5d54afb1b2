"""ESC's own node VMs on vCenter (govmomi's simulator), driven as an operator drives them:
`escadm node ... --provider vmware` against a node home whose [vim.vmware] names the
simulator (the first deploy by the escadm program itself, the rest in this process, to
spare a Python start-up per command). What vCenter holds is read bypassing ESC."""

from __future__ import annotations

import base64
import json
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result
from conftest import escadm
from vcsim_process import IMAGE, NETWORK, Vcsim, shared

from esc.cli.main import cli
from esc.config import NodeHome, Settings
from esc.ha.providers.vim import NODE_CONTROLLER
from esc.node.firstboot import init_argv
from esc.node.setup import init_node

NET = "198.18.73"
DEPLOY = [
    *("node", "deploy", "--provider", "vmware", "--image", IMAGE, "--flavor", "m1.tiny"),
    *("--name", "esc-a", "--network", NETWORK, "--ip", f"{NET}.11/24"),
    *("--gateway-ip", f"{NET}.1", "--ha-node-list", f"{NET}.11,{NET}.12"),
    *("--kad-vip", f"{NET}.100/24", "--kad-vif", "eth0", "--json"),
]


@pytest.fixture(scope="module")
def vcsim(request: pytest.FixtureRequest) -> Vcsim:
    return shared(request)


@pytest.fixture
def home(tmp_path: Path, vcsim: Vcsim) -> Iterator[Path]:
    settings = vcsim.settings(password_file=str(vcsim.password_file)).model_dump(mode="json")
    node = NodeHome(tmp_path / "home")
    init_node(node, Settings.model_validate({"vim": {"driver": "vmware", "vmware": settings}}))
    yield node.root
    vcsim.guest_tools(False)
    vcsim.clear_faults()
    for vm in vcsim.vms_of(NODE_CONTROLLER).values():
        vcsim.destroy(vm)


def run(home: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, [*args, "--home", str(home)])


def node(home: Path, *args: str) -> dict:
    result = run(home, *args)
    assert result.exit_code == 0, f"{args}: {result.output}"
    return json.loads(result.output)


def guestinfo(vcsim: Vcsim, vm: object, key: str) -> str:
    return base64.b64decode(vcsim.options(vm)[key]).decode()


def test_a_node_vm_is_deployed_fenced_deleted_and_redeployed_alike(
    vcsim: Vcsim, home: Path
) -> None:
    vcsim.guest_tools(True)  # so that a graceful stop would be seen asking the guest
    result = escadm(*DEPLOY, home=home)
    assert result.returncode == 0, result.stdout + result.stderr
    deployed = json.loads(result.stdout)
    assert (deployed["name"], deployed["state"], deployed["ip"]) == (
        "esc-a",
        "RUNNING",
        f"{NET}.11",
    )

    # What vCenter holds: one VM tagged as ESC's nodes, never as a controller's; its
    # guestinfo gives the guest its fixed IP and the day-0 that runs its escadm init.
    (vm,) = vcsim.vms_of(NODE_CONTROLLER).values()
    assert vm.name == "esc-a-esc-a"
    metadata = json.loads(guestinfo(vcsim, vm, "guestinfo.metadata"))
    assert metadata["local-hostname"] == "esc-a"
    (nic,) = metadata["network"]["ethernets"].values()
    assert nic["addresses"] == [f"{NET}.11/24"]
    (day0,) = yaml.safe_load(guestinfo(vcsim, vm, "guestinfo.userdata"))["write_files"]
    assert day0["path"] == "/etc/esc/day0/esc-node.toml"
    parameters = tomllib.loads(base64.b64decode(day0["content"]).decode())
    assert init_argv(parameters, Path("/etc/esc/day0"))[:5] == [
        *("--node-name", "esc-a", "--ha", "--ha-node-list", f"{NET}.11,{NET}.12"),
    ]
    assert vcsim.driver().list_instances() == []  # a controller on this vCenter sees none

    # A power-off asks the guest first; a fence does not: vCenter powers it off at once.
    assert node(home, "node", "power-off", "esc-a", "--grace", "5", "--json")["state"] == "STOPPED"
    assert vcsim.events(vm)[-2:] == ["VmGuestShutdownEvent", "VmPoweredOffEvent"]
    assert node(home, "node", "power-on", "esc-a", "--json")["state"] == "RUNNING"
    assert node(home, "node", "fence", f"{NET}.11", "--json")["state"] == "STOPPED"
    events = vcsim.events(vm)
    since_on = events[len(events) - events[::-1].index("VmPoweredOnEvent") :]
    assert "VmGuestShutdownEvent" not in since_on and since_on[-1] == "VmPoweredOffEvent"
    assert vm.runtime.powerState == "poweredOff"
    assert node(home, "node", "fence", "esc-a", "--json")["ip"] == f"{NET}.11"  # again: no error

    assert node(home, "node", "delete", "esc-a", "--json") == {"deleted": "esc-a"}
    assert vcsim.vms_of(NODE_CONTROLLER) == {}
    gone = run(home, "node", "show", "esc-a")
    assert gone.exit_code == 1 and "no node esc-a on the vmware VIM" in gone.output

    # The upgrade's redeploy: the same name, the same fixed IP for the guest.
    again = node(home, *DEPLOY)
    assert (again["name"], again["ip"]) == ("esc-a", f"{NET}.11")
    (vm,) = vcsim.vms_of(NODE_CONTROLLER).values()
    assert vm.name == "esc-a-esc-a"
    assert json.loads(guestinfo(vcsim, vm, "guestinfo.metadata"))["network"] == metadata["network"]


def test_what_vcenter_refuses_is_said_in_its_words(vcsim: Vcsim, home: Path) -> None:
    vcsim.fail_task("CloneVM_Task", "InsufficientResourcesFault", "Insufficient resources")
    refused = run(home, *DEPLOY)
    assert refused.exit_code == 1
    assert "could not deploy node esc-a" in refused.output
    assert "Insufficient resources" in refused.output
    assert "Traceback" not in refused.output
    vcsim.fail_http("RetrievePropertiesEx", status=503, times=50)
    busy = run(home, "node", "list", "--json")
    assert busy.exit_code == 3, busy.output
    assert "(ask again)" in busy.output
    vcsim.clear_faults()
    assert node(home, "node", "list", "--json") == []
