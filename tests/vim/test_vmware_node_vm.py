"""ESC's own node VMs on vCenter (govmomi's simulator), driven as an operator drives them:
`escadm node ... --provider vmware` against a node home whose [vim.vmware] names the
simulator (the first deploy by the escadm program itself, the rest in this process, to
spare a Python start-up per command); and the upgrade's replacement of a node by the
same node cloned from another template, through the node home's provider. What vCenter
holds is read bypassing ESC."""

from __future__ import annotations

import base64
import json
import os
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result
from conftest import escadm
from pyVim.task import WaitForTask
from pyVmomi import vim, vmodl
from vcsim_process import CLUSTER, IMAGE, NETWORK, SOURCE_VM, Vcsim, shared

from esc.cli.main import cli
from esc.config import HaSettings, NodeHome, Settings
from esc.ha.provider import NodeSpec
from esc.ha.providers.vim import NODE_CONTROLLER, VimNodeProvider
from esc.node.firstboot import PAIR_FILE, init_argv
from esc.node.setup import init_node
from esc.upgrade.node_replace import recorded_parameters, replace_node
from esc.vim.base import InstanceState

NET = "198.18.73"
NEW_IMAGE = "vnf-image-b"  # the new release's template, made by the test beside IMAGE
PAIR = '{"kind": "esc-ha-pair", "secret": "s3cr3t"}'
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


@pytest.fixture
def new_template(vcsim: Vcsim) -> Iterator[Any]:
    """A second template in the datacenter's VM folder, as an operator deploys the new
    release's OVA: cloned from the simulator's VM, marked a template."""
    location = vim.vm.RelocateSpec(pool=vcsim.compute(CLUSTER).resourcePool)
    spec = vim.vm.CloneSpec(location=location, template=True, powerOn=False)
    task = vcsim.vm_named(SOURCE_VM).CloneVM_Task(
        folder=vcsim.datacenter.vmFolder, name=NEW_IMAGE, spec=spec
    )
    WaitForTask(task)
    yield task.info.result
    WaitForTask(task.info.result.Destroy_Task())


def events_of(vcsim: Vcsim, moid: str) -> list[str]:
    """The names of vCenter's events about the VM of managed object id `moid`, oldest
    first: found among all events, so those of a VM deleted since are too."""
    spec = vim.event.EventFilterSpec(maxCount=1000)
    found = [
        e
        for e in vcsim.content.eventManager.QueryEvents(spec)
        if e.vm is not None and e.vm.vm._moId == moid
    ]
    return [type(e).__name__.rsplit(".", 1)[-1] for e in sorted(found, key=lambda e: e.key)]


def cloned_from(vcsim: Vcsim, moid: str) -> list[str]:
    """The templates vCenter says the VM of `moid` was cloned from."""
    spec = vim.event.EventFilterSpec(maxCount=1000)
    return [
        e.sourceVm.name
        for e in vcsim.content.eventManager.QueryEvents(spec)
        if isinstance(e, vim.event.VmClonedEvent) and e.vm.vm._moId == moid
    ]


def disk_file(vm: Any) -> Path:
    """The file of the VM's disk (`[datastore] folder/name.vmdk`) in the directory the
    simulator keeps that datastore in."""
    (disk,) = [d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk)]
    datastore, _, path = disk.backing.fileName.partition("] ")
    (store,) = [d for d in vm.datastore if d.name == datastore.lstrip("[")]
    return Path(store.info.url) / path


def test_the_upgrade_replaces_a_node_vm_by_a_clone_of_the_other_template(
    vcsim: Vcsim, home: Path, new_template: Any
) -> None:
    vcsim.guest_tools(True)  # so that the orderly shutdown is seen asking the guest
    nodes = VimNodeProvider.from_settings(HaSettings(provider="vmware"), home)
    spec = NodeSpec(
        name="esc-a",
        image=IMAGE,
        flavor="m1.tiny",
        network=NETWORK,
        ip=f"{NET}.11/24",
        gateway_ip=f"{NET}.1",
        ha_node_list=(f"{NET}.11", f"{NET}.12"),
        kad_vip=f"{NET}.100/24",
        kad_vif="eth0",
    )
    nodes.deploy(spec)
    recorded = recorded_parameters(nodes, "esc-a")
    assert recorded == spec.parameters() and recorded["joins_pair"] is False
    (old,) = vcsim.vms_of(NODE_CONTROLLER).values()
    old_moid, network = old._moId, json.loads(guestinfo(vcsim, old, "guestinfo.metadata"))
    assert cloned_from(vcsim, old_moid) == [IMAGE]
    # Held open: whether vCenter removed the old disk from its datastore is then known.
    old_disk = os.open(disk_file(old), os.O_RDONLY)
    try:
        started = time.monotonic()
        replaced = replace_node(nodes, "esc-a", recorded, NEW_IMAGE, PAIR)
        seconds = time.monotonic() - started
        assert os.fstat(old_disk).st_nlink == 0
    finally:
        os.close(old_disk)
    assert (replaced.state, replaced.image, replaced.ip) == (
        InstanceState.RUNNING,
        NEW_IMAGE,
        f"{NET}.11",
    )

    # What vCenter holds: the old VM shut down by its guest, powered off and removed; one
    # VM of the node's name cloned from the other template, its guestinfo giving the
    # guest the same fixed IP and the pair file beside the day-0; the new parameters in
    # its extraConfig.
    assert events_of(vcsim, old_moid)[-3:] == [
        "VmGuestShutdownEvent",
        "VmPoweredOffEvent",
        "VmRemovedEvent",
    ]
    with pytest.raises(vmodl.fault.ManagedObjectNotFound):
        old.name  # noqa: B018 - read from vCenter: the VM is no more
    (new,) = vcsim.vms_of(NODE_CONTROLLER).values()
    assert new._moId != old_moid and new.name == "esc-a-esc-a"
    assert new.runtime.powerState == "poweredOn"
    assert cloned_from(vcsim, new._moId) == [NEW_IMAGE]
    assert json.loads(guestinfo(vcsim, new, "guestinfo.metadata"))["network"] == network["network"]
    written = yaml.safe_load(guestinfo(vcsim, new, "guestinfo.userdata"))["write_files"]
    files = {f["path"]: base64.b64decode(f["content"]).decode() for f in written}
    assert files[f"/etc/esc/day0/{PAIR_FILE}"] == PAIR
    argv = init_argv(tomllib.loads(files["/etc/esc/day0/esc-node.toml"]), Path("/etc/esc/day0"))
    assert argv[argv.index("--ha-pair-file") + 1] == f"/etc/esc/day0/{PAIR_FILE}"
    after = json.loads(vcsim.options(new)["esc.meta.node"])
    assert after == {**spec.parameters(), "image": NEW_IMAGE, "joins_pair": True}
    assert recorded_parameters(nodes, "esc-a") == after

    # Asked again: vCenter is asked nothing that changes the VM.
    seen = events_of(vcsim, new._moId)
    assert replace_node(nodes, "esc-a", recorded, NEW_IMAGE, PAIR) == replaced
    assert events_of(vcsim, new._moId) == seen
    assert [vm._moId for vm in vcsim.vms_of(NODE_CONTROLLER).values()] == [new._moId]
    assert new.runtime.powerState == "poweredOn"
    nodes.close()
    print(f"\nnode VM replaced on vCenter (guest shutdown, destroy, clone) in {seconds:.2f} s")


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
