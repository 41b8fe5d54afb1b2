"""The openstack driver on a real nova (nova_server.py), beyond the contract suite: how
a VmSpec lands in nova, neutron and cinder (read back from them, not from the
driver), each kind of refusal and failure, the settings, check(), and a whole
controller node deploying on it with escadm."""

from __future__ import annotations

import base64
import socket
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pydantic
import pytest
import tomli_w
import urllib3
import yaml
from conftest import escadm, free_port
from nova_cloud import ADMIN, ADMIN_PASSWORD, FLAVOR, IMAGE, PASSWORD, NovaCloud, shared_cloud

from esc.config import OpenStackSettings, VimSettings
from esc.vim.base import (
    TAG_CONTROLLER,
    TAG_VM,
    InstanceState,
    Interface,
    PermanentVimError,
    Placement,
    TransientVimError,
    UnknownFlavor,
    UnknownImage,
    VmSpec,
    Volume,
)
from esc.vim.openstack import OpenStackVim
from esc.vim.openstack_metadata import VALUE_LIMIT, decode, plan

EXAMPLE = Path(__file__).parents[2] / "examples" / "vims" / "openstack.yaml"
FLOATING = "198.19.100.10"


@pytest.fixture(scope="module")
def nova(request: pytest.FixtureRequest) -> NovaCloud:
    return shared_cloud(request)


@pytest.fixture
def cloud(nova: NovaCloud) -> Iterator[NovaCloud]:
    """The module's nova, emptied after each test."""
    yield nova
    nova.clean()


def spec(vm_id: str, **fields: object) -> VmSpec:
    values: dict = {"name": f"name-{vm_id}", "image": IMAGE, "flavor": FLAVOR}
    values.update(fields)
    return VmSpec(vm_id, **values)  # type: ignore[arg-type]


def ports_of(cloud: NovaCloud, server_id: str) -> list:
    return list(cloud.admin.network.ports(device_id=server_id))


# how a spec lands in the cloud ------------------------------------------------------------


def test_interfaces_become_ports_on_their_networks_with_the_fixed_ip(cloud: NovaCloud) -> None:
    vim = cloud.driver()
    interfaces = (Interface("mgmt", ip="198.18.10.77"), Interface("private"))
    status = vim.create_vm(spec("vm-net", interfaces=interfaces))

    server = cloud.server_of("vm-net")
    networks = {n.name: n.id for n in cloud.admin.network.networks()}
    ports = {p.network_id: p for p in ports_of(cloud, server.id)}
    assert set(ports) == {networks["mgmt"], networks["private"]}
    assert [f["ip_address"] for f in ports[networks["mgmt"]].fixed_ips] == ["198.18.10.77"]
    (private_ip,) = [f["ip_address"] for f in ports[networks["private"]].fixed_ips]
    # The first interface's address is where the VM answers; nova lists both.
    assert status.address == "198.18.10.77"
    assert set(status.ips) == {"198.18.10.77", private_ip}
    assert vim.stop_vm("vm-net").address is None
    assert vim.start_vm("vm-net").address == "198.18.10.77"


def test_a_vm_without_interfaces_gets_the_default_network_or_none(cloud: NovaCloud) -> None:
    bare = cloud.driver().create_vm(spec("vm-bare"))
    assert (bare.address, bare.ips) == (None, ())
    assert cloud.server_of("vm-bare").addresses == {}
    on_mgmt = cloud.driver(network="mgmt").create_vm(spec("vm-default"))
    assert on_mgmt.address and on_mgmt.address.startswith("198.18.10.")
    assert list(cloud.server_of("vm-default").addresses) == ["mgmt"]


def test_a_floating_ip_follows_the_vm_that_asks_for_it(cloud: NovaCloud) -> None:
    vim = cloud.driver()
    interfaces = (Interface("mgmt", floating_ip=FLOATING),)
    old = vim.create_vm(spec("vm-old", interfaces=interfaces))
    (fip,) = cloud.admin.network.ips(floating_ip_address=FLOATING)
    (old_port,) = ports_of(cloud, cloud.server_of("vm-old").id)
    assert fip.port_id == old_port.id and fip.fixed_ip_address == old.address
    assert FLOATING in old.ips and old.address != FLOATING

    # An upgrade's new VM takes the old one's floating IP while the old one still runs.
    new = vim.create_vm(spec("vm-new", interfaces=interfaces))
    (new_port,) = ports_of(cloud, cloud.server_of("vm-new").id)
    (fip,) = cloud.admin.network.ips(floating_ip_address=FLOATING)
    assert fip.port_id == new_port.id and FLOATING in new.ips
    assert FLOATING not in vim.status("vm-old").ips
    assert vim.create_vm(spec("vm-new", interfaces=interfaces)) == new  # idempotent

    # Deleting the new VM releases it (neutron, with the port); a later VM gets it back.
    vim.delete_vm("vm-new")
    (fip,) = cloud.admin.network.ips(floating_ip_address=FLOATING)
    assert fip.port_id is None
    again = vim.create_vm(spec("vm-again", interfaces=interfaces))
    assert FLOATING in again.ips


def test_an_unknown_floating_ip_or_network_is_refused(cloud: NovaCloud) -> None:
    vim = cloud.driver()
    with pytest.raises(PermanentVimError, match=r"floating IP 198\.19\.100\.99 .* does not exist"):
        vim.create_vm(spec("vm-f", interfaces=(Interface("mgmt", floating_ip="198.19.100.99"),)))
    with pytest.raises(PermanentVimError, match=r"unknown network 'nowhere'.* mgmt, private"):
        vim.create_vm(spec("vm-n", interfaces=(Interface("nowhere"),)))
    assert vim.list_instances() == ["vm-f"]  # made before its floating IP was looked up


def test_a_fixed_ip_with_its_prefix_is_the_subnets_or_refused(cloud: NovaCloud) -> None:
    vim = cloud.driver()
    vim.create_vm(spec("vm-p", interfaces=(Interface("mgmt", ip="198.18.10.78/24"),)))
    (port,) = ports_of(cloud, cloud.server_of("vm-p").id)
    assert [f["ip_address"] for f in port.fixed_ips] == ["198.18.10.78"]
    with pytest.raises(PermanentVimError, match=r"198\.18\.10\.79/16 is on none of its subnets"):
        vim.create_vm(spec("vm-q", interfaces=(Interface("mgmt", ip="198.18.10.79/16"),)))
    with pytest.raises(PermanentVimError, match=r"fixed IP 'far' is no IP address"):
        vim.create_vm(spec("vm-q", interfaces=(Interface("mgmt", ip="far"),)))
    assert vim.list_instances() == ["vm-p"]  # refused before nova was asked


def test_vm_metadata_is_nova_metadata_of_escs_own_keys_in_parts_nova_holds(
    cloud: NovaCloud,
) -> None:
    vim = cloud.driver()
    vim.create_vm(spec("vm-m"))
    server = cloud.server_of("vm-m")
    cloud.user.compute.set_server_metadata(server.id, owner="ops")  # another user's key

    def held() -> dict[str, str]:
        return dict(cloud.server_of("vm-m").metadata)

    def escs() -> dict[str, str]:
        return {k: v for k, v in held().items() if k.startswith("esc.meta.")}

    # A value longer than nova keeps goes in parts; keys named as the driver's tags are
    # keys of ESC's own, never the tags.
    long = "x" * 300 + "y" * 300
    vim.set_vm_metadata("vm-m", {"node": long, TAG_VM: "vm-z", TAG_CONTROLLER: "other"})
    assert escs() == {
        "esc.meta.node.parts": "3",
        "esc.meta.node.1": long[:255],
        "esc.meta.node.2": long[255:510],
        "esc.meta.node.3": long[510:],
        f"esc.meta.{TAG_VM}": "vm-z",
        f"esc.meta.{TAG_CONTROLLER}": "other",
    }
    assert {k: held()[k] for k in (TAG_CONTROLLER, TAG_VM, "owner")} == {
        TAG_CONTROLLER: vim.controller_id,
        TAG_VM: "vm-m",
        "owner": "ops",
    }
    assert vim.list_instances() == ["vm-m"]
    assert cloud.driver().vm_metadata("vm-m") == {
        "node": long,
        TAG_VM: "vm-z",
        TAG_CONTROLLER: "other",
    }

    # Shorter: whole, its parts gone; longer again; removed: nothing of ESC's is left.
    vim.set_vm_metadata("vm-m", {"node": "short", TAG_VM: None, TAG_CONTROLLER: None})
    assert escs() == {"esc.meta.node": "short"}
    vim.set_vm_metadata("vm-m", {"node": long[:400]})
    assert escs() == {
        "esc.meta.node.parts": "2",
        "esc.meta.node.1": long[:255],
        "esc.meta.node.2": long[255:400],
    }
    assert vim.vm_metadata("vm-m") == {"node": long[:400]}
    vim.set_vm_metadata("vm-m", {"node": None})
    assert escs() == {} and vim.vm_metadata("vm-m") == {}
    assert held()["owner"] == "ops" and vim.list_instances() == ["vm-m"]

    # nova's 503 on the write is transient; asked again, it is made.
    cloud.fail_next(1, 503, service="compute", method="POST", path="/metadata")
    with pytest.raises(TransientVimError, match="write the metadata of VM vm-m"):
        vim.set_vm_metadata("vm-m", {"outdated": "lost"})
    vim.set_vm_metadata("vm-m", {"outdated": "lost"})
    assert vim.vm_metadata("vm-m") == {"outdated": "lost"}


def test_a_metadata_change_is_read_old_or_new_between_novas_requests() -> None:
    """Nova sets keys in one request but deletes one per request: after each request of
    a change, a reader finds the old value or the new one, never a mix of parts."""
    long, longer = "a" * 300, "b" * 600
    for old, new in (
        (None, "short"),
        (None, long),
        ("short", long),
        (long, "short"),
        (long, longer),
        (longer, long),
        (long, None),
        ("short", None),
    ):
        held = {TAG_VM: "vm-1", "owner": "ops"}
        if old is not None:
            writes, _ = plan(held, {"node": old})
            held.update(writes)
        writes, deletes = plan(held, {"node": new})
        seen = []
        held.update(writes)
        seen.append(decode(held).get("node"))
        for key in deletes:
            del held[key]
            seen.append(decode(held).get("node"))
        assert set(seen) <= {old, new} and seen[-1] == new, (old, new, seen)
        assert {TAG_VM: "vm-1", "owner": "ops"}.items() <= held.items()
        assert all(len(v) <= VALUE_LIMIT for v in held.values())
        assert plan(held, {"node": new}) == ({}, [])  # made already: nothing to ask


def test_volumes_are_blank_cinder_volumes_tagged_and_deleted_with_the_vm(
    cloud: NovaCloud,
) -> None:
    vim = cloud.driver()
    vim.create_vm(spec("vm-vol", volumes=(Volume("data", 2), Volume("logs", 1))))
    server = cloud.server_of("vm-vol")
    attachments = {a.tag: a for a in cloud.admin.compute.volume_attachments(server)}
    assert set(attachments) == {"data", "logs"}
    assert all(a.delete_on_termination for a in attachments.values())
    volumes = {v.id: v for v in cloud.user.block_storage.volumes()}
    assert volumes[attachments["data"].volume_id].size == 2
    assert volumes[attachments["logs"].volume_id].size == 1
    assert {a["server_id"] for v in volumes.values() for a in v.attachments} == {server.id}
    vim.delete_vm("vm-vol")
    assert list(cloud.user.block_storage.volumes()) == []


def test_placement_by_zone_and_by_host(cloud: NovaCloud) -> None:
    vim = cloud.driver()
    vim.create_vm(spec("vm-zone", placement=Placement(zone="zone-b")))
    server = cloud.server_of("vm-zone")
    assert (server.availability_zone, server.compute_host) == ("zone-b", "compute2")

    # nova's forced host is an admin's: a member is refused in nova's words.
    with pytest.raises(PermanentVimError, match="forced_host"):
        vim.create_vm(spec("vm-host", placement=Placement(zone="nova", host="compute")))
    admin_password = cloud.root / "admin.password"
    admin_password.write_text(ADMIN_PASSWORD)
    admin_password.chmod(0o600)
    as_admin = cloud.driver(username=ADMIN, password_file=str(admin_password))
    as_admin.create_vm(spec("vm-host", placement=Placement(zone="zone-b", host="compute2")))
    assert cloud.server_of("vm-host").compute_host == "compute2"

    with pytest.raises(PermanentVimError, match="no datastore placement"):
        vim.create_vm(spec("vm-ds", placement=Placement(datastore="ds1")))


def test_a_placement_group_is_a_nova_server_group_gone_with_its_last_vm(
    cloud: NovaCloud,
) -> None:
    vim = cloud.driver("esc-groups")
    apart = Placement(group="lb")  # anti-affinity, a group's default
    together = Placement(group="db", group_policy="affinity")
    for vm_id, placement in (("vm-a1", apart), ("vm-a2", apart), ("vm-t1", together)):
        vim.create_vm(spec(vm_id, placement=placement))
    vim.create_vm(spec("vm-t2", placement=together))
    hosts = {vm: cloud.server_of(vm).compute_host for vm in ("vm-a1", "vm-a2", "vm-t1", "vm-t2")}
    assert hosts["vm-a1"] != hosts["vm-a2"]
    assert hosts["vm-t1"] == hosts["vm-t2"]
    groups = {g.name: g for g in cloud.user.compute.server_groups()}
    assert groups["esc-esc-groups-lb"].policy == "anti-affinity"
    assert set(groups["esc-esc-groups-lb"].member_ids) == {
        cloud.server_of("vm-a1").id,
        cloud.server_of("vm-a2").id,
    }
    with pytest.raises(PermanentVimError, match="exists with policy anti-affinity"):
        vim.create_vm(spec("vm-x", placement=Placement(group="lb", group_policy="affinity")))
    with pytest.raises(PermanentVimError, match="not one of nova's"):
        vim.create_vm(spec("vm-y", placement=Placement(group="z", group_policy="spread")))
    for vm_id in ("vm-a1", "vm-a2"):
        vim.delete_vm(vm_id)
    assert "esc-esc-groups-lb" not in {g.name for g in cloud.user.compute.server_groups()}
    vim.delete_vm("vm-t1")
    assert "esc-esc-groups-db" in {g.name for g in cloud.user.compute.server_groups()}


def test_day0_files_are_cloud_init_write_files_on_a_config_drive_with_the_key(
    cloud: NovaCloud,
) -> None:
    files = {"app.conf": "x = 1\nname: 'quoted'\n", "license.key": "ABC-123"}
    cloud.user.compute.create_keypair(name="esc-key")
    try:
        vim = cloud.driver(day0_dir="/opt/vnf/day0", key_name="esc-key")
        vim.create_vm(spec("vm-d0", day0_config=files))
        server = cloud.server_of("vm-d0")
        assert server.config_drive in (True, "True", "true")
        assert server.key_name == "esc-key"
        user_data = base64.b64decode(server.user_data).decode()
        assert user_data.startswith("#cloud-config\n")
        written = {
            entry["path"]: (entry["content"], entry["permissions"])
            for entry in yaml.safe_load(user_data)["write_files"]
        }
        assert written == {
            "/opt/vnf/day0/app.conf": (files["app.conf"], "0600"),
            "/opt/vnf/day0/license.key": ("ABC-123", "0600"),
        }
        with pytest.raises(PermanentVimError, match=r"day0_config file name '\.\./x'"):
            cloud.driver().create_vm(spec("vm-bad", day0_config={"../x": "y"}))
        assert cloud.server_of("vm-bad") is None
        with pytest.raises(PermanentVimError, match=r"(?i)invalid key_name"):
            cloud.driver(key_name="no-such-key").create_vm(spec("vm-nokey"))
    finally:
        cloud.user.compute.delete_keypair("esc-key")


# refusals and failures --------------------------------------------------------------------


def test_unknown_and_ambiguous_images_and_flavors_name_what_the_project_has(
    cloud: NovaCloud,
) -> None:
    vim = cloud.driver()
    with pytest.raises(UnknownImage) as image:
        vim.validate_image("ubuntu-99.04")
    assert "the OpenStack project's images are" in str(image.value)
    assert "cirros-0.6.2" in str(image.value) and "ubuntu-22.04" in str(image.value)
    with pytest.raises(UnknownFlavor, match=r"flavors are .*m1\.large.*m1\.tiny"):
        vim.create_vm(spec("vm-x", flavor="x9.mega"))
    # nova's test images share one name: naming one of them cannot pick a single image.
    with pytest.raises(PermanentVimError, match="'fakeimage123456' is ambiguous"):
        vim.validate_image("fakeimage123456")
    by_id = cloud.user.image.find_image(IMAGE, ignore_missing=False).id
    vim.validate_image(by_id)
    assert vim.list_instances() == []


def test_quota_exceeded_is_permanent_in_novas_words(cloud: NovaCloud) -> None:
    cloud.admin.compute.update_quota_set(cloud.admin.current_project_id, instances=1)
    vim = cloud.driver()
    vim.create_vm(spec("vm-q1"))
    with pytest.raises(PermanentVimError) as refused:
        vim.create_vm(spec("vm-q2"))
    message = str(refused.value)
    assert "quota exceeded" in message.lower()
    assert "Quota exceeded for instances" in message  # nova's own message
    assert vim.list_instances() == ["vm-q1"]


def test_a_server_nova_fails_is_a_permanent_error_with_its_fault(cloud: NovaCloud) -> None:
    # Within the project's RAM quota, beyond what any compute host has.
    huge = cloud.admin.compute.create_flavor(name="m1.huge", ram=40_000, vcpus=1, disk=1)
    try:
        vim = cloud.driver()
        with pytest.raises(PermanentVimError, match="No valid host was found"):
            vim.create_vm(spec("vm-err", flavor="m1.huge"))
        status = vim.status("vm-err")
        assert status.state is InstanceState.ERROR
        assert "No valid host was found" in status.detail
        assert vim.stop_vm("vm-err").state is InstanceState.ERROR
        with pytest.raises(PermanentVimError, match="No valid host was found"):
            vim.create_vm(spec("vm-err", flavor="m1.huge"))  # found as it is, not remade
        assert [s.name for s in cloud.servers()] == ["name-vm-err"]
        vim.delete_vm("vm-err")
        assert vim.status("vm-err").state is InstanceState.ABSENT
    finally:
        cloud.admin.compute.delete_flavor(huge)


def test_5xx_is_transient_and_the_retry_finds_no_duplicate(cloud: NovaCloud) -> None:
    vim = cloud.driver()
    vim.check()
    cloud.fail_next(1, 503, "compute")
    with pytest.raises(TransientVimError, match="HTTP 503"):
        vim.create_vm(spec("vm-t"))
    cloud.fail_next(1, 503, "image")
    with pytest.raises(TransientVimError, match="HTTP 503"):
        vim.validate_image(IMAGE)
    created = vim.create_vm(spec("vm-t"))
    assert created.state is InstanceState.RUNNING
    cloud.fail_next(1, 500, "network")
    with pytest.raises(TransientVimError, match="HTTP 500"):
        vim.create_vm(spec("vm-t2", interfaces=(Interface("mgmt"),)))
    assert vim.list_instances() == ["vm-t"]


def test_an_unreachable_or_silent_cloud_is_transient(cloud: NovaCloud) -> None:
    closed = f"http://127.0.0.1:{free_port()}/identity/v3"
    with pytest.raises(TransientVimError, match="cannot reach OpenStack"):
        cloud.driver(auth_url=closed).status("vm-1")
    # A listener that never answers: the request's timeout, not a hang.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/identity/v3"
        with pytest.raises(TransientVimError, match=r"did not answer within 1 s \(\[vim"):
            cloud.driver(auth_url=url, timeout=1).list_instances()


def test_an_expired_token_is_renewed_once_not_reported(cloud: NovaCloud) -> None:
    vim = cloud.driver()
    assert vim.status("vm-1").state is InstanceState.ABSENT
    issued = cloud.tokens_issued()
    cloud.expire_tokens()
    assert vim.create_vm(spec("vm-1")).state is InstanceState.RUNNING
    assert cloud.tokens_issued() == issued + 1


def test_a_wrong_password_is_an_auth_error_naming_the_settings(
    cloud: NovaCloud, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password")
    wrong.chmod(0o600)
    vim = cloud.driver(password_file=str(wrong))
    for call in (vim.check, lambda: vim.create_vm(spec("vm-1")), vim.list_instances):
        with pytest.raises(PermanentVimError) as refused:
            call()
        message = str(refused.value)
        assert "OpenStack authentication failed" in message
        assert "password_file" in message and "not-the-password" not in message
        assert PASSWORD not in message


# check() ----------------------------------------------------------------------------------


def test_check_names_an_unreadable_password(cloud: NovaCloud, tmp_path: Path) -> None:
    with pytest.raises(PermanentVimError, match=r"cannot read .*missing.password"):
        cloud.driver(password_file=str(tmp_path / "missing.password")).check()
    with pytest.raises(PermanentVimError, match="ESC_TEST_NO_SUCH_VARIABLE is not set"):
        cloud.driver(password_file="", password_env="ESC_TEST_NO_SUCH_VARIABLE").check()


def test_check_names_a_missing_or_unreachable_endpoint(cloud: NovaCloud) -> None:
    closed = f"http://127.0.0.1:{free_port()}/identity/v3"
    with pytest.raises(TransientVimError, match=f"cannot reach OpenStack.*{closed}"):
        cloud.driver(auth_url=closed).check()
    with pytest.raises(PermanentVimError, match=r"catalog has no endpoint.*region_name"):
        cloud.driver(region_name="Nowhere").check()
    with pytest.raises(PermanentVimError, match="no keystone v3 answers"):
        cloud.driver(auth_url=f"{cloud.url}/keystone/v3").check()


class _Answer(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_check_names_tls_failures_and_the_cacert(cloud: NovaCloud) -> None:
    https_auth = f"{cloud.https_url}/identity/v3"
    # The CA that signed the cloud's certificate: TLS all the way, catalog included.
    trusting = cloud.driver(auth_url=https_auth, cacert=str(cloud.ca))
    trusting.check()
    assert trusting.create_vm(spec("vm-tls")).state is InstanceState.RUNNING
    # Another CA: the certificate is not trusted, and the message says where to fix it.
    with pytest.raises(PermanentVimError) as refused:
        cloud.driver(auth_url=https_auth, cacert=str(cloud.other_ca)).check()
    message = str(refused.value)
    assert "TLS verification failed" in message and "certificate" in message
    assert f"[vim.openstack] cacert ({cloud.other_ca})" in message
    # No cacert: the system's CAs do not know a test CA either.
    with pytest.raises(PermanentVimError, match=r"set \[vim\.openstack\] cacert"):
        cloud.driver(auth_url=https_auth).check()
    # verify = false accepts it (a lab's choice), and says so.
    with pytest.warns(urllib3.exceptions.InsecureRequestWarning):
        cloud.driver(auth_url=https_auth, verify=False).check()


def test_check_names_a_plain_http_server_where_tls_was_asked(cloud: NovaCloud) -> None:
    # A TLS client talking to a plain HTTP listener: a TLS failure, not a hang.
    server = HTTPServer(("127.0.0.1", 0), _Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"https://127.0.0.1:{server.server_port}/identity/v3"
        with pytest.raises(PermanentVimError, match="TLS verification failed"):
            cloud.driver(auth_url=url, cacert=str(cloud.ca)).check()
    finally:
        server.shutdown()
        server.server_close()


# settings ---------------------------------------------------------------------------------


def test_the_settings_name_what_is_missing_or_wrong() -> None:
    with pytest.raises(pydantic.ValidationError, match="auth_url, username, project_name"):
        VimSettings(driver="openstack")
    with pytest.raises(pydantic.ValidationError, match="password_file or password_env"):
        VimSettings(
            driver="openstack",
            openstack={"auth_url": "https://k:5000/v3", "username": "u", "project_name": "p"},
        )
    with pytest.raises(pydantic.ValidationError, match="keystone v3 URL"):
        OpenStackSettings(auth_url="keystone:5000")
    with pytest.raises(pydantic.ValidationError, match="not both"):
        OpenStackSettings(password_file="p", password_env="P")
    with pytest.raises(pydantic.ValidationError, match="verify = false ignores it"):
        OpenStackSettings(cacert="ca.pem", verify=False)
    with pytest.raises(pydantic.ValidationError, match="absolute path"):
        OpenStackSettings(day0_dir="etc/day0")
    with pytest.raises(pydantic.ValidationError, match="interface"):
        OpenStackSettings(interface="private")
    with pytest.raises(pydantic.ValidationError, match=r"unknown_key|Extra inputs"):
        OpenStackSettings.model_validate({"unknown_key": 1})
    ok = VimSettings(
        driver="openstack",
        openstack={
            "auth_url": "https://k:5000/v3",
            "username": "u",
            "project_name": "p",
            "password_env": "OS_PASSWORD",
        },
    )
    assert ok.openstack.interface == "public" and ok.openstack.day0_dir == "/etc/esc/day0"
    with pytest.raises(PermanentVimError, match=r"needs .*auth_url"):
        OpenStackVim(OpenStackSettings(), Path("/"))


def test_the_password_is_read_from_the_environment(
    cloud: NovaCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ESC_TEST_OS_PASSWORD", PASSWORD)
    vim = cloud.driver(password_file="", password_env="ESC_TEST_OS_PASSWORD")
    vim.check()
    assert vim.list_instances() == []


# a controller node deploying on it --------------------------------------------------------


def _node(cloud: NovaCloud, tmp_path: Path) -> Path:
    home = tmp_path / "home"
    escadm("init", "--api-port", str(free_port()), home=home, check=True)
    password = home / "openstack.password"
    password.write_text(PASSWORD + "\n")
    password.chmod(0o600)
    config_file = home / "esc.toml"
    config = tomllib.loads(config_file.read_text())
    config["vim"] = {
        "driver": "openstack",
        "openstack": {
            "auth_url": cloud.auth_url,
            "username": "esc",
            "password_file": "openstack.password",
            "project_name": "esc",
            "region_name": "RegionOne",
            "network": "mgmt",
            "boot_timeout": 60,
            "poll_interval": 0.2,
        },
    }
    config["engine"] = {"vim_attempts": 3, "vim_backoff": 0.2}
    config_file.write_text(tomli_w.dumps(config))
    return home


def _section(cloud: NovaCloud, home: Path) -> Path:
    """The node's [vim.openstack] as a connection's settings file."""
    section = tomllib.loads((home / "esc.toml").read_text())["vim"]["openstack"]
    path = home / "dc.toml"
    path.write_text(tomli_w.dumps(section))
    return path


def image_id(cloud: NovaCloud, name: str) -> str:
    return cloud.user.image.find_image(name, ignore_missing=False).id


def _deploy(home: Path, descriptor: Path) -> tuple[int, str]:
    result = escadm("deployment", "deploy", str(descriptor), "--timeout", "120", home=home)
    return result.returncode, result.stdout + result.stderr


@pytest.mark.slow
def test_a_node_deploys_the_example_on_nova_and_reports_its_refusals(
    cloud: NovaCloud, tmp_path: Path
) -> None:
    home = _node(cloud, tmp_path)
    example = yaml.safe_load(EXAMPLE.read_text())
    name, groups = example["deployment"]["name"], example["deployment"]["vm_groups"]
    escadm("start", home=home, check=True)  # healthy: its VIM check passed
    try:
        # Nova fails the first server create (503): the engine retries it, the deploy
        # succeeds, and no server is made twice.
        served = cloud.control("GET", "/stats")["faults_served"]
        cloud.fail_next(1, 503, "compute", "POST", "/servers")
        code, out = _deploy(home, EXAMPLE)
        assert code == 0 and "SUCCESS" in out, out
        assert cloud.control("GET", "/stats")["faults_served"] == served + 1
        servers = cloud.servers()
        assert len(servers) == sum(g["scaling"]["min_active"] for g in groups)
        assert {s.status for s in servers} == {"ACTIVE"}
        for server in servers:
            assert server.metadata[TAG_VM] and server.metadata[TAG_CONTROLLER]
            assert list(server.addresses) == ["mgmt"]
        by_group = {
            g["name"]: [s for s in servers if s.image["id"] == image_id(cloud, g["image"])]
            for g in groups
        }
        # lb's first VM has the pool's first floating IP; the app VMs are kept apart by
        # their server group and each has its data volume.
        (lb,) = by_group["lb"]
        (fip,) = cloud.admin.network.ips(floating_ip_address="198.19.100.10")
        assert fip.port_id in {p.id for p in ports_of(cloud, lb.id)}
        assert len({s.compute_host for s in by_group["app"]}) == 2
        for app in by_group["app"]:
            tags = [a.tag for a in cloud.admin.compute.volume_attachments(app)]
            assert tags == ["data"]
        # A second connection to the cloud is added once it answers with its
        # credentials, and refused naming authentication when they are wrong.
        added = escadm(
            "vim",
            "add",
            "dc1",
            "--driver",
            "openstack",
            "--file",
            str(_section(cloud, home)),
            home=home,
        )
        assert added.returncode == 0, added.stdout + added.stderr
        wrong = home / "wrong.password"
        wrong.write_text("not-it\n")
        wrong.chmod(0o600)
        refused = escadm(
            "vim",
            "add",
            "dc2",
            "--driver",
            "openstack",
            "--file",
            str(_section(cloud, home)),
            "--set",
            "password_file=wrong.password",
            home=home,
        )
        assert refused.returncode != 0
        assert "OpenStack authentication failed" in refused.stdout + refused.stderr
        undeployed = escadm("deployment", "undeploy", name, "--timeout", "120", home=home)
        assert undeployed.returncode == 0, undeployed.stdout + undeployed.stderr
        assert cloud.servers() == []

        # Refusals, in the cloud's words: an image it does not have (refused with the
        # request), a quota it enforces at create (the transaction ends FAILED).
        missing = tmp_path / "missing.yaml"
        missing.write_text(EXAMPLE.read_text().replace("cirros-0.6.2", "cirros-9.9"))
        code, out = _deploy(home, missing)
        assert code != 0 and "unknown image 'cirros-9.9'" in out, out
        assert "the OpenStack project's images are" in out
        cloud.admin.compute.update_quota_set(cloud.admin.current_project_id, instances=0)
        code, out = _deploy(home, EXAMPLE)
        assert code != 0 and "FAILED" in out and "Quota exceeded for instances" in out, out
        assert cloud.servers() == []
        cloud.admin.compute.revert_quota_set(cloud.admin.current_project_id)

        # Bad credentials: the cloud's admin rotated the password and the node's file
        # still has the old one. Once the token expires, the node is refused naming
        # authentication; with the new password in the file it works again, unrestarted.
        cloud.change_password("rotated-password-2")
        cloud.expire_tokens()
        other = tmp_path / "other.yaml"
        other.write_text(EXAMPLE.read_text().replace(f"name: {name}", "name: other"))
        code, out = _deploy(home, other)
        assert code != 0 and "OpenStack authentication failed" in out, out
        assert "password_file" in out and PASSWORD not in out
        (home / "openstack.password").write_text("rotated-password-2\n")
        health = escadm("health", home=home)
        assert health.returncode == 0, health.stdout + health.stderr
    finally:
        escadm("stop", home=home)
