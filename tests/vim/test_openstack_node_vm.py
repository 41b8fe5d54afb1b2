"""ESC's own node VMs on a real nova (nova_server.py), through the VIM node provider:
a node's whole life, its name, fixed IP and floating IP the same on the server of a
redeploy; the upgrade's replacement of a node by the same node booted from another
image; a fence that returns once nova has the server SHUTOFF; the pair's witness
record in the server's nova metadata, read by another host's provider; and escadm
node against the same cloud. What nova and neutron hold is read from them, bypassing
ESC."""

from __future__ import annotations

import base64
import json
import time
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from nova_cloud import FLAVOR, IMAGE, NovaCloud, shared_cloud
from openstack import exceptions as sdk

from esc.cli.main import cli
from esc.config import NodeHome, Settings
from esc.ha.provider import NodeSpec, PermanentProviderError, TransientProviderError, UnknownNode
from esc.ha.providers.vim import NODE_CONTROLLER, VimNodeProvider
from esc.node.firstboot import PAIR_FILE, init_argv
from esc.node.setup import init_node
from esc.upgrade.node_replace import recorded_parameters, replace_node
from esc.vim.base import TAG_CONTROLLER, TAG_VM, InstanceState

NET = "198.18.10"  # nova_server.py's network mgmt, 198.18.10.0/24
FLOATING, OTHER_FLOATING = "198.19.100.12", "198.19.100.13"  # two of its public network's
NEW_IMAGE = "ubuntu-22.04"  # nova_server.py's other glance image
SPEC = NodeSpec(
    name="esc-b",
    image=IMAGE,
    flavor=FLAVOR,
    network="mgmt",
    ip=f"{NET}.12/24",
    gateway_ip=f"{NET}.1",
    ha_node_list=(f"{NET}.11", f"{NET}.12"),
    kad_vip=f"{NET}.100/24",
    kad_vif="eth0",
    floating_ip=FLOATING,
)
REASON = "its standby stopped streaming at 12:00"
PAIR = '{"kind": "esc-ha-pair", "secret": "s3cr3t"}'


@pytest.fixture(scope="module")
def nova(request: pytest.FixtureRequest) -> NovaCloud:
    return shared_cloud(request)


@pytest.fixture
def cloud(nova: NovaCloud) -> Iterator[NovaCloud]:
    """The module's nova, emptied after each test."""
    yield nova
    nova.clean()


def provider_on(cloud: NovaCloud) -> VimNodeProvider:
    """A node provider of its own on the cloud, as another host makes one."""
    return VimNodeProvider(cloud.driver())


def servers(cloud: NovaCloud) -> list[Any]:
    """The project's servers, as the admin lists them (a deleted one may still be listed,
    DELETED, for a moment)."""
    return [s for s in cloud.servers() if s.status != "DELETED"]


def server_of(cloud: NovaCloud, name: str) -> Any:
    """The server of node `name`, as the admin sees it."""
    (server,) = [s for s in servers(cloud) if s.metadata.get(TAG_VM) == name]
    return server


def on_nova(cloud: NovaCloud, name: str) -> tuple[Any, Any, Any]:
    """The node's server, its one port and the floating IP FLOATING, as nova and neutron
    hold them."""
    server = server_of(cloud, name)
    (port,) = cloud.admin.network.ports(device_id=server.id)
    (fip,) = cloud.admin.network.ips(floating_ip_address=FLOATING)
    return server, port, fip


def recorded_on_nova(server: Any) -> dict:
    """The node's parameters as the server's nova metadata holds them, in parts."""
    count = int(server.metadata["esc.meta.node.parts"])
    return json.loads("".join(server.metadata[f"esc.meta.node.{i}"] for i in range(1, count + 1)))


def test_a_node_on_nova_from_deploy_to_redeploy_keeps_its_name_and_addresses(
    cloud: NovaCloud,
) -> None:
    nodes = provider_on(cloud)
    deployed = nodes.deploy(SPEC)
    assert (deployed.name, deployed.state, deployed.image) == ("esc-b", "RUNNING", IMAGE)
    assert (deployed.ip, deployed.floating_ip) == (f"{NET}.12", FLOATING)
    assert deployed.parameters == SPEC.parameters()

    # What nova holds: one server named after the node, tagged as ESC's nodes, its port
    # on mgmt with the fixed IP and the floating IP on that port; its day-0 the escadm
    # init of the node; its parameters in its nova metadata.
    server, port, fip = on_nova(cloud, "esc-b")
    assert server.name == "esc-b"
    assert {k: server.metadata[k] for k in (TAG_CONTROLLER, TAG_VM)} == {
        TAG_CONTROLLER: NODE_CONTROLLER,
        TAG_VM: "esc-b",
    }
    (mgmt,) = cloud.admin.network.networks(name="mgmt")
    assert port.network_id == mgmt.id
    assert [f["ip_address"] for f in port.fixed_ips] == [f"{NET}.12"]
    assert (fip.port_id, fip.fixed_ip_address) == (port.id, f"{NET}.12")
    (day0,) = yaml.safe_load(base64.b64decode(server.user_data))["write_files"]
    assert day0["path"] == "/etc/esc/day0/esc-node.toml"
    assert init_argv(tomllib.loads(day0["content"]), Path("/etc/esc/day0")) == [
        *("--node-name", "esc-b", "--ha", "--ha-node-list", f"{NET}.11,{NET}.12"),
        *("--kad-vip", f"{NET}.100/24", "--gateway-ip", f"{NET}.1", "--kad-vif", "eth0"),
    ]
    assert recorded_on_nova(server) == SPEC.parameters()
    controller = cloud.driver(f"ctl-{uuid.uuid4().hex[:8]}")
    assert controller.list_instances() == []  # a controller on this project sees none

    # Another host's provider shows it alike: by name, fixed or floating address.
    other = provider_on(cloud)
    assert other.show("esc-b") == deployed == other.show(f"{NET}.12") == other.show(FLOATING)

    # Deployed again alike: left as it is; with other parameters: refused, named.
    assert nodes.deploy(SPEC) == deployed
    with pytest.raises(
        PermanentProviderError,
        match=r"exists already .* another floating_ip, image: escadm node delete esc-b first",
    ):
        nodes.deploy(
            NodeSpec(**{**vars(SPEC), "image": "ubuntu-22.04", "floating_ip": OTHER_FLOATING})
        )
    assert [s.id for s in servers(cloud)] == [server.id]
    (other_fip,) = cloud.admin.network.ips(floating_ip_address=OTHER_FLOATING)
    assert other_fip.port_id is None

    nodes.power_off("esc-b", grace=5)
    assert server_of(cloud, "esc-b").status == "SHUTOFF"
    stopped = other.show(f"{NET}.12")  # its address is recorded on nova: known while off
    assert (stopped.state, stopped.ip, stopped.floating_ip) == ("STOPPED", f"{NET}.12", FLOATING)

    # Deleted: the server and its port go; the floating IP stays the project's, free.
    nodes.delete("esc-b")
    assert servers(cloud) == []
    assert list(cloud.admin.network.ports(device_id=server.id)) == []
    (fip,) = cloud.admin.network.ips(floating_ip_address=FLOATING)
    assert fip.port_id is None
    with pytest.raises(UnknownNode, match="no node esc-b on the openstack VIM"):
        nodes.show("esc-b")

    # The upgrade's redeploy: a new server with the same name, fixed IP and floating IP.
    again = other.deploy(SPEC)
    assert (again.name, again.state, again.ip, again.floating_ip) == (
        "esc-b",
        "RUNNING",
        f"{NET}.12",
        FLOATING,
    )
    assert again.parameters == deployed.parameters
    new, new_port, fip = on_nova(cloud, "esc-b")
    assert new.id != server.id and new.name == "esc-b"
    assert [f["ip_address"] for f in new_port.fixed_ips] == [f"{NET}.12"]
    assert (fip.port_id, fip.fixed_ip_address) == (new_port.id, f"{NET}.12")
    assert recorded_on_nova(new) == SPEC.parameters()


def actions(cloud: NovaCloud, server_id: str) -> list[str]:
    """What nova did to the server, oldest first (its instance actions, kept by nova after
    the server is deleted)."""
    done = sorted(cloud.admin.compute.server_actions(server_id), key=lambda a: a.start_time)
    return [a.action for a in done]


def day0_files(server: Any) -> dict[str, str]:
    """The day-0 files in the server's user data, by path."""
    files = yaml.safe_load(base64.b64decode(server.user_data))["write_files"]
    return {f["path"]: f["content"] for f in files}


def test_the_upgrade_replaces_a_node_on_nova_by_a_server_of_the_other_image(
    cloud: NovaCloud,
) -> None:
    nodes = provider_on(cloud)
    spec = NodeSpec(
        **{
            **vars(SPEC),
            "init_options": (("api-port", "8080"),),
            "vim_settings": (("driver", "openstack"),),
        }
    )
    nodes.deploy(spec)
    old, old_port, _ = on_nova(cloud, "esc-b")
    recorded = recorded_parameters(nodes, "esc-b")
    assert recorded == spec.parameters() and recorded["joins_pair"] is False

    lines: list[str] = []
    started = time.monotonic()
    replaced = replace_node(provider_on(cloud), "esc-b", recorded, NEW_IMAGE, PAIR, lines.append)
    seconds = time.monotonic() - started
    assert (replaced.state, replaced.image, replaced.ip, replaced.floating_ip) == (
        InstanceState.RUNNING,
        NEW_IMAGE,
        f"{NET}.12",
        FLOATING,
    )
    assert [line.split(": ", 1)[1] for line in lines] == [
        "orderly shutdown (up to 60 s)",
        "deleting it with its disks",
        f"deploying it from {NEW_IMAGE}",
    ]

    # What nova holds: the old server stopped, then deleted, gone with its port; one new
    # server of the same name booted from the other glance image, its port on mgmt with
    # the same fixed IP, the floating IP moved onto that port.
    assert actions(cloud, old.id) == ["create", "stop", "delete"]
    with pytest.raises(sdk.ResourceNotFound):
        cloud.admin.compute.get_server(old.id)
    assert list(cloud.admin.network.ports(device_id=old.id)) == []
    assert list(cloud.admin.network.ports(id=old_port.id)) == []
    new, new_port, fip = on_nova(cloud, "esc-b")
    assert [s.id for s in servers(cloud)] == [new.id] and new.id != old.id
    assert new.name == "esc-b" and new.status == "ACTIVE"
    image = cloud.admin.image.find_image(NEW_IMAGE, ignore_missing=False)
    assert new.image.id == image.id != old.image.id
    assert new_port.network_id == old_port.network_id
    assert [f["ip_address"] for f in new_port.fixed_ips] == [f"{NET}.12"]
    assert (fip.port_id, fip.fixed_ip_address) == (new_port.id, f"{NET}.12")
    # Its recorded parameters: as deployed, but the image, and it joins its pair now,
    # with the pair file beside its day-0.
    after = recorded_on_nova(new)
    assert after == {**spec.parameters(), "image": NEW_IMAGE, "joins_pair": True}
    assert recorded_parameters(nodes, "esc-b") == after
    files = day0_files(new)
    assert files[f"/etc/esc/day0/{PAIR_FILE}"] == PAIR
    day0 = tomllib.loads(files["/etc/esc/day0/esc-node.toml"])
    assert (day0["init"], day0["vim"]) == ({"api-port": "8080"}, {"driver": "openstack"})
    argv = init_argv(day0, Path("/etc/esc/day0"))
    assert argv[argv.index("--ha-pair-file") + 1] == f"/etc/esc/day0/{PAIR_FILE}"

    # Asked again (an orchestrator taken up again): the server is left as it is, nova
    # asked to do nothing to it.
    again = replace_node(provider_on(cloud), "esc-b", recorded, NEW_IMAGE, PAIR)
    assert again == replaced
    assert [s.id for s in servers(cloud)] == [new.id]
    assert actions(cloud, new.id) == ["create"]
    assert server_of(cloud, "esc-b").status == "ACTIVE"
    (fip,) = cloud.admin.network.ips(floating_ip_address=FLOATING)
    assert fip.port_id == new_port.id
    print(f"\nnode replaced on nova (stop, delete, boot from {NEW_IMAGE}) in {seconds:.1f} s")


def test_a_fenced_node_is_shutoff_on_nova_and_the_witness_record_is_on_its_server(
    cloud: NovaCloud,
) -> None:
    active, standby = provider_on(cloud), provider_on(cloud)  # the pair's two hosts
    active.deploy(
        NodeSpec(**{**vars(SPEC), "name": "esc-a", "ip": f"{NET}.11/24", "floating_ip": ""})
    )
    active.deploy(SPEC)

    # The witness record: written by one host, read by the other, on the server itself.
    assert standby.outdated(f"{NET}.12") is None
    active.mark_outdated(f"{NET}.12", REASON)
    assert standby.outdated(f"{NET}.12") == REASON
    assert standby.outdated(f"{NET}.11") is None
    held = server_of(cloud, "esc-b").metadata
    mark = json.loads(held["esc.meta.outdated"])
    assert mark["reason"] == REASON and mark["since"].startswith("20")
    assert (held[TAG_CONTROLLER], held[TAG_VM]) == (NODE_CONTROLLER, "esc-b")

    # A fence nova fails is not claimed; asked again, it returns with the server SHUTOFF.
    cloud.fail_next(1, 503, service="compute", method="POST", path="/action")
    with pytest.raises(TransientProviderError, match="could not power node esc-b off"):
        active.fence(f"{NET}.12")
    assert server_of(cloud, "esc-b").status == "ACTIVE"
    active.fence(f"{NET}.12")
    assert server_of(cloud, "esc-b").status == "SHUTOFF"
    assert server_of(cloud, "esc-a").status == "ACTIVE"
    active.fence(f"{NET}.12")  # a fenced node: no error, found by its recorded address
    standby.fence("esc-b")  # by name too
    assert server_of(cloud, "esc-b").status == "SHUTOFF"

    # Kept while it is off; cleared by the other host, gone from nova.
    assert standby.outdated(f"{NET}.12") == REASON
    standby.clear_outdated(f"{NET}.12")
    assert active.outdated(f"{NET}.12") is None
    assert not [k for k in server_of(cloud, "esc-b").metadata if k.startswith("esc.meta.outdated")]

    standby.power_on("esc-b")
    assert server_of(cloud, "esc-b").status == "ACTIVE"


def test_escadm_node_deploys_fences_and_deletes_a_node_on_nova(
    cloud: NovaCloud, tmp_path: Path
) -> None:
    home = NodeHome(tmp_path / "home")
    settings = cloud.settings().model_dump(mode="json")
    init_node(
        home, Settings.model_validate({"vim": {"driver": "openstack", "openstack": settings}})
    )

    def node(*args: str) -> dict:
        result = CliRunner().invoke(cli, ["node", *args, "--json", "--home", str(home.root)])
        assert result.exit_code == 0, f"{args}: {result.output}"
        return json.loads(result.output)

    deployed = node(
        *("deploy", "--provider", "openstack", "--image", IMAGE, "--flavor", FLAVOR),
        *("--name", "esc-b", "--network", "mgmt", "--ip", f"{NET}.12/24"),
        *("--gateway-ip", f"{NET}.1", "--ha-node-list", f"{NET}.11,{NET}.12"),
        *("--kad-vip", f"{NET}.100/24", "--kad-vif", "eth0", "--floating-ip", FLOATING),
    )
    assert (deployed["state"], deployed["ip"], deployed["floating_ip"]) == (
        "RUNNING",
        f"{NET}.12",
        FLOATING,
    )
    _, port, fip = on_nova(cloud, "esc-b")
    assert fip.port_id == port.id
    assert node("fence", f"{NET}.12")["state"] == "STOPPED"
    assert server_of(cloud, "esc-b").status == "SHUTOFF"
    assert node("delete", "esc-b") == {"deleted": "esc-b"}
    assert servers(cloud) == []
