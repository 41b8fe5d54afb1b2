"""ESC's own node VMs on a Cisco CSP (the fake CSP of fake_csp.py), through the VIM node
provider: a node is a CSP service whose day-0 file is the NoCloud seed cloud-init in the
node's image reads, with one vNIC on the node's network and the node's address as the
service's ip. Its whole life, fencing, what a CSP cannot do (floating IPs, the witness
record, the record of a node's parameters an upgrade by image reads), the upgrade's
replacement of a node by the same node made from another image, and `escadm node`
against the same CSP. What the CSP holds is read from the fake itself, bypassing ESC."""

from __future__ import annotations

import ipaddress
import json
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result
from conftest import escadm
from fake_csp import REQUESTS, FakeCsp
from target_csp import digest, make_driver, settings_for

from esc.cli.main import cli
from esc.config import NodeHome, Settings, VimSettings
from esc.ha.provider import (
    NodeSpec,
    PermanentProviderError,
    TransientProviderError,
    UnknownNode,
)
from esc.ha.providers.vim import NODE_CONTROLLER, VimNodeProvider, node_driver
from esc.node.firstboot import DAY0_FILE, PAIR_FILE, init_argv
from esc.node.setup import init_node
from esc.upgrade.node_replace import recorded_parameters, replace_node
from esc.vim.base import InstanceState, PermanentVimError
from esc.vim.nocloud import SeedNic, network_config

NET = "198.18.76"
IMAGE = "esc-1.2.0.1.qcow2"  # as an operator uploads it to the CSP's repository
NEW_IMAGE = "esc-1.3.0.1.qcow2"  # the new release's, uploaded beside it
NETWORK = "enp1s0f0"
SPEC = NodeSpec(
    name="esc-b",
    image=IMAGE,
    flavor="m1.small",
    network=NETWORK,
    ip=f"{NET}.12/24",
    gateway_ip=f"{NET}.1",
    ha_node_list=(f"{NET}.11", f"{NET}.12"),
    kad_vip=f"{NET}.100/24",
    kad_vif="eth0",
)
SERVICE = f"esc-{digest(NODE_CONTROLLER)}-esc-b"
SERVICE_PATH = REQUESTS["get_service"]["path"].format(name=SERVICE)
SERVICES_PATH = REQUESTS["create_service"]["path"]
WRITES = ("POST", "PATCH", "PUT", "DELETE")
PAIR = json.dumps({"kind": "esc-ha-pair", "secret": "s3cr3t"})


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeCsp]:
    csp = FakeCsp(tmp_path_factory.mktemp("csp"))
    csp.start()
    yield csp
    csp.stop()


@pytest.fixture(autouse=True)
def empty_csp(fake: FakeCsp) -> Iterator[None]:
    """A CSP with no service, the node image in its repository."""
    fake.reset()
    with fake.lock:
        fake.repository[IMAGE] = fake.repository[NEW_IMAGE] = b"QFI\xfb"
    yield
    fake.reset()


def provider(fake: FakeCsp, home: Path) -> VimNodeProvider:
    """The node provider of a host whose [vim.csp] is the fake CSP."""
    driver = node_driver("csp", settings_for(fake, home), home, home / "data" / "nodes")
    return VimNodeProvider(driver, "the CSP")


def seed(fake: FakeCsp) -> dict[str, str]:
    """The files of the node's day-0 file on the CSP, as the guest's CD holds them."""
    service = fake.service(SERVICE)
    assert service is not None
    assert service["day0_filename"] == f"{SERVICE}-day0.iso"
    assert fake.volume_label(service["day0_filename"]) == "cidata"
    return fake.day0_files(service["day0_filename"])


def written(fake: FakeCsp, since: int = 0) -> list[tuple[str, str, int]]:
    with fake.lock:
        return [r for r in fake.requests[since:] if r[0] in WRITES]


def test_a_node_is_deployed_shown_powered_off_deleted_and_redeployed_alike(
    fake: FakeCsp, tmp_path: Path
) -> None:
    nodes = provider(fake, tmp_path / "a")
    deployed = nodes.deploy(SPEC)
    assert (deployed.name, deployed.state, deployed.ip) == ("esc-b", "RUNNING", f"{NET}.12")
    assert deployed.floating_ip is None

    # What the CSP holds: one service named as the node VMs' (never a controller's),
    # the image and flavor, one vNIC on the node's network, the node's address as its
    # ip, and its day-0 file.
    assert fake.names() == [SERVICE]
    held = fake.service(SERVICE)
    assert held is not None
    small = VimSettings().csp.flavors["m1.small"]
    assert (held["iso_name"], held["numcpu"], held["memory"], held["disk_size"]) == (
        IMAGE,
        small.numcpu,
        small.memory_mb,
        small.disk_gb,
    )
    assert held["power"] == "on"
    assert held["ip"] == f"{NET}.12"
    assert held["vnics"] == {
        "vnic": [
            {
                "nic": 0,
                "type": "access",
                "tagged": "false",
                "model": "virtio",
                "network_name": NETWORK,
            }
        ]
    }
    assert fake.powered_on(SERVICE)
    assert make_driver(fake, tmp_path / "ctl", controller="a-controller").list_instances() == []

    # The day-0 file is a NoCloud seed: cloud-init writes the node's escadm init
    # parameters where its first boot reads them, and gives the NIC its address.
    files = seed(fake)
    assert set(files) == {"meta-data", "user-data", "network-config"}
    assert yaml.safe_load(files["meta-data"])["local-hostname"] == "esc-b"
    (day0,) = yaml.safe_load(files["user-data"])["write_files"]
    assert (day0["path"], day0["permissions"]) == (f"/etc/esc/day0/{DAY0_FILE}", "0600")
    assert init_argv(tomllib.loads(day0["content"]), Path("/etc/esc/day0")) == [
        *("--node-name", "esc-b", "--ha", "--ha-node-list", f"{NET}.11,{NET}.12"),
        *("--kad-vip", f"{NET}.100/24", "--gateway-ip", f"{NET}.1", "--kad-vif", "eth0"),
    ]
    network = yaml.safe_load(files["network-config"])
    assert network["ethernets"] == {
        "eth0": {
            "match": {"name": "e*"},
            "set-name": "eth0",
            "addresses": [f"{NET}.12/24"],
            "routes": [{"to": "default", "via": f"{NET}.1"}],
        }
    }

    # Another host with the CSP's credentials shows it alike, by name or by address;
    # the parameters it was deployed with are not on the CSP, so none are shown.
    other = provider(fake, tmp_path / "b")
    assert other.show("esc-b") == deployed == other.show(f"{NET}.12")
    assert deployed.parameters == {} and deployed.image == ""
    assert [n.name for n in other.nodes()] == ["esc-b"]

    # Nothing on the CSP says what it was deployed with: a second deploy is refused.
    before = len(fake.requests)
    with pytest.raises(PermanentProviderError, match=r"exists already on the CSP.* cannot be told"):
        nodes.deploy(SPEC)
    assert written(fake, before) == []

    nodes.power_off("esc-b", grace=5)
    assert fake.service(SERVICE)["power"] == "off"  # type: ignore[index]
    assert not fake.powered_on(SERVICE)
    stopped = other.show(f"{NET}.12")  # its address is the CSP's, whatever its power
    assert (stopped.state, stopped.ip) == (InstanceState.STOPPED, f"{NET}.12")

    nodes.delete("esc-b")
    assert fake.names() == []
    assert f"{SERVICE}-day0.iso" not in fake.repository
    with pytest.raises(UnknownNode, match="no node esc-b on the CSP"):
        other.show("esc-b")

    # The upgrade's redeploy: the same service name, address, vNIC and day-0.
    again = other.deploy(SPEC)
    assert (again.name, again.state, again.ip) == ("esc-b", "RUNNING", f"{NET}.12")
    assert fake.names() == [SERVICE]
    assert fake.service(SERVICE) == held
    assert seed(fake) == files

    # The CSP deletes only a powered-off service: a running node is powered off first.
    before = len(fake.requests)
    nodes.delete(f"{NET}.12")
    asked = [(m, s) for m, p, s in written(fake, before) if p == SERVICE_PATH]
    assert asked == [("PATCH", 204), ("DELETE", 204)]
    assert fake.names() == []


def service_writes(fake: FakeCsp, since: int) -> list[tuple[str, int]]:
    """What was asked of the node's service, or to make a service, since request `since`."""
    return [(m, s) for m, p, s in written(fake, since) if p in (SERVICE_PATH, SERVICES_PATH)]


def test_the_upgrade_replaces_a_node_by_a_service_of_the_other_image(
    fake: FakeCsp, tmp_path: Path
) -> None:
    nodes = provider(fake, tmp_path)
    nodes.deploy(SPEC)
    files = seed(fake)

    # What the node was deployed with is kept nowhere on a CSP (no metadata, and its
    # repository's files cannot be read back): the upgrade cannot read it from here,
    # and takes it from the pair access file.
    with pytest.raises(PermanentProviderError, match=r"keeps no record.*\[node\.parameters\]"):
        recorded_parameters(nodes, "esc-b")
    recorded = recorded_parameters(nodes, "esc-b", SPEC.parameters())
    assert recorded == SPEC.parameters()

    # Given them, the service is replaced.
    lines: list[str] = []
    before = len(fake.requests)
    started = time.monotonic()
    replaced = replace_node(nodes, "esc-b", recorded, NEW_IMAGE, PAIR, lines.append)
    seconds = time.monotonic() - started
    assert (replaced.state, replaced.ip, replaced.floating_ip) == (
        InstanceState.RUNNING,
        f"{NET}.12",
        None,
    )
    assert (replaced.image, replaced.parameters) == ("", {})  # nothing on the CSP says it
    assert [line.split(": ", 1)[1] for line in lines] == [
        "orderly shutdown (up to 60 s)",
        "deleting it with its disks",
        f"deploying it from {NEW_IMAGE}",
    ]

    # What the CSP holds: the service was powered off, deleted, and created again under
    # its name from the other image, with the same address and vNIC; its day-0 file made
    # anew, the pair file beside the node's day-0.
    assert service_writes(fake, before) == [("PATCH", 204), ("DELETE", 204), ("POST", 201)]
    held = fake.service(SERVICE)
    assert held is not None and fake.names() == [SERVICE]
    assert (held["iso_name"], held["ip"], held["power"]) == (NEW_IMAGE, f"{NET}.12", "on")
    assert held["vnics"]["vnic"][0]["network_name"] == NETWORK
    assert fake.powered_on(SERVICE)
    new_files = seed(fake)
    assert new_files["network-config"] == files["network-config"]
    written_files = {f["path"]: f for f in yaml.safe_load(new_files["user-data"])["write_files"]}
    assert written_files[f"/etc/esc/day0/{PAIR_FILE}"]["content"] == PAIR
    day0 = tomllib.loads(written_files[f"/etc/esc/day0/{DAY0_FILE}"]["content"])
    argv = init_argv(day0, Path("/etc/esc/day0"))
    assert argv[argv.index("--ha-pair-file") + 1] == f"/etc/esc/day0/{PAIR_FILE}"
    assert IMAGE in fake.repository  # an image is never removed

    # Asked again, it cannot tell the node is made from the new image already (no record
    # of it): the service is replaced once more, alike.
    before = len(fake.requests)
    assert replace_node(nodes, "esc-b", recorded, NEW_IMAGE, PAIR) == replaced
    assert service_writes(fake, before) == [("PATCH", 204), ("DELETE", 204), ("POST", 201)]
    assert fake.service(SERVICE) == held
    print(f"\nnode replaced on the CSP (power off, delete, create) in {seconds:.2f} s")


def test_the_pair_file_is_written_beside_the_day0(fake: FakeCsp, tmp_path: Path) -> None:
    pair = json.dumps({"kind": "esc-ha-pair", "secret": "s3cr3t"})
    provider(fake, tmp_path).deploy(NodeSpec(**{**vars(SPEC), "ha_pair": pair}))
    files = yaml.safe_load(seed(fake)["user-data"])["write_files"]
    by_path = {f["path"]: f for f in files}
    assert by_path[f"/etc/esc/day0/{PAIR_FILE}"]["content"] == pair
    assert by_path[f"/etc/esc/day0/{PAIR_FILE}"]["permissions"] == "0600"
    day0 = tomllib.loads(by_path[f"/etc/esc/day0/{DAY0_FILE}"]["content"])
    assert init_argv(day0, Path("/etc/esc/day0"))[-2:] == [
        "--ha-pair-file",
        f"/etc/esc/day0/{PAIR_FILE}",
    ]


def test_a_nic_without_a_mac_is_set_up_only_as_the_one_nic() -> None:
    one = SeedNic("", ipaddress.ip_interface(f"{NET}.12/24"))
    assert yaml.safe_load(network_config([one]))["ethernets"]["eth0"]["match"] == {"name": "e*"}
    with pytest.raises(PermanentVimError, match="only as the VM's one NIC: with 2 NICs"):
        network_config([one, SeedNic("52:54:00:00:00:01")])


def test_fencing_powers_the_service_off_and_fencing_again_is_no_error(
    fake: FakeCsp, tmp_path: Path
) -> None:
    nodes = provider(fake, tmp_path)
    nodes.deploy(SPEC)
    peer = provider(fake, tmp_path / "peer")
    peer.fence(f"{NET}.12")  # as the other node of the pair names it
    assert fake.service(SERVICE)["power"] == "off"  # type: ignore[index]
    assert not fake.powered_on(SERVICE)  # off on the CSP when fence returns

    before = len(fake.requests)
    peer.fence(f"{NET}.12")
    nodes.fence("esc-b")
    assert written(fake, before) == []  # off already: nothing asked of the CSP
    assert nodes.show("esc-b").state is InstanceState.STOPPED

    nodes.power_on(f"{NET}.12")
    assert fake.powered_on(SERVICE)
    assert nodes.show("esc-b").state is InstanceState.RUNNING

    # A CSP that does not take the power-off: not claimed fenced, and fenced once it does.
    fake.fail_next(1, method="PATCH", path=SERVICE_PATH)
    with pytest.raises(TransientProviderError, match="could not power node esc-b off"):
        peer.fence(f"{NET}.12")
    assert fake.powered_on(SERVICE)
    peer.fence(f"{NET}.12")
    assert not fake.powered_on(SERVICE)


def test_what_a_csp_cannot_do_is_refused_before_anything_is_made(
    fake: FakeCsp, tmp_path: Path
) -> None:
    nodes = provider(fake, tmp_path)
    repository = set(fake.repository)
    with pytest.raises(PermanentProviderError) as floating:
        nodes.deploy(NodeSpec(**{**vars(SPEC), "floating_ip": "198.19.76.12"}))
    assert "floating IP 198.19.76.12: a CSP has no floating IPs" in str(floating.value)
    assert "reached at its own address, the fixed ip" in str(floating.value)
    assert "ask for no floating IP" in str(floating.value)
    with pytest.raises(PermanentProviderError, match=rf"--ip with the network's prefix \({NET}"):
        nodes.deploy(NodeSpec(**{**vars(SPEC), "ip": f"{NET}.12"}))
    assert written(fake) == []
    assert (fake.names(), set(fake.repository)) == ([], repository)

    for call in (nodes.show, nodes.delete, nodes.power_on, nodes.fence):
        with pytest.raises(UnknownNode, match="no node ghost on the CSP"):
            call("ghost")
    nodes.deploy(SPEC)
    with pytest.raises(UnknownNode, match=rf"no node .* has address {NET}.99 .*nodes: esc-b\)"):
        nodes.fence(f"{NET}.99")


def test_the_witness_record_cannot_be_kept_on_a_csp_and_says_what_to_use(
    fake: FakeCsp, tmp_path: Path
) -> None:
    nodes = provider(fake, tmp_path)
    nodes.deploy(SPEC)
    before = len(fake.requests)
    for ask in (
        lambda: nodes.mark_outdated(f"{NET}.12", "it stopped streaming"),
        lambda: nodes.clear_outdated(f"{NET}.12"),
        lambda: nodes.outdated(f"{NET}.12"),
    ):
        with pytest.raises(PermanentProviderError) as refused:
            ask()
        message = str(refused.value)
        assert "the csp VIM driver keeps no metadata on its VMs" in message
        assert "witness record (which node is outdated) cannot be kept on the CSP" in message
        assert "libvirt, openstack or vmware; or lab, the lab's host agent" in message
        assert "a standby never takes over by itself" in message
        assert "escadm ha force-active --discard-unreplicated" in message
    assert written(fake, before) == []  # nothing written into a service to stand for it
    nodes.fence(f"{NET}.12")  # fencing works all the same
    assert not fake.powered_on(SERVICE)


# escadm node against the CSP --------------------------------------------------------------


@pytest.fixture
def home(fake: FakeCsp, tmp_path: Path) -> Path:
    """A node home whose esc.toml [vim] is the fake CSP (password file, cacert)."""
    root = tmp_path / "home"
    vim = settings_for(fake, root).model_dump(mode="json")
    init_node(NodeHome(root), Settings.model_validate({"vim": vim}))
    return root


def run(home: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, [*args, "--home", str(home)])


def node(home: Path, *args: str) -> dict:
    result = run(home, *args, "--json")
    assert result.exit_code == 0, f"{args}: {result.output}"
    return json.loads(result.output)


def test_escadm_node_deploys_fences_and_deletes_a_node_on_the_csp(
    fake: FakeCsp, home: Path
) -> None:
    deploy = [
        *("node", "deploy", "--provider", "csp", "--image", IMAGE, "--flavor", "m1.small"),
        *("--name", "esc-b", "--network", NETWORK, "--ip", f"{NET}.12/24"),
        *("--gateway-ip", f"{NET}.1", "--ha-node-list", f"{NET}.11,{NET}.12"),
        *("--kad-vip", f"{NET}.100/24", "--kad-vif", "eth0"),
    ]
    # The escadm program itself, as an operator runs it; the rest in this process.
    result = escadm(*deploy, "--json", home=home)
    assert result.returncode == 0, result.stdout + result.stderr
    deployed = json.loads(result.stdout)
    assert (deployed["name"], deployed["state"], deployed["ip"]) == (
        "esc-b",
        "RUNNING",
        f"{NET}.12",
    )
    assert fake.powered_on(SERVICE)
    assert DAY0_FILE in seed(fake)["user-data"]

    another = [a if a != "esc-b" else "esc-c" for a in deploy]
    refused = run(home, *another, "--floating-ip", "198.19.76.12")
    assert refused.exit_code == 1
    assert "a CSP has no floating IPs" in refused.output and "Traceback" not in refused.output

    fenced = node(home, "node", "fence", f"{NET}.12")
    assert (fenced["state"], fenced["ip"]) == ("STOPPED", f"{NET}.12")
    assert not fake.powered_on(SERVICE)
    assert node(home, "node", "fence", f"{NET}.12")["state"] == "STOPPED"  # again: no error

    assert node(home, "node", "delete", "esc-b") == {"deleted": "esc-b"}
    assert fake.names() == []
    gone = run(home, "node", "show", "esc-b")
    assert gone.exit_code == 1 and "no node esc-b on the csp VIM" in gone.output
