"""The vmware driver on govmomi's vCenter simulator, beyond the contract suite: what
vCenter holds after a create (NICs, disks, hardware, placement, tags, day-0), each kind
of vCenter error as the engine sees it, the settings' validation and check()."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from conftest import free_port
from pydantic import ValidationError
from pyVim.task import WaitForTask
from pyVmomi import vim
from vcsim_process import (
    CLUSTER,
    FOLDER_IMAGE,
    IMAGE,
    IMAGES_FOLDER,
    NETWORK,
    PORT_GROUP,
    QUOTA_MESSAGE,
    STANDALONE,
    Vcsim,
    availability,
    shared,
)

from esc.config import Settings
from esc.tls import generate_self_signed
from esc.vim.base import (
    InstanceState,
    Interface,
    PermanentVimError,
    Placement,
    TransientVimError,
    UnknownFlavor,
    UnknownImage,
    VmSpec,
    Volume,
    load_driver,
)
from esc.vim.vmware import VmwareVim


@pytest.fixture(scope="module")
def vcsim(request: pytest.FixtureRequest) -> Vcsim:
    return shared(request)


@pytest.fixture
def vmware(vcsim: Vcsim) -> Iterator[VmwareVim]:
    """A driver of a controller of its own; its VMs are destroyed after the test."""
    driver = vcsim.driver()
    yield driver
    vcsim.clear_faults()
    vcsim.guest_tools(False)
    for vm in vcsim.vms_of(driver.controller_id).values():
        vcsim.destroy(vm)
    driver.close()


def spec(vm_id: str = "vm-1", **fields: object) -> VmSpec:
    values: dict = {"vm_id": vm_id, "name": f"name-{vm_id}", "image": IMAGE, "flavor": "m1.tiny"}
    values.update(fields)
    return VmSpec(**values)


def decoded(options: dict[str, str], key: str) -> str:
    assert options[f"{key}.encoding"] == "base64"
    return base64.b64decode(options[key]).decode()


# what vCenter holds -------------------------------------------------------------------


def test_nics_disks_hardware_and_day0_are_in_the_vm(vcsim: Vcsim, vmware: VmwareVim) -> None:
    created = vmware.create_vm(
        spec(
            flavor="m1.small",
            interfaces=(Interface(NETWORK, ip="10.10.0.5/24"), Interface(PORT_GROUP)),
            volumes=(Volume("data", 2), Volume("logs", 1)),
            day0_config={"app.conf": "x = 1\n", "peers.json": '["a"]'},
        )
    )
    assert created.state is InstanceState.RUNNING
    assert (created.address, created.ips) == ("10.10.0.5", ("10.10.0.5",))
    vm = vcsim.vms_of(vmware.controller_id)["vm-1"]
    assert vm.name == "name-vm-1-vm-1"
    assert (vm.config.hardware.numCPU, vm.config.hardware.memoryMB) == (1, 2048)
    devices = vm.config.hardware.device
    nics = sorted(
        (d for d in devices if isinstance(d, vim.vm.device.VirtualEthernetCard)),
        key=lambda d: d.key,
    )
    # The template's E1000 is gone: the VM has the NICs the spec asks, in its order.
    assert [type(n).__name__ for n in nics] == ["vim.vm.device.VirtualVmxnet3"] * 2
    assert nics[0].backing.deviceName == NETWORK
    port_group = next(n for n in vcsim.datacenter.network if n.name == PORT_GROUP)
    assert nics[1].backing.port.portgroupKey == port_group.key
    disks = [d for d in devices if isinstance(d, vim.vm.device.VirtualDisk)]
    assert sorted(d.capacityInKB for d in disks)[-2:] == [2**20, 2 * 2**20]
    options = vcsim.options(vm)
    userdata = decoded(options, "guestinfo.userdata")
    assert userdata.startswith("#cloud-config\n")
    files = {f["path"]: f for f in yaml.safe_load(userdata)["write_files"]}
    assert set(files) == {"/etc/esc/day0/app.conf", "/etc/esc/day0/peers.json"}
    assert base64.b64decode(files["/etc/esc/day0/app.conf"]["content"]) == b"x = 1\n"
    metadata = json.loads(decoded(options, "guestinfo.metadata"))
    assert metadata["instance-id"] == "vm-1"
    assert metadata["local-hostname"] == "name-vm-1"
    assert metadata["network"]["ethernets"] == {
        "nic0": {
            "match": {"macaddress": nics[0].macAddress},
            "dhcp4": False,
            "addresses": ["10.10.0.5/24"],
        },
        "nic1": {"match": {"macaddress": nics[1].macAddress}, "dhcp4": True},
    }
    # Nothing of ours is a guestinfo key the guest could rewrite: the tags are not.
    assert (options["esc.controller"], options["esc.vm_id"]) == (vmware.controller_id, "vm-1")
    # Another driver object reads the same address back from vCenter.
    assert vcsim.driver(vmware.controller_id).status("vm-1") == created


def test_the_nic_model_is_the_settings_or_the_interfaces(vcsim: Vcsim) -> None:
    driver = vcsim.driver(nic_model="e1000")
    try:
        driver.create_vm(spec(interfaces=(Interface(NETWORK), Interface(NETWORK, model="e1000e"))))
        vm = vcsim.vms_of(driver.controller_id)["vm-1"]
        nics = sorted(
            (
                d
                for d in vm.config.hardware.device
                if isinstance(d, vim.vm.device.VirtualEthernetCard)
            ),
            key=lambda d: d.key,
        )
        assert [type(n).__name__.rsplit(".", 1)[1] for n in nics] == [
            "VirtualE1000",
            "VirtualE1000e",
        ]
        # No fixed IP: cloud-init keeps the image's DHCP, no network config is written.
        metadata = json.loads(decoded(vcsim.options(vm), "guestinfo.metadata"))
        assert "network" not in metadata
    finally:
        driver.delete_vm("vm-1")
        driver.close()


def test_without_interfaces_the_templates_nic_stays(vcsim: Vcsim, vmware: VmwareVim) -> None:
    vmware.create_vm(spec())
    vm = vcsim.vms_of(vmware.controller_id)["vm-1"]
    nics = [
        d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualEthernetCard)
    ]
    assert [type(n).__name__ for n in nics] == ["vim.vm.device.VirtualE1000"]
    assert "guestinfo.userdata" not in vcsim.options(vm)  # no day-0 files, no user data


def test_placement_maps_to_pool_datastore_and_folder(vcsim: Vcsim) -> None:
    cluster = vcsim.compute(CLUSTER)
    allocation = vim.ResourceAllocationInfo(
        reservation=0, limit=-1, expandableReservation=True, shares=vim.SharesInfo(level="normal")
    )
    pool_spec = vim.ResourceConfigSpec(cpuAllocation=allocation, memoryAllocation=allocation)
    cluster.resourcePool.CreateResourcePool("esc", pool_spec)
    vcsim.datacenter.vmFolder.CreateFolder("vnfs")
    driver = vcsim.driver(cluster=CLUSTER, resource_pool="esc", vm_folder="vnfs")
    # A VM's placement naming a host, no cluster: it goes to that host's compute resource.
    by_host = vcsim.driver(driver.controller_id)
    try:
        driver.create_vm(spec("vm-a", placement=Placement(datastore="LocalDS_1")))
        by_host.create_vm(spec("vm-b", placement=Placement(host=STANDALONE)))
        vms = vcsim.vms_of(driver.controller_id)
        assert vms["vm-a"].resourcePool.name == "esc"
        assert vms["vm-a"].resourcePool.parent.parent == cluster
        assert [d.name for d in vms["vm-a"].datastore] == ["LocalDS_1"]
        assert vms["vm-a"].parent.name == "vnfs"
        assert vms["vm-b"].resourcePool == vcsim.compute(STANDALONE).resourcePool
        assert vms["vm-b"].parent == vcsim.datacenter.vmFolder
    finally:
        for vm_id in driver.list_instances():
            driver.delete_vm(vm_id)
        driver.close()
        by_host.close()


def test_unknown_placement_and_networks_are_refused_by_name(vmware: VmwareVim) -> None:
    with pytest.raises(
        PermanentVimError, match=r"unknown cluster 'C9'; datacenter 'DC0''s are DC0_C0, DC0_H0"
    ):
        vmware.create_vm(spec(placement=Placement(cluster="C9")))
    with pytest.raises(
        PermanentVimError, match=r"unknown host 'H9'; cluster 'DC0_C0''s are DC0_C0_H0, "
    ):
        vmware.create_vm(spec(placement=Placement(cluster=CLUSTER, host="H9")))
    with pytest.raises(PermanentVimError, match=r"unknown datastore 'DS9'; .*LocalDS_0, LocalDS_1"):
        vmware.create_vm(spec(placement=Placement(datastore="DS9")))
    with pytest.raises(PermanentVimError, match=r"unknown network 'net9'; .*VM Network"):
        vmware.create_vm(spec(interfaces=(Interface("net9"),)))
    with pytest.raises(PermanentVimError, match="no floating IPs"):
        vmware.create_vm(spec(interfaces=(Interface(NETWORK, floating_ip="203.0.113.9"),)))
    with pytest.raises(PermanentVimError, match="no IP address"):
        vmware.create_vm(spec(interfaces=(Interface(NETWORK, ip="10.0.0.300"),)))
    with pytest.raises(PermanentVimError, match="no plain file name"):
        vmware.create_vm(spec(day0_config={"../etc/passwd": "x"}))
    assert vmware.list_instances() == []


def test_images_are_templates_or_the_templates_folders_vms(vcsim: Vcsim, vmware: VmwareVim) -> None:
    with pytest.raises(
        UnknownImage, match=rf"unknown image 'nope'; the vCenter's images are {IMAGE} "
    ):
        vmware.validate_image("nope")
    with pytest.raises(UnknownImage):  # a plain VM is no image unless in the templates folder
        vmware.validate_image(FOLDER_IMAGE)
    in_folder = vcsim.driver(vmware.controller_id, templates_folder=IMAGES_FOLDER)
    try:
        in_folder.validate_image(FOLDER_IMAGE)
        with pytest.raises(
            UnknownImage, match=rf"images are {FOLDER_IMAGE} \(the templates folder"
        ):
            in_folder.validate_image(IMAGE)
        assert in_folder.create_vm(spec(image=FOLDER_IMAGE)).state is InstanceState.RUNNING
    finally:
        in_folder.close()


def test_flavors_are_the_settings(vcsim: Vcsim) -> None:
    driver = vcsim.driver(flavors={"vnf.big": {"vcpus": 8, "memory_mb": 16384}})
    try:
        driver.validate_flavor("vnf.big")
        with pytest.raises(
            UnknownFlavor, match=r"unknown flavor 'm1.tiny'; the vCenter's flavors are vnf.big"
        ):
            driver.validate_flavor("m1.tiny")
        driver.create_vm(spec(flavor="vnf.big"))
        vm = vcsim.vms_of(driver.controller_id)["vm-1"]
        assert (vm.config.hardware.numCPU, vm.config.hardware.memoryMB) == (8, 16384)
    finally:
        driver.delete_vm("vm-1")
        driver.close()


# stopping -----------------------------------------------------------------------------


def test_with_guest_tools_a_stop_shuts_the_guest_down(vcsim: Vcsim, vmware: VmwareVim) -> None:
    vcsim.guest_tools(True)
    vmware.create_vm(spec())
    vm = vcsim.vms_of(vmware.controller_id)["vm-1"]
    assert vm.guest.toolsRunningStatus == "guestToolsRunning"
    assert vmware.stop_vm("vm-1").state is InstanceState.STOPPED
    assert vcsim.events(vm)[-2:] == ["VmGuestShutdownEvent", "VmPoweredOffEvent"]
    # A reboot with tools is a guest shutdown and a power-on.
    vmware.start_vm("vm-1")
    assert vmware.reboot_vm("vm-1").state is InstanceState.RUNNING
    assert vcsim.events(vm).count("VmGuestShutdownEvent") == 2


def test_without_guest_tools_a_stop_powers_off(vcsim: Vcsim, vmware: VmwareVim) -> None:
    vmware.create_vm(spec())
    vm = vcsim.vms_of(vmware.controller_id)["vm-1"]
    assert vmware.stop_vm("vm-1").state is InstanceState.STOPPED
    events = vcsim.events(vm)
    assert "VmGuestShutdownEvent" not in events and events[-1] == "VmPoweredOffEvent"


# vCenter's errors ---------------------------------------------------------------------


def test_a_refused_power_on_leaves_the_vm_in_error_with_vcenters_words(
    vcsim: Vcsim, vmware: VmwareVim
) -> None:
    vcsim.fail_task("PowerOnVM_Task", "InsufficientResourcesFault", QUOTA_MESSAGE)
    with pytest.raises(PermanentVimError) as refused:
        vmware.create_vm(spec())
    assert QUOTA_MESSAGE in str(refused.value)
    assert "InsufficientResourcesFault" in str(refused.value)
    status = vcsim.driver(vmware.controller_id).status("vm-1")  # any driver object sees it
    assert status.state is InstanceState.ERROR and QUOTA_MESSAGE in status.detail
    # Once vCenter has room, a start clears the error.
    assert vmware.start_vm("vm-1").state is InstanceState.RUNNING
    assert vmware.stop_vm("vm-1") == vmware.status("vm-1")
    assert vmware.status("vm-1").detail == ""


def test_a_refused_clone_creates_nothing(vcsim: Vcsim, vmware: VmwareVim) -> None:
    vcsim.fail_task("CloneVM_Task", "InsufficientResourcesFault", QUOTA_MESSAGE)
    with pytest.raises(PermanentVimError, match="Memory resources in the parent resource pool"):
        vmware.create_vm(spec())
    assert vmware.list_instances() == []


def test_a_missing_privilege_is_refused_naming_the_user(vcsim: Vcsim, vmware: VmwareVim) -> None:
    vcsim.fail_task(
        "CloneVM_Task", "NoPermission", "Permission to perform this operation was denied."
    )
    with pytest.raises(PermanentVimError) as refused:
        vmware.create_vm(spec())
    assert "user 'esc@vsphere.local' may not create VM vm-1: Permission to perform this" in str(
        refused.value
    )
    assert vmware.list_instances() == []


def test_busy_and_unavailable_vcenter_are_transient(vcsim: Vcsim, vmware: VmwareVim) -> None:
    vcsim.fail_task("PowerOnVM_Task", "TaskInProgress", "Another task is already in progress.")
    with pytest.raises(TransientVimError, match="Another task is already in progress"):
        vmware.create_vm(spec())
    # Asked again, the create finishes the same VM: one VM, running.
    assert vmware.create_vm(spec()).state is InstanceState.RUNNING
    assert list(vcsim.vms_of(vmware.controller_id)) == ["vm-1"]
    vcsim.fail_http(status=503)
    with pytest.raises(TransientVimError, match="503 Service Unavailable"):
        vmware.status("vm-1")
    assert vmware.status("vm-1").state is InstanceState.RUNNING
    # A 4xx is no passing trouble: whatever answers there is not vCenter's SDK.
    vcsim.fail_http(status=404)
    with pytest.raises(PermanentVimError, match=r"HTTP 404 Not Found .* is it vCenter's /sdk"):
        vmware.status("vm-1")


def test_a_vm_deleted_behind_the_drivers_back_is_absent(vcsim: Vcsim, vmware: VmwareVim) -> None:
    vmware.create_vm(spec())
    vcsim.destroy(vcsim.vms_of(vmware.controller_id)["vm-1"])
    assert vmware.status("vm-1").state is InstanceState.ABSENT
    with pytest.raises(PermanentVimError, match="does not exist"):
        vmware.start_vm("vm-1")
    vmware.delete_vm("vm-1")


def test_a_forgotten_session_is_logged_in_again(vcsim: Vcsim, vmware: VmwareVim) -> None:
    vmware.create_vm(spec())
    before = vmware.session.content.sessionManager.currentSession.key
    vcsim.content.sessionManager.TerminateSession([before])
    # Several threads find the session gone at once: one logs in again, all go on.
    with ThreadPoolExecutor(4) as pool:
        states = list(pool.map(lambda _: vmware.status("vm-1").state, range(4)))
    assert states == [InstanceState.RUNNING] * 4
    assert vmware.session.content.sessionManager.currentSession.key != before


def test_vms_without_both_tags_or_with_copied_tags(vcsim: Vcsim, vmware: VmwareVim) -> None:
    only_id = vcsim.put_vm("half-tagged", {"esc.vm_id": "vm-h"})
    other = vcsim.put_vm("others", {"esc.controller": "another", "esc.vm_id": "vm-o"})
    try:
        assert vmware.list_instances() == []
        assert vmware.status("vm-h").state is InstanceState.ABSENT
        vmware.delete_vm("vm-o")
        assert other.runtime.powerState == "poweredOn" and only_id.runtime.powerState == "poweredOn"
        vmware.create_vm(spec())
        copy = vcsim.put_vm("copy", vcsim.options(vcsim.vms_of(vmware.controller_id)["vm-1"]))
        fresh = vcsim.driver(vmware.controller_id)  # finds the VM by its tags, not by memory
        with pytest.raises(
            PermanentVimError, match=r"2 VMs carry the tags of VM vm-1 \(copy, name-vm-1-vm-1\)"
        ):
            fresh.status("vm-1")
        fresh.close()
        vcsim.destroy(copy)
    finally:
        vcsim.destroy(only_id)
        vcsim.destroy(other)


# logging in ---------------------------------------------------------------------------


def test_a_wrong_password_names_auth_and_the_settings(vcsim: Vcsim, tmp_path: Path) -> None:
    (tmp_path / "wrong").write_text("not-the-password\n")
    (tmp_path / "wrong").chmod(0o600)
    driver = VmwareVim(vcsim.settings(password_file="wrong"), tmp_path)
    with pytest.raises(PermanentVimError) as refused:
        driver.check()
    message = str(refused.value)
    assert "refused the login of user 'esc@vsphere.local': Login failure" in message
    assert "[vim.vmware] user" in message and "password_file" in message
    assert "not-the-password" not in message
    with pytest.raises(PermanentVimError, match="refused the login"):
        driver.validate_image(IMAGE)


def test_a_password_file_others_can_read_is_refused(vcsim: Vcsim, tmp_path: Path) -> None:
    (tmp_path / "open").write_text(vcsim.password)
    (tmp_path / "open").chmod(0o644)
    with pytest.raises(
        PermanentVimError, match=r"password_file / password_env: .* readable by others"
    ):
        VmwareVim(vcsim.settings(password_file="open"), tmp_path).check()
    missing = VmwareVim(
        vcsim.settings(password_file="", password_env="ESC_TEST_NO_SUCH_VAR"), tmp_path
    )
    with pytest.raises(PermanentVimError, match="ESC_TEST_NO_SUCH_VAR is not set"):
        missing.check()


def test_a_password_from_the_environment(
    vcsim: Vcsim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ESC_TEST_VCENTER_PASSWORD", vcsim.password)
    driver = VmwareVim(
        vcsim.settings(password_file="", password_env="ESC_TEST_VCENTER_PASSWORD"), tmp_path
    )
    driver.check()
    driver.close()


def test_check_names_the_endpoint_and_the_settings(vcsim: Vcsim) -> None:
    down = vcsim.driver(port=free_port())
    with pytest.raises(
        TransientVimError, match=r"http://127.0.0.1:\d+/sdk cannot be reached .*refused"
    ):
        down.check()
    for setting, value, words in [
        (
            "datacenter",
            "DC9",
            r"unknown datacenter 'DC9'; vCenter \(\[vim.vmware\] datacenter\)'s are DC0",
        ),
        ("vm_folder", "a/b", r"\[vim.vmware\] vm_folder 'a/b': unknown folder 'a'"),
        ("templates_folder", "none", r"\[vim.vmware\] templates_folder 'none'"),
        ("cluster", "C9", r"unknown cluster 'C9'"),
        ("datastore", "DS9", r"unknown datastore 'DS9'"),
    ]:
        driver = vcsim.driver(**{setting: value})
        with pytest.raises(PermanentVimError, match=words):
            driver.check()
        driver.close()
    vcsim.driver().check()


@pytest.fixture(scope="module")
def tls_vcsim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vcsim]:
    """A second simulator, serving HTTPS with a certificate of the test's own."""
    if reason := availability():
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("vcsim-tls")
    cert, key = root / "cert.pem", root / "key.pem"
    generate_self_signed(cert, key, ["127.0.0.1"])
    simulator = Vcsim(root, datastores=1, tls=(cert, key))
    simulator.start()
    yield simulator
    simulator.stop()


def test_tls_is_checked_against_cacert_or_skipped_when_insecure(
    tls_vcsim: Vcsim, tmp_path: Path
) -> None:
    tls_vcsim.driver().check()  # cacert: the simulator's certificate
    untrusted = tls_vcsim.driver(cacert="")  # the system's CAs do not know it
    with pytest.raises(
        PermanentVimError,
        match=r"TLS certificate of vCenter at https://127.0.0.1:\d+/sdk is refused "
        r"\(self.signed certificate\).*cacert",
    ):
        untrusted.check()
    tls_vcsim.driver(cacert="", insecure=True).check()
    (tmp_path / "junk.pem").write_text("no certificate\n")
    with pytest.raises(PermanentVimError, match="cacert: cannot load CA certificates"):
        VmwareVim(tls_vcsim.settings(cacert=str(tmp_path / "junk.pem")), tls_vcsim.root).check()


# settings -----------------------------------------------------------------------------


def test_the_settings_name_what_the_driver_needs() -> None:
    with pytest.raises(ValidationError) as refused:
        Settings.model_validate(
            {"vim": {"driver": "vmware", "vmware": {"cacert": "ca.pem", "insecure": True}}}
        )
    message = str(refused.value)
    for words in [
        "host is required",
        "user is required",
        "needs password_file",
        "cacert and insecure",
    ]:
        assert words in message
    with pytest.raises(ValidationError, match="protocol"):
        Settings.model_validate({"vim": {"vmware": {"protocol": "ftp"}}})
    with pytest.raises(ValidationError, match="vcpus"):
        Settings.model_validate({"vim": {"vmware": {"flavors": {"x": {"memory_mb": 512}}}}})
    with pytest.raises(ValidationError, match="Extra inputs"):
        Settings.model_validate({"vim": {"vmware": {"flavours": {}}}})
    defaults = Settings().vim.vmware
    assert (defaults.port, defaults.protocol, defaults.nic_model) == (443, "https", "vmxnet3")
    assert sorted(defaults.flavors) == ["m1.large", "m1.medium", "m1.small", "m1.tiny"]


def test_load_driver_builds_it_from_the_vim_section(vcsim: Vcsim, tmp_path: Path) -> None:
    settings = Settings.model_validate(
        {
            "vim": {
                "driver": "vmware",
                "vmware": vcsim.settings(password_file=str(vcsim.password_file)).model_dump(),
            }
        }
    )
    driver = load_driver("vmware", tmp_path, settings.vim, tmp_path, controller_id="ctl-load")
    assert isinstance(driver, VmwareVim) and driver.controller_id == "ctl-load"
    driver.check()
    driver.close()
    with pytest.raises(PermanentVimError, match="host is required"):
        load_driver("vmware", tmp_path, Settings().vim, tmp_path)


def test_the_vm_name_carries_the_vm_id_whole(vcsim: Vcsim, vmware: VmwareVim) -> None:
    vm_id = str(uuid.uuid4())
    vmware.create_vm(spec(vm_id, name="x" * 200))
    vm = vcsim.vms_of(vmware.controller_id)[vm_id]
    assert len(vm.name) == 80 and vm.name.endswith(f"-{vm_id}")
    WaitForTask(vm.PowerOffVM_Task())
