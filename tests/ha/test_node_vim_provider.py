"""The node provider of a VIM (esc.ha.providers.vim) on the fake VIM: a node VM's whole
life, fencing, the witness record on the VIM, and node VMs kept apart from a
controller's VMs on the same VIM."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from esc.config import HaSettings, NodeHome, Settings
from esc.engine.controller import Controller
from esc.engine.orphans import quarantine_orphans
from esc.engine.vims import read_controller_id
from esc.ha.provider import (
    NodeSpec,
    NodeSpecError,
    PermanentProviderError,
    TransientProviderError,
    UnknownNode,
    load_provider,
)
from esc.ha.providers.vim import NODE_CONTROLLER, VimNodeProvider
from esc.node.firstboot import DAY0_FILE, PAIR_FILE, init_argv
from esc.vim.base import InstanceState, VimDriver, VmSpec
from esc.vim.fake import FakeVim

NET = "198.18.74"
SPEC = NodeSpec(
    name="esc-b",
    image="healthy",
    flavor="m1.tiny",
    network="mgmt",
    ip=f"{NET}.12/24",
    gateway_ip=f"{NET}.1",
    ha_node_list=(f"{NET}.11", f"{NET}.12"),
    kad_vip=f"{NET}.100/24",
    kad_vif="eth0",
    floating_ip="198.19.74.12",
)


@pytest.fixture
def vim_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "vim"
    FakeVim.forget(tmp_path / "vim")


def provider_on(vim_dir: Path) -> VimNodeProvider:
    """A node provider of its own on the VIM of `vim_dir` (as another host makes one)."""
    return VimNodeProvider(FakeVim(vim_dir), "the fake VIM")


def observer(vim_dir: Path) -> FakeVim:
    """The VIM as it is, seen with the node VMs' tags."""
    vim = FakeVim(vim_dir)
    vim.controller_id = NODE_CONTROLLER
    return vim


def test_a_node_is_deployed_shown_powered_off_deleted_and_redeployed_alike(
    vim_dir: Path,
) -> None:
    provider = provider_on(vim_dir)
    deployed = provider.deploy(SPEC)
    assert (deployed.name, deployed.state, deployed.image) == ("esc-b", "RUNNING", "healthy")
    assert (deployed.ip, deployed.floating_ip) == (f"{NET}.12", "198.19.74.12")

    # What the VIM holds: one VM named after the node, its NIC with the fixed and the
    # floating IP, and the day-0 that makes it the node (its escadm init).
    vim = observer(vim_dir)
    assert vim.list_instances() == ["esc-b"]
    made = vim.spec_of("esc-b")
    assert made is not None
    ((nic,),) = [made.interfaces]
    assert (nic.network, nic.ip, nic.floating_ip) == ("mgmt", f"{NET}.12/24", "198.19.74.12")
    assert set(made.day0_config) == {DAY0_FILE}
    day0 = tomllib.loads(made.day0_config[DAY0_FILE])
    assert init_argv(day0, Path("/etc/esc/day0")) == [
        *("--node-name", "esc-b", "--ha", "--ha-node-list", f"{NET}.11,{NET}.12"),
        *("--kad-vip", f"{NET}.100/24", "--gateway-ip", f"{NET}.1", "--kad-vif", "eth0"),
    ]
    assert vim.tags_of("esc-b") == {"esc-controller": "esc-nodes", "esc-vm-id": "esc-b"}

    # Any host with the VIM's credentials shows it alike, from what the VIM holds.
    shown = provider_on(vim_dir).show("esc-b")
    assert shown == deployed
    assert shown.parameters["ha_node_list"] == [f"{NET}.11", f"{NET}.12"]
    assert provider_on(vim_dir).show(f"{NET}.12") == deployed  # by its address too
    assert [n.name for n in provider.nodes()] == ["esc-b"]

    # Deploying it again changes nothing; with another image it is refused, named.
    assert provider.deploy(SPEC) == deployed
    with pytest.raises(PermanentProviderError, match=r"exists already .* another image: escadm"):
        provider.deploy(NodeSpec(**{**vars(SPEC), "image": "slow-boot:1"}))

    provider.power_off("esc-b", grace=5)
    assert provider.show("esc-b").state is InstanceState.STOPPED
    assert ("stop_vm", "esc-b") in vim.calls  # graceful first, as asked
    assert provider.show("esc-b").ip == f"{NET}.12"  # known while off: recorded on the VIM

    provider.delete("esc-b")
    assert vim.list_instances() == []
    with pytest.raises(UnknownNode, match="no node esc-b on the fake VIM"):
        provider.show("esc-b")

    # The upgrade's redeploy: the same parameters give the same node, name and addresses.
    again = provider_on(vim_dir).deploy(SPEC)
    assert (again.name, again.state, again.ip, again.floating_ip) == (
        "esc-b",
        "RUNNING",
        f"{NET}.12",
        "198.19.74.12",
    )
    assert vim.spec_of("esc-b") == made
    assert vim.status("esc-b").ips == (f"{NET}.12", "198.19.74.12")


def test_a_node_joining_its_pair_gets_the_pair_file_as_day0_never_recorded(
    vim_dir: Path,
) -> None:
    pair = json.dumps({"kind": "esc-ha-pair", "secret": "s3cr3t"})
    provider_on(vim_dir).deploy(NodeSpec(**{**vars(SPEC), "ha_pair": pair}))
    made = observer(vim_dir).spec_of("esc-b")
    assert made is not None
    assert made.day0_config[PAIR_FILE] == pair
    day0 = tomllib.loads(made.day0_config[DAY0_FILE])
    assert init_argv(day0, Path("/etc/esc/day0"))[-2:] == [
        "--ha-pair-file",
        "/etc/esc/day0/ha-pair.json",
    ]
    shown = provider_on(vim_dir).show("esc-b")
    assert shown.parameters["joins_pair"] is True
    assert "s3cr3t" not in json.dumps(shown.as_dict())
    assert "s3cr3t" not in repr(NodeSpec(**{**vars(SPEC), "ha_pair": pair}))


def test_fencing_powers_off_hard_and_fencing_a_fenced_node_is_no_error(vim_dir: Path) -> None:
    provider = provider_on(vim_dir)
    provider.deploy(SPEC)
    vim = observer(vim_dir)
    before = len(vim.calls)
    provider_on(vim_dir).fence(f"{NET}.12")  # as the peer names it
    asked = [op for op, vm in vim.calls[before:] if vm == "esc-b"]
    assert "power_off" in asked and "stop_vm" not in asked  # no guest asked first
    assert vim.status("esc-b").state is InstanceState.STOPPED

    provider_on(vim_dir).fence(f"{NET}.12")  # a stopped node's address is recorded
    provider.fence("esc-b")  # by name too
    assert vim.status("esc-b").state is InstanceState.STOPPED

    provider.power_on(f"{NET}.12")
    assert provider.show("esc-b").state is InstanceState.RUNNING

    vim.faults.transient("power_off", vm_id="esc-b")
    with pytest.raises(TransientProviderError, match="could not power node esc-b off"):
        provider.fence("esc-b")
    assert vim.status("esc-b").state is InstanceState.RUNNING  # not claimed as fenced
    provider.fence("esc-b")


def test_unknown_nodes_and_wrong_parameters_are_refused_by_name(vim_dir: Path) -> None:
    provider = provider_on(vim_dir)
    provider.deploy(SPEC)
    for call in (provider.show, provider.delete, provider.power_on, provider.fence):
        with pytest.raises(UnknownNode, match="no node ghost on the fake VIM"):
            call("ghost")
    with pytest.raises(UnknownNode, match=rf"no node .* has address {NET}.99 .*nodes: esc-b\)"):
        provider.fence(f"{NET}.99")
    with pytest.raises(UnknownNode):
        provider.mark_outdated(f"{NET}.99", "lost")

    for wrong, message in (
        ({"name": "Esc_B"}, "node name 'Esc_B'"),
        ({"ha_node_list": (f"{NET}.12",)}, "the pair's two different addresses"),
        ({"ip": f"{NET}.13/24"}, f"ip {NET}.13/24 is not one of ha_node_list"),
        ({"kad_vip": ""}, "needs kad_vip"),
        ({"floating_ip": "far"}, "floating IP 'far' is no IP address"),
        ({"init_options": (("ha", "yes"),)}, "sets --ha itself"),
    ):
        with pytest.raises(NodeSpecError, match=message):
            provider.deploy(NodeSpec(**{**vars(SPEC), "name": "esc-c", **wrong}))
    with pytest.raises(PermanentProviderError, match="give the network its NIC is on"):
        provider.deploy(NodeSpec(**{**vars(SPEC), "name": "esc-c", "network": ""}))
    with pytest.raises(PermanentProviderError, match=r"unknown image 'ubuntu-99.04'"):
        provider.deploy(NodeSpec(**{**vars(SPEC), "name": "esc-c", "image": "ubuntu-99.04"}))
    assert observer(vim_dir).list_instances() == ["esc-b"]


def test_the_witness_record_is_kept_on_the_vim_for_both_nodes(vim_dir: Path) -> None:
    active, standby = provider_on(vim_dir), provider_on(vim_dir)
    active.deploy(NodeSpec(**{**vars(SPEC), "name": "esc-a", "ip": f"{NET}.11/24"}))
    active.deploy(SPEC)
    assert standby.outdated(f"{NET}.12") is None
    active.mark_outdated(f"{NET}.12", "its standby stopped streaming at 12:00")
    assert standby.outdated(f"{NET}.12") == "its standby stopped streaming at 12:00"
    assert standby.outdated(f"{NET}.11") is None
    active.fence(f"{NET}.12")  # still readable while it is off
    assert provider_on(vim_dir).outdated(f"{NET}.12") == "its standby stopped streaming at 12:00"
    mark = json.loads(observer(vim_dir).vm_metadata("esc-b")["outdated"])
    assert mark["since"].startswith("20")
    active.clear_outdated(f"{NET}.12")
    active.clear_outdated(f"{NET}.12")  # a clear mark: not an error
    assert standby.outdated(f"{NET}.12") is None


class MetadataLessVim(FakeVim):
    """A driver that keeps no metadata on its VMs (as the interface's default)."""

    name = "fake"
    vm_metadata = VimDriver.vm_metadata
    set_vm_metadata = VimDriver.set_vm_metadata


def test_a_vim_without_metadata_fences_running_nodes_and_names_what_to_use_instead(
    vim_dir: Path,
) -> None:
    provider = VimNodeProvider(MetadataLessVim(vim_dir), "the plain VIM")
    provider.deploy(SPEC)
    assert provider.show("esc-b").ip == f"{NET}.12"  # from what the VIM reports
    # Nothing on the VIM says what it was deployed with: not deployed over, alike or not.
    with pytest.raises(PermanentProviderError, match=r"exists already .* cannot be told"):
        provider.deploy(SPEC)
    keeping = r"keeps no metadata .* libvirt, openstack or vmware"
    with pytest.raises(PermanentProviderError, match=keeping):
        provider.mark_outdated(f"{NET}.12", "lost")
    with pytest.raises(PermanentProviderError, match=r"or lab, the lab's host agent"):
        provider.outdated(f"{NET}.12")
    provider.fence(f"{NET}.12")  # running: its address is the VIM's
    with pytest.raises(UnknownNode, match="a stopped node's address is known only where"):
        provider.fence(f"{NET}.12")
    provider.fence("esc-b")  # by name it is found, and fencing it again is no error


def test_the_ha_provider_is_named_by_its_vim_driver(tmp_path: Path) -> None:
    home = NodeHome(tmp_path / "home")
    home.root.mkdir()
    home.save(Settings.model_validate({"vim": {"driver": "local"}}))
    ha = HaSettings(provider="fake")
    provider = load_provider(home, ha)
    assert isinstance(provider, VimNodeProvider)
    assert isinstance(provider.driver, FakeVim)
    assert provider.driver.data_dir == home.data / "nodes" / "fake"
    assert provider.driver.controller_id == NODE_CONTROLLER
    provider.check()
    with pytest.raises(
        PermanentProviderError, match=r"'vim' is not valid.*one of: lab, .*fake, libvirt"
    ):
        load_provider(home, HaSettings(provider="vim"))
    with pytest.raises(PermanentProviderError, match=r"reads \[vim.fake\] of esc.toml: no node"):
        load_provider(tmp_path / "nowhere", ha)
    FakeVim.forget(home.data / "nodes" / "fake")


def test_node_vms_are_never_a_controllers_orphans(
    api: TestClient, controller: Controller, tmp_path: Path
) -> None:
    response = api.post("/v0/vims", json={"name": "lab2", "driver": "fake"})
    assert response.status_code == 201, response.text
    vim_dir = controller.home.data / "vims" / "lab2" / "fake"
    try:
        provider_on(vim_dir).deploy(SPEC)
        controllers = FakeVim(vim_dir)
        with controller.db.read() as session:
            controllers.controller_id = read_controller_id(session)
        controllers.create_vm(VmSpec("left-behind", "left-behind", "healthy", "m1.tiny"))

        found = api.get("/v0/vims/orphans").json()
        assert [o["vm_id"] for o in found["orphans"]] == ["left-behind"]
        quarantined = quarantine_orphans(controller.db, controller.vims)
        assert [o.vm_id for o in quarantined] == ["left-behind"]
        assert controllers.status("left-behind").state is InstanceState.STOPPED
        assert provider_on(vim_dir).show("esc-b").state is InstanceState.RUNNING
        assert api.delete("/v0/vims/lab2/orphans/esc-b").status_code == 404
        assert observer(vim_dir).list_instances() == ["esc-b"]
    finally:
        FakeVim.forget(vim_dir)
