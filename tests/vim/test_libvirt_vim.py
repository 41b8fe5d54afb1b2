"""The libvirt driver beyond the contract, on libvirt's test driver (test:///default):
what libvirt holds for a VM's NICs, volumes, image and flavor, the seed ISO's day-0
content, the refusals (placement, networks, addresses, volumes, day-0 names), the
error kinds (authentication, a daemon that does not answer), check() and the settings.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from conftest import need
from libvirt_testbed import make_disk_image, sdk_missing, untagged_domain_xml
from lxml import etree
from pydantic import ValidationError

from esc.config import LibvirtFlavor, LibvirtSettings, VimSettings
from esc.vim.base import (
    TAG_CONTROLLER,
    TAG_VM,
    InstanceState,
    Interface,
    PermanentVimError,
    Placement,
    TransientVimError,
    UnknownImage,
    VmSpec,
    Volume,
    load_driver,
)

URI = "test:///default"
NETWORK_XML = """<network><name>esc-test</name><bridge name='virbr71'/>
<ip address='198.18.71.1' prefix='24'/></network>"""

need_sdk = pytest.mark.usefixtures("sdk")


@pytest.fixture
def sdk() -> None:
    need(sdk_missing())


@pytest.fixture
def observer(sdk: None) -> Iterator:
    """The test's connection: it keeps the test driver's state for the test's length."""
    import libvirt

    connection = libvirt.open(URI)
    yield connection
    connection.close()


@pytest.fixture
def images(tmp_path: Path) -> Path:
    directory = tmp_path / "images"
    directory.mkdir()
    make_disk_image(directory / "debian-12.qcow2", "32M")
    (directory / "tiny.kernel").write_bytes(b"kernel")
    (directory / "tiny.initrd").write_bytes(b"initrd")
    (directory / "tiny.cmdline").write_text("console=ttyS0 quiet\n")
    (directory / "lonely.kernel").write_bytes(b"no initramfs beside it")
    return directory


@pytest.fixture
def make(observer, images: Path, tmp_path: Path) -> Iterator[Callable]:
    from esc.vim.libvirt import LibvirtVim

    made: list[LibvirtVim] = []

    def make(controller: str = "ctl-a", **settings: object) -> LibvirtVim:
        values: dict = {"uri": URI, "image_dir": str(images), "shutdown_timeout": 1}
        values.update(settings)
        driver = LibvirtVim(tmp_path / "vim", LibvirtSettings(**values), tmp_path)
        driver.controller_id = controller
        made.append(driver)
        return driver

    yield make
    for driver in made:
        driver.close()


def domain_tree(observer, name: str) -> etree._Element:
    return etree.fromstring(observer.lookupByName(name).XMLDesc(0).encode())


def read_seed(path: Path) -> dict[str, str]:
    import pycdlib

    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        assert iso.pvd.volume_identifier.decode().strip() == "cidata"
        files = {}
        for child in iso.list_children(rr_path="/"):
            name = child.rock_ridge.name().decode()
            if name in (".", ".."):
                continue
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, rr_path=f"/{name}")
            files[name] = out.getvalue().decode()
        return files
    finally:
        iso.close()


def qemu_img_info(path: Path) -> dict:
    result = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)


# what libvirt holds ---------------------------------------------------------------------


def test_the_domain_holds_the_flavor_disks_nics_seed_and_record(
    make: Callable, observer, images: Path
) -> None:
    observer.networkCreateXML(NETWORK_XML)
    vim = make(flavors={"m1.web": LibvirtFlavor(vcpus=3, memory_mib=1536)}, domain_type="qemu")
    spec = VmSpec(
        "vm-1",
        "web 1",
        "debian-12",
        "m1.web",
        {"app.conf": "listen = 8080\nworkers = 4\n", "tls/key.pem": "SECRET\n"},
        interfaces=(
            Interface("esc-test", "198.18.71.20"),
            Interface("bridge:br-data", "198.18.72.5/24", model="e1000", vlan=72),
            Interface("esc-test"),
        ),
        volumes=(Volume("logs", 2), Volume("db", 1)),
    )
    status = vim.create_vm(spec)
    assert status.state is InstanceState.RUNNING
    assert status.address == "198.18.71.20"
    assert status.ips[:2] == ("198.18.71.20", "198.18.72.5")

    root = domain_tree(observer, "esc-vm-1")
    assert root.get("type") == "qemu"
    assert root.findtext("uuid") == vim.domain_uuid("vm-1")
    assert root.findtext("title") == "web 1"
    assert root.findtext("vcpu") == "3"
    assert int(root.findtext("memory")) == 1536 * 1024  # KiB
    disks = root.findall("devices/disk")
    assert [(d.get("device"), d.find("target").get("dev")) for d in disks] == [
        ("disk", "vda"),
        ("disk", "vdb"),
        ("disk", "vdc"),
        ("cdrom", "hda"),
    ]
    directory = vim.files.of("vm-1")
    sources = [Path(d.find("source").get("file")) for d in disks]
    assert sources == [
        directory / "disk.qcow2",
        directory / "volume-logs.qcow2",
        directory / "volume-db.qcow2",
        directory / "seed.iso",
    ]
    assert [d.findtext("serial") for d in disks[1:3]] == ["logs", "db"]
    # The overlay is on the image, which is only read; the volumes are of their size.
    overlay = qemu_img_info(sources[0])
    assert overlay["format"] == "qcow2"
    assert overlay["backing-filename"] == str(images / "debian-12.qcow2")
    assert overlay["virtual-size"] == 32 * 2**20
    assert qemu_img_info(sources[1])["virtual-size"] == 2 * 2**30
    assert qemu_img_info(sources[2])["virtual-size"] == 2**30

    nics = root.findall("devices/interface")
    assert [(n.get("type"), n.find("source").attrib) for n in nics] == [
        ("network", {"network": "esc-test"}),
        ("bridge", {"bridge": "br-data"}),
        ("network", {"network": "esc-test"}),
    ]
    assert [n.find("model").get("type") for n in nics] == ["virtio", "e1000", "virtio"]
    assert nics[1].find("vlan/tag").get("id") == "72"
    macs = [n.find("mac").get("address") for n in nics]
    assert len(set(macs)) == 3 and all(m.startswith("52:54:00:") for m in macs)
    assert root.find("devices/serial/source").get("path") == str(directory / "console.log")

    # Day-0 and the NICs' addresses as cloud-init reads them from the seed.
    seed = read_seed(sources[3])
    assert yaml.safe_load(seed["meta-data"]) == {"instance-id": "vm-1", "local-hostname": "web-1"}
    assert seed["user-data"].startswith("#cloud-config\n")
    written = yaml.safe_load(seed["user-data"])["write_files"]
    assert written == [
        {
            "path": "/etc/esc/day0/app.conf",
            "content": "listen = 8080\nworkers = 4\n",
            "owner": "root:root",
            "permissions": "0600",
        },
        {
            "path": "/etc/esc/day0/tls/key.pem",
            "content": "SECRET\n",
            "owner": "root:root",
            "permissions": "0600",
        },
    ]
    network = yaml.safe_load(seed["network-config"])
    assert network["version"] == 2
    eth0, eth1, eth2 = (network["ethernets"][f"eth{i}"] for i in range(3))
    assert eth0 == {
        "match": {"macaddress": macs[0]},
        "set-name": "eth0",
        "addresses": ["198.18.71.20/24"],  # the prefix of the libvirt network
        "routes": [{"to": "default", "via": "198.18.71.1"}],
    }
    assert eth1["addresses"] == ["198.18.72.5/24"] and "routes" not in eth1
    assert eth2 == {"match": {"macaddress": macs[2]}, "set-name": "eth2", "dhcp4": True}

    # The record: this controller's tags, where the files are, the fixed addresses.
    from esc.vim.libvirt import LibvirtVim

    record = LibvirtVim.record_of(observer.lookupByName("esc-vm-1"))
    assert record.tags == {TAG_CONTROLLER: "ctl-a", TAG_VM: "vm-1"}
    assert record.storage == str(directory)
    assert record.ips == ("198.18.71.20", "198.18.72.5", "")

    # Delete: the domain and every file of the VM go; the image stays.
    vim.delete_vm("vm-1")
    assert "esc-vm-1" not in [d.name() for d in observer.listAllDomains(0)]
    assert not directory.exists()
    assert (images / "debian-12.qcow2").exists()


def test_a_kernel_image_boots_directly_with_its_command_line(make: Callable, observer) -> None:
    vim = make(kernel_cmdline="console=ttyS0 default")
    with pytest.raises(UnknownImage, match=r"the libvirt host's images are debian-12, tiny$"):
        vim.validate_image("lonely")  # a kernel without its initramfs is no image
    vim.create_vm(VmSpec("vm-k", "k", "tiny", "m1.tiny"))
    os_ = domain_tree(observer, "esc-vm-k").find("os")
    assert Path(os_.findtext("kernel")).name == "tiny.kernel"
    assert Path(os_.findtext("initrd")).name == "tiny.initrd"
    assert os_.findtext("cmdline") == "console=ttyS0 quiet"
    disks = domain_tree(observer, "esc-vm-k").findall("devices/disk")
    assert [d.get("device") for d in disks] == ["cdrom"]  # no disk image, no overlay


def test_an_empty_image_directory_says_what_to_put_there(make: Callable, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UnknownImage, match=r"unknown image 'x'.* none \(put NAME\.qcow2"):
        make(image_dir=str(empty)).validate_image("x")


def test_another_controllers_domains_are_neither_seen_nor_touched(make: Callable, observer) -> None:
    mine, theirs = make("ctl-a"), make("ctl-b")
    mine.create_vm(VmSpec("vm-1", "a", "debian-12", "m1.tiny"))
    assert theirs.list_instances() == []
    assert theirs.status("vm-1").state is InstanceState.ABSENT
    assert theirs.stop_vm("vm-1").state is InstanceState.ABSENT
    theirs.delete_vm("vm-1")
    assert mine.status("vm-1").state is InstanceState.RUNNING
    # The same VM id for the other controller is another domain (the name is taken:
    # it gets a suffix; domains are found by UUID and record, not by name).
    assert theirs.create_vm(VmSpec("vm-1", "b", "debian-12", "m1.tiny")).state.value == "RUNNING"
    assert theirs.list_instances() == ["vm-1"] and mine.list_instances() == ["vm-1"]
    names = sorted(d.name() for d in observer.listAllDomains(0) if d.name().startswith("esc-"))
    assert names == ["esc-vm-1", f"esc-vm-1-{theirs.domain_uuid('vm-1')[:8]}"]
    theirs.delete_vm("vm-1")
    assert mine.status("vm-1").state is InstanceState.RUNNING


def test_an_untagged_domain_with_the_vms_uuid_is_left_alone(make: Callable, observer) -> None:
    vim = make()
    xml = untagged_domain_xml("squatter", vim.domain_uuid("vm-1"))
    observer.defineXML(xml).create()
    with pytest.raises(PermanentVimError, match="not this controller's; it is left alone"):
        vim.create_vm(VmSpec("vm-1", "a", "debian-12", "m1.tiny"))
    assert vim.status("vm-1").state is InstanceState.ABSENT
    vim.delete_vm("vm-1")
    assert observer.lookupByName("squatter").isActive()


def test_a_failed_start_is_an_error_until_a_start_works(make: Callable, observer) -> None:
    from esc.vim.libvirt_domain import Record

    vim = make()
    vim.create_vm(VmSpec("vm-1", "a", "debian-12", "m1.tiny"))
    vim.stop_vm("vm-1")
    dom = observer.lookupByName("esc-vm-1")
    record = vim.record_of(dom)
    failure = "libvirt failed to start it: internal error: qemu unexpectedly closed the monitor"
    vim._set_record(dom, Record(record.tags, record.storage, record.ips, failure))
    status = vim.status("vm-1")
    assert (status.state, status.detail) == (InstanceState.ERROR, failure)
    assert vim.start_vm("vm-1").state is InstanceState.RUNNING
    assert vim.record_of(dom).failure == ""
    assert vim.status("vm-1").detail == ""


def test_an_interrupted_creation_is_redone_and_its_leftovers_swept(
    make: Callable, observer, images: Path
) -> None:
    from esc.vim.libvirt_storage import Image

    vim = make()
    # Files made, then the controller died before defining the domain.
    vim.files.build("vm-1", Image("debian-12", disk=images / "debian-12.qcow2"), (), {"a": "b"})
    partial = vim.files.directory / ".partial-vm-2-0123abcd"
    partial.mkdir()
    assert vim.create_vm(VmSpec("vm-1", "a", "debian-12", "m1.tiny")).state.value == "RUNNING"
    assert "meta-data" in read_seed(vim.files.of("vm-1") / "seed.iso")
    vim.recover()
    assert not partial.exists() and vim.files.of("vm-1").exists()
    # A leftover without a domain goes with a delete of its VM.
    vim.files.build("vm-3", Image("debian-12", disk=images / "debian-12.qcow2"), (), {"a": "b"})
    vim.delete_vm("vm-3")
    assert not vim.files.of("vm-3").exists()


# refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"placement": Placement(host="kvm-2")}, r"placement host='kvm-2': .* one host"),
        ({"placement": Placement(zone="az1")}, r"placement zone='az1'"),
        (
            {"interfaces": (Interface("nowhere"),)},
            r"unknown network 'nowhere'; the libvirt host's networks are default, esc-test "
            r"\(a host bridge is written bridge:NAME\)",
        ),
        ({"interfaces": (Interface("esc-test", "10.9.9.9"),)}, r"not in its network"),
        ({"interfaces": (Interface("esc-test", "not-an-ip"),)}, r"'not-an-ip' is no IP"),
        ({"interfaces": (Interface("bridge:br0", "198.18.72.5"),)}, r"give the prefix"),
        ({"interfaces": (Interface("bridge:"),)}, r"name the bridge"),
        (
            {"interfaces": (Interface("esc-test", floating_ip="203.0.113.9"),)},
            r"libvirt has no floating IPs",
        ),
        ({"volumes": (Volume("../x", 1),)}, r"invalid volume name '\.\./x'"),
        ({"volumes": (Volume("a", 1), Volume("a", 2))}, r"volume names must be unique: a"),
        ({"volumes": (Volume("a", 0),)}, r"size_gb must be at least 1"),
        ({"day0_config": {"../../etc/shadow": "x"}}, r"is not a path inside /etc/esc/day0"),
        ({"day0_config": {"/etc/shadow": "x"}}, r"is not a path inside"),
        ({"day0_config": {"n.conf": 42}}, r"its content must be text, not int"),
    ],
)
def test_what_libvirt_cannot_do_is_refused_and_leaves_nothing(
    make: Callable, observer, change: dict, message: str
) -> None:
    observer.networkCreateXML(NETWORK_XML)
    vim = make()
    spec = VmSpec("vm-1", "a", "debian-12", "m1.tiny", **change)
    with pytest.raises(PermanentVimError, match=message):
        vim.create_vm(spec)
    assert vim.status("vm-1").state is InstanceState.ABSENT
    assert not vim.files.of("vm-1").exists()


# errors and check() ---------------------------------------------------------------------


@pytest.fixture
def auth_node(tmp_path: Path) -> str:
    """A test driver that asks for credentials (libvirt's test driver's <auth>)."""
    node = tmp_path / "node.xml"
    node.write_text("<node><auth><user password='s3cret'>operator</user></auth></node>")
    return f"test://{node}"


def write_password(path: Path, password: str, mode: int = 0o600) -> None:
    path.write_text(password + "\n")
    path.chmod(mode)


@need_sdk
def test_credentials_are_given_and_a_refusal_names_the_settings(
    make: Callable, auth_node: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_password(tmp_path / "libvirt.password", "s3cret")
    make(uri=auth_node, username="operator", password_file="libvirt.password").check()
    monkeypatch.setenv("ESC_LIBVIRT_PASSWORD", "s3cret")
    make(uri=auth_node, username="operator", password_env="ESC_LIBVIRT_PASSWORD").check()

    write_password(tmp_path / "wrong.password", "guess")
    wrong = make(uri=auth_node, username="operator", password_file="wrong.password")
    with pytest.raises(PermanentVimError) as refused:
        wrong.check()
    text = str(refused.value)
    assert "refused the authentication (authentication failed" in text
    assert "[vim.libvirt] username and password_file / password_env" in text
    assert "guess" not in text
    with pytest.raises(PermanentVimError, match="refused the authentication"):
        make(uri=auth_node).check()  # no credentials configured
    write_password(tmp_path / "open.password", "s3cret", 0o644)
    exposed = make(uri=auth_node, username="operator", password_file="open.password")
    with pytest.raises(PermanentVimError, match=r"readable by others \(mode 644\)"):
        exposed.status("vm-1")


@need_sdk
def test_a_daemon_that_does_not_answer_is_a_transient_error(make: Callable, tmp_path: Path) -> None:
    vim = make(uri=f"test+unix:///default?socket={tmp_path}/no-such.sock")
    with pytest.raises(TransientVimError, match=r"could not read the status .*Failed to connect"):
        vim.status("vm-1")
    with pytest.raises(TransientVimError, match=r"could not be reached .*uri = "):
        vim.check()
    with pytest.raises(TransientVimError, match="could not list the domains"):
        vim.list_instances()


@need_sdk
def test_check_names_what_is_unusable(make: Callable, tmp_path: Path) -> None:
    make().check()
    with pytest.raises(PermanentVimError, match=r"no-images.*\[vim\.libvirt\] image_dir"):
        make(image_dir=str(tmp_path / "no-images")).check()
    (tmp_path / "a-file").write_text("")
    with pytest.raises(PermanentVimError, match=r"\[vim\.libvirt\] instance_dir"):
        make(instance_dir=str(tmp_path / "a-file" / "instances")).check()


@need_sdk
def test_check_on_a_qemu_host_knows_the_domain_types_it_can_run() -> None:
    from esc.vim.libvirt import LibvirtVim

    capabilities = (
        "<capabilities><guest><arch name='x86_64'><domain type='qemu'/></arch></guest>"
        "</capabilities>"
    )

    class QemuHost:
        def getCapabilities(self) -> str:
            return capabilities

    vim = LibvirtVim(Path("/nonexistent"), LibvirtSettings(domain_type="kvm"))
    with pytest.raises(PermanentVimError, match=r"cannot run kvm guests \(it can run: qemu\)"):
        vim._check_domain_type(QemuHost())
    LibvirtVim(Path("/nonexistent"), LibvirtSettings(domain_type="qemu"))._check_domain_type(
        QemuHost()
    )


# settings -------------------------------------------------------------------------------


def test_the_settings_are_validated() -> None:
    defaults = LibvirtSettings()
    assert defaults.uri == "qemu:///system" and defaults.domain_type == "kvm"
    assert sorted(defaults.flavors) == ["m1.large", "m1.medium", "m1.small", "m1.tiny"]
    assert defaults.flavors["m1.small"] == LibvirtFlavor(vcpus=1, memory_mib=2048)
    parsed = VimSettings.model_validate(
        {
            "driver": "libvirt",
            "libvirt": {
                "domain_type": "qemu",
                "flavors": {"big": {"vcpus": 8, "memory_mib": 16384}},
            },
        }
    )
    assert parsed.libvirt.flavors == {"big": LibvirtFlavor(vcpus=8, memory_mib=16384)}
    for bad, message in [
        ({"domain_type": "xen"}, "domain_type"),
        ({"flavors": {}}, "declare at least one flavor"),
        ({"flavors": {"x": {"vcpus": 0, "memory_mib": 512}}}, "vcpus"),
        ({"flavors": {"x": {"vcpus": 1}}}, "memory_mib"),
        ({"shutdown_timeout": -1}, "shutdown_timeout"),
        ({"create_timeout": 0}, "create_timeout"),
        ({"password": "inline"}, "password"),  # secrets never in esc.toml
    ]:
        with pytest.raises(ValidationError, match=message):
            LibvirtSettings.model_validate(bad)


@need_sdk
def test_the_driver_is_found_by_name_with_its_settings(tmp_path: Path) -> None:
    settings = VimSettings.model_validate(
        {"driver": "libvirt", "libvirt": {"uri": URI, "image_dir": "images"}}
    )
    driver = load_driver("libvirt", tmp_path / "data", settings, tmp_path, "ctl-x")
    assert driver.name == "libvirt" and driver.controller_id == "ctl-x"
    assert driver.uri == URI
    assert driver.images.directory == tmp_path / "images"
    assert driver.files.directory == tmp_path / "data" / "libvirt" / "instances"
    assert os.path.isabs(driver.files.directory)


def test_a_paused_domain_is_stopped_and_starts_by_resuming(make: Callable, observer) -> None:
    vim = make()
    vim.create_vm(VmSpec("vm-1", "a", "debian-12", "m1.tiny"))
    observer.lookupByName("esc-vm-1").suspend()  # as an operator's virsh suspend does
    paused = vim.status("vm-1")
    assert (paused.state, paused.detail) == (InstanceState.STOPPED, "paused")
    assert vim.start_vm("vm-1").state is InstanceState.RUNNING
    observer.lookupByName("esc-vm-1").suspend()
    assert vim.stop_vm("vm-1").state is InstanceState.STOPPED  # powered off, not resumed
    assert not observer.lookupByName("esc-vm-1").isActive()


@need_sdk
def test_libvirt_states_and_reasons_map_to_instance_states() -> None:
    import libvirt

    from esc.vim.libvirt import _classify
    from esc.vim.libvirt_domain import Record

    plain, failed = Record({}), Record({}, failure="libvirt failed to start it: no kernel")
    cases = [
        ((libvirt.VIR_DOMAIN_RUNNING, 1, plain), (InstanceState.RUNNING, "")),
        ((libvirt.VIR_DOMAIN_BLOCKED, 0, plain), (InstanceState.RUNNING, "")),
        ((libvirt.VIR_DOMAIN_SHUTDOWN, 1, plain), (InstanceState.RUNNING, "shutting down")),
        (
            (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_STARTING_UP, plain),
            (InstanceState.BUILDING, "starting up"),
        ),
        (
            (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_IOERROR, plain),
            (InstanceState.ERROR, "paused by libvirt: a disk I/O error"),
        ),
        (
            (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_CRASHED, plain),
            (InstanceState.ERROR, "shut off: the guest crashed"),
        ),
        (
            (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED, failed),
            (InstanceState.ERROR, failed.failure),
        ),
        (
            (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN, plain),
            (InstanceState.STOPPED, ""),
        ),
        ((libvirt.VIR_DOMAIN_CRASHED, 0, plain), (InstanceState.ERROR, "the guest crashed")),
        (
            (libvirt.VIR_DOMAIN_PMSUSPENDED, 0, plain),
            (InstanceState.STOPPED, "suspended by the guest"),
        ),
        ((libvirt.VIR_DOMAIN_NOSTATE, 0, plain), (InstanceState.BUILDING, "")),
    ]
    for given, expected in cases:
        assert _classify(*given) == expected, given
