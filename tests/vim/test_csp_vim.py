"""The csp driver against the fake CSP, beyond the contract: what a service holds after
a create (vNICs, address, flavor, day-0 ISO), placement and capacity, every kind of
error (CSP's refusals in its words, auth, TLS, transient failures), the states CSP
reports (building, error, powering off) and the [vim.csp] settings."""

from __future__ import annotations

import json
import os
import socket
import ssl
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fake_csp import ERRORS, IMAGES, MEDIA_TYPE, NAME_MAX, REQUESTS, FakeCsp
from pydantic import ValidationError
from target_csp import CONTROLLER, IMAGE, digest, make_driver, put_foreign

from esc.config import VimSettings
from esc.tls import generate_self_signed
from esc.vim.base import (
    InstanceState,
    Interface,
    PermanentVimError,
    Placement,
    TransientVimError,
    UnknownImage,
    VimError,
    VmSpec,
    Volume,
    load_driver,
)
from esc.vim.csp import SERVICE_NAME_MAX, CspVim
from esc.vim.csp_client import member

SERVICES = REQUESTS["create_service"]["path"]


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeCsp]:
    csp = FakeCsp(tmp_path_factory.mktemp("csp"))
    csp.start()
    yield csp
    csp.stop()


@pytest.fixture(autouse=True)
def empty_csp(fake: FakeCsp) -> Iterator[None]:
    fake.reset()
    yield
    fake.reset()


@pytest.fixture
def vim(fake: FakeCsp, tmp_path: Path) -> CspVim:
    driver = make_driver(fake, tmp_path)
    assert isinstance(driver, CspVim)
    return driver


def service_of(vm_id: str, controller: str = CONTROLLER) -> str:
    return f"esc-{digest(controller)}-{vm_id}"


def spec(vm_id: str = "vm-1", **fields: object) -> VmSpec:
    values: dict = {"name": f"name-{vm_id}", "image": IMAGE, "flavor": "m1.small"}
    values.update(fields)
    return VmSpec(vm_id, **values)


def api_get(fake: FakeCsp, path: str) -> dict:
    """What a script reading the CSP sees, through its API."""
    with fake.client() as client:
        answer = client.get(path)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith(MEDIA_TYPE)
    return answer.json()


# what a created service holds ------------------------------------------------------------


def test_a_service_holds_the_flavor_vnics_address_and_day0_iso(vim: CspVim, fake: FakeCsp) -> None:
    created = vim.create_vm(
        spec(
            interfaces=(
                Interface("enp1s0f0", ip="198.51.100.7", vlan=510),
                Interface("Internal1", model="e1000"),
            ),
            day0_config={"iosxe_config.txt": "hostname r1\n", "user-data": "#cloud-config\n"},
            placement=Placement(host="csp-2100"),
        )
    )
    name = service_of("vm-1")
    assert created.state is InstanceState.RUNNING
    assert (created.address, created.ips) == ("198.51.100.7", ("198.51.100.7",))
    held = api_get(fake, f"{SERVICES}/service/{name}")["service"]
    small = VimSettings().csp.flavors["m1.small"]
    assert (held["iso_name"], held["numcpu"], held["memory"], held["disk_size"]) == (
        IMAGE,
        small.numcpu,
        small.memory_mb,
        small.disk_gb,
    )
    assert (held["power"], held["ip"]) == ("on", "198.51.100.7")
    assert api_get(fake, f"{SERVICES}/service/{name}/vnics/vnic/0")["vnic"] == {
        "nic": 0,
        "type": "access",
        "tagged": "false",
        "model": "virtio",
        "network_name": "enp1s0f0",
        "vlan": "510",
    }
    second = api_get(fake, f"{SERVICES}/service/{name}/vnics/vnic/1")["vnic"]
    assert (second["network_name"], second["model"], "vlan" in second) == (
        "Internal1",
        "e1000",
        False,
    )
    # Every key sent is one the recorded create request names.
    shape = REQUESTS["create_service"]
    assert set(held) <= set(shape["required"]) | set(shape["optional"])
    # Day 0: one ISO in the repository, named by the service, holding every file.
    iso = f"{name}-day0.iso"
    assert held["day0_filename"] == held["day0-dest-filename"] == iso
    assert fake.day0_files(iso) == {
        "iosxe_config.txt": "hostname r1\n",
        "user-data": "#cloud-config\n",
    }
    assert fake.volume_label(iso) == "cidata"
    # Uploaded as the web UI uploads: a login session, the file, a logout.
    assert [
        fake.count("POST", REQUESTS[k]["path"], 200) for k in ("login", "upload_file", "logout")
    ] == [1, 1, 1]
    assert fake.count("POST", SERVICES, 201) == 1

    vim.delete_vm("vm-1")
    assert fake.names() == [] and iso not in fake.repository


def test_a_vm_without_interfaces_gets_one_vnic_on_the_default_network(
    fake: FakeCsp, tmp_path: Path
) -> None:
    default = make_driver(fake, tmp_path / "a")
    default.create_vm(spec("vm-d"))
    (vnic,) = fake.service(service_of("vm-d"))["vnics"]["vnic"]
    assert vnic["network_name"] == "enp1s0f0" and "ip" not in fake.service(service_of("vm-d"))
    assert default.status("vm-d").address is None
    bare = make_driver(fake, tmp_path / "b", network="")
    bare.create_vm(spec("vm-n"))
    assert "vnics" not in fake.service(service_of("vm-n"))


def test_what_a_csp_service_cannot_have_is_refused_before_anything_is_made(
    vim: CspVim, fake: FakeCsp
) -> None:
    cases = [
        (spec(volumes=(Volume("data", 10),)), r"data volumes \(data\).*one disk of its flavor"),
        (spec(interfaces=(Interface("enp1s0f0", floating_ip="203.0.113.9"),)), "no floating IPs"),
        (
            spec(interfaces=(Interface("enp1s0f0"), Interface("enp1s0f1", ip="198.51.100.8"))),
            "one address per service",
        ),
        (spec(placement=Placement(zone="az1")), "zone, datastore or cluster"),
        (spec(placement=Placement(group="edge")), "cannot keep its VMs apart"),
        (
            spec(placement=Placement(group="edge", group_policy="anti-affinity")),
            "cannot keep its VMs apart",
        ),
        (spec(day0_config={"../etc/passwd": "x"}), "cannot go on the day-0 CD"),
        (spec("v" * 60), f"CSP service names at most {SERVICE_NAME_MAX}"),
    ]
    for asked, refusal in cases:
        with pytest.raises(PermanentVimError, match=refusal):
            vim.create_vm(asked)
    assert fake.count("POST", SERVICES) == 0 and fake.names() == []
    assert fake.count("POST", REQUESTS["upload_file"]["path"]) == 0
    # Together on one host is what a CSP does anyway; a soft wish to be apart is no order.
    for policy in ("affinity", "soft-anti-affinity"):
        vim.create_vm(spec(f"vm-{policy}", placement=Placement(group="edge", group_policy=policy)))
    assert vim.list_instances() == ["vm-affinity", "vm-soft-anti-affinity"]


def test_the_drivers_name_limit_is_the_recorded_one() -> None:
    assert SERVICE_NAME_MAX == NAME_MAX


# placement and capacity ------------------------------------------------------------------


def test_a_service_beyond_the_hosts_free_capacity_is_refused_with_csps_numbers(
    vim: CspVim, fake: FakeCsp
) -> None:
    fake.cpus, fake.ram_mb = 4, 8192
    vim.create_vm(spec("vm-1", flavor="m1.medium"))  # 2 CPUs, 4096 MiB
    with pytest.raises(PermanentVimError) as refused:
        vim.create_vm(spec("vm-2", flavor="m1.large"))  # 4 CPUs, 8192 MiB
    assert (
        "has no room for service " + service_of("vm-2") + ": it needs 4 CPUs and 8192 MiB, "
        "and the CSP counts 2 of 4 CPUs free (num_cpus_used 2) and 4096 of 8192 MiB free "
        "(ram_used_mb 4096)"
    ) in str(refused.value)
    assert fake.count("POST", SERVICES) == 1  # refused before asking
    assert vim.list_instances() == ["vm-1"]
    # The CSP itself refuses the same, in its words, to one who asks it straight.
    body = {
        "service": {"name": "big", "iso_name": IMAGE, "numcpu": 4, "memory": 8192, "disk_size": 1}
    }
    with fake.client() as client:
        answer = client.post(SERVICES, content=json.dumps(body))
    assert answer.status_code == ERRORS["over_capacity"]["status"]
    assert (
        "not enough resources on csp-2100" in answer.json()["errors"]["error"][0]["error-message"]
    )


def test_an_unknown_placement_host_is_refused_naming_the_setting(vim: CspVim) -> None:
    with pytest.raises(PermanentVimError, match=r"has no resource 'csp-9'.*\[vim\.csp\] host"):
        vim.create_vm(spec(placement=Placement(host="csp-9")))


# CSP's refusals --------------------------------------------------------------------------


def test_an_unknown_image_names_the_repositorys_images_but_not_day0_files(
    vim: CspVim, fake: FakeCsp
) -> None:
    vim.create_vm(spec(day0_config={"a.cfg": "x"}))
    with pytest.raises(UnknownImage) as refused:
        vim.validate_image("ubuntu-99.04.qcow2")
    message = str(refused.value)
    assert message.startswith(
        "unknown image 'ubuntu-99.04.qcow2'; the CSP's images are asav9-18-1.qcow2, "
        "csr1000v-universalk9.16.09.01.qcow2, ubuntu-22.04-server-cloudimg-amd64.qcow2 "
    )
    assert "day0" not in message


def test_a_refusal_carries_csps_own_words(vim: CspVim, fake: FakeCsp) -> None:
    with pytest.raises(PermanentVimError) as refused:
        vim.create_vm(spec(interfaces=(Interface("bogus-net"),), day0_config={"a.cfg": "x"}))
    assert str(refused.value) == (
        f"the CSP refused to create service {service_of('vm-1')}: illegal reference "
        f"/services/service{{{service_of('vm-1')}}}/vnics/vnic{{0}}/network_name: "
        "no network bogus-net"
    )
    # Neither the service nor its day-0 file: nothing is left of the refused create.
    assert fake.names() == [] and sorted(fake.repository) == sorted(IMAGES)


def test_a_service_made_meanwhile_is_taken_as_created_not_duplicated(
    vim: CspVim, fake: FakeCsp, tmp_path: Path
) -> None:
    other = make_driver(fake, tmp_path)  # the same controller
    other.create_vm(spec())
    # This driver's read misses it (as a read racing the other's create would), so it asks
    # CSP to create it too: CSP answers that it exists, and that is the VM.
    fake.fail_next(1, method="GET", path=f"{SERVICES}/service/{service_of('vm-1')}", status=404)
    assert vim.create_vm(spec()).state is InstanceState.RUNNING
    assert fake.count("POST", SERVICES, 409) == 1
    assert fake.names() == [service_of("vm-1")]


# credentials, TLS, transient failures ----------------------------------------------------


def test_bad_credentials_are_a_permanent_error_naming_the_settings(
    vim: CspVim, fake: FakeCsp, tmp_path: Path
) -> None:
    fake.password = "rotated-by-the-admin"
    for call in (vim.check, vim.list_instances, lambda: vim.create_vm(spec())):
        with pytest.raises(PermanentVimError) as refused:
            call()
        assert "refused the credentials of user 'admin'" in str(refused.value)
        assert "authentication failed: access denied" in str(refused.value)
        assert "[vim.csp] username and the password in password_file / password_env" in str(
            refused.value
        )
    assert fake.names() == []
    missing = make_driver(fake, tmp_path / "other", password_file="absent.password")
    with pytest.raises(
        PermanentVimError, match=r"\[vim.csp\] password_file / password_env: cannot read"
    ):
        missing.check()


def test_a_password_file_others_can_read_is_refused(fake: FakeCsp, tmp_path: Path) -> None:
    vim = make_driver(fake, tmp_path)
    os.chmod(tmp_path / "csp.password", 0o644)
    with pytest.raises(PermanentVimError, match=r"readable by others.*chmod 600"):
        vim.check()


def test_the_password_may_come_from_the_environment(
    fake: FakeCsp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CSP_PASSWORD", fake.password)
    vim = make_driver(fake, tmp_path, password_file="", password_env="CSP_PASSWORD")
    vim.check()
    monkeypatch.setenv("CSP_PASSWORD", "wrong-Pass-9")
    wrong = make_driver(fake, tmp_path, password_file="", password_env="CSP_PASSWORD")
    with pytest.raises(PermanentVimError) as refused:
        wrong.check()
    assert "refused the credentials" in str(refused.value)
    assert "wrong-Pass-9" not in str(refused.value)
    monkeypatch.delenv("CSP_PASSWORD")
    unset = make_driver(fake, tmp_path, password_file="", password_env="CSP_PASSWORD")
    with pytest.raises(PermanentVimError, match="CSP_PASSWORD is not set"):
        unset.check()


def test_a_certificate_the_cacert_does_not_vouch_for_is_refused(
    fake: FakeCsp, tmp_path: Path
) -> None:
    generate_self_signed(tmp_path / "other.pem", tmp_path / "other.key", ["127.0.0.1"])
    untrusted = make_driver(fake, tmp_path, cacert="other.pem")
    with pytest.raises(PermanentVimError) as refused:
        untrusted.check()
    assert f"the certificate of the CSP at {fake.url} is not trusted by [vim.csp] cacert" in str(
        refused.value
    )
    assert "set [vim.csp] cacert to the CSP's certificate" in str(refused.value)
    absent = make_driver(fake, tmp_path, cacert="absent.pem")
    with pytest.raises(PermanentVimError, match=r"cacert .*absent\.pem does not exist"):
        absent.check()
    # Only when the operator says so: no check of the certificate at all.
    make_driver(fake, tmp_path, cacert="", insecure=True).check()


def test_5xx_connection_refused_and_timeouts_are_transient(
    vim: CspVim, fake: FakeCsp, tmp_path: Path
) -> None:
    fake.fail_next(2)
    for _ in range(2):
        with pytest.raises(TransientVimError, match="failed to list its services: the CSP is busy"):
            vim.list_instances()
    assert vim.list_instances() == []  # it passed

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    nobody = make_driver(fake, tmp_path / "nobody", url=f"https://127.0.0.1:{port}")
    with pytest.raises(TransientVimError, match=r"cannot be reached to .*check \[vim\.csp\] url"):
        nobody.check()
    with socket.socket() as silent:  # accepts the connection, never answers the handshake
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"https://127.0.0.1:{silent.getsockname()[1]}"
        slow = make_driver(fake, tmp_path / "slow", url=url, timeout=0.3)
        with pytest.raises(
            TransientVimError, match=r"did not answer within 0\.3 s \(\[vim\.csp\] timeout\)"
        ):
            slow.status("vm-1")


def test_check_names_what_failed(vim: CspVim, fake: FakeCsp, tmp_path: Path) -> None:
    vim.check()
    elsewhere = make_driver(fake, tmp_path / "h", host="csp-5000")
    with pytest.raises(PermanentVimError, match=r"has no resource 'csp-5000'.*\[vim\.csp\] host"):
        elsewhere.check()


# the states CSP reports ------------------------------------------------------------------


def test_a_service_csp_fails_is_error_with_csps_reason(vim: CspVim, fake: FakeCsp) -> None:
    fake.fail_next_boot("qemu-kvm: could not open disk image: Permission denied")
    with pytest.raises(PermanentVimError) as failed:
        vim.create_vm(spec())
    assert str(failed.value) == (
        f"the CSP failed service {service_of('vm-1')}: qemu-kvm: could not open disk image: "
        "Permission denied"
    )
    status = vim.status("vm-1")
    assert status.state is InstanceState.ERROR and "Permission denied" in status.detail
    with pytest.raises(PermanentVimError, match="could not open disk image"):
        vim.create_vm(spec())  # asked again: the same failed service, not a second one
    assert fake.count("POST", SERVICES) == 1
    vim.delete_vm("vm-1")  # powered off, then deleted
    assert fake.names() == []


def test_a_service_is_building_until_deployed_and_a_slow_one_times_out(
    fake: FakeCsp, tmp_path: Path
) -> None:
    fake.boot_seconds = 60  # deploying for as long as the test looks
    vim = make_driver(fake, tmp_path, boot_timeout=0.2)
    with pytest.raises(
        TransientVimError, match=r"running within 0\.2 s \(\[vim\.csp\] boot_timeout\)"
    ):
        vim.create_vm(spec())
    status = vim.status("vm-1")
    assert status.state is InstanceState.BUILDING and "deploying" in status.detail
    fake.boot_seconds = 0  # deployed now
    patient = make_driver(fake, tmp_path, boot_timeout=5)
    assert patient.create_vm(spec()).state is InstanceState.RUNNING  # retried: the same service
    assert fake.count("POST", SERVICES) == 1


def test_delete_powers_off_and_waits_before_deleting(vim: CspVim, fake: FakeCsp) -> None:
    fake.stop_seconds = 0.3
    vim.create_vm(spec())
    vim.delete_vm("vm-1")
    path = f"{SERVICES}/service/{service_of('vm-1')}"
    assert fake.count("PATCH", path, 204) == 1
    # It waited for the CSP to report the service off: CSP never had to refuse the delete.
    assert (fake.count("DELETE", path, 409), fake.count("DELETE", path, 204)) == (0, 1)


def test_without_operational_data_the_running_power_is_the_state(
    vim: CspVim, fake: FakeCsp
) -> None:
    fake.operational = False
    assert vim.create_vm(spec()).state is InstanceState.RUNNING
    assert vim.stop_vm("vm-1").state is InstanceState.STOPPED
    vim.start_vm("vm-1")
    # The service takes long to power off, then is off: meanwhile CSP refuses to delete it.
    fake.stop_seconds = 60
    threading.Timer(0.5, lambda: setattr(fake, "stop_seconds", 0)).start()
    vim.delete_vm("vm-1")  # refused while the service still runs: asked again, deleted
    path = f"{SERVICES}/service/{service_of('vm-1')}"
    assert fake.count("DELETE", path, 409) >= 1 and fake.count("DELETE", path, 204) == 1
    assert fake.names() == []


# ownership -------------------------------------------------------------------------------


def test_another_controllers_service_of_the_same_vm_id_is_never_touched(
    vim: CspVim, fake: FakeCsp, tmp_path: Path
) -> None:
    theirs = make_driver(fake, tmp_path / "theirs", controller="another-controller")
    theirs.create_vm(spec("vm-1"))
    put_foreign(fake, f"esc-{digest(CONTROLLER)}")  # no VM id after the prefix: not a VM
    assert vim.list_instances() == []
    assert vim.status("vm-1").state is InstanceState.ABSENT
    vim.delete_vm("vm-1")
    vim.create_vm(spec("vm-1"))
    vim.delete_vm("vm-1")
    assert fake.powered_on(service_of("vm-1", "another-controller"))
    assert theirs.list_instances() == ["vm-1"]


# settings --------------------------------------------------------------------------------


def test_the_csp_settings_name_what_is_wrong(tmp_path: Path) -> None:
    good = {"url": "https://csp.example:8443", "password_file": "csp.password"}
    VimSettings(driver="csp", csp=good)
    cases = [
        ({**good, "url": ""}, r'needs \[vim\.csp\] url = "https://HOST\[:PORT\]"'),
        ({**good, "url": "http://csp.example"}, "HTTPS only"),
        ({**good, "url": "https://csp.example/api"}, "HTTPS only"),
        ({**good, "url": "https://csp.example:99999"}, "must be"),
        ({"url": good["url"]}, "needs \\[vim\\.csp\\] password_file or password_env"),
        ({**good, "cacert": "csp.pem", "insecure": True}, "both cacert and insecure"),
        ({**good, "flavors": {}}, "at least one flavor"),
        ({**good, "flavors": {"x": {"numcpu": 0, "memory_mb": 512, "disk_gb": 1}}}, "numcpu"),
        ({**good, "flavors": {"x": {"numcpu": 1, "memory_mb": 512}}}, "disk_gb"),
        ({**good, "flavours": {}}, "flavours"),
        ({**good, "timeout": 0}, "timeout"),
    ]
    for csp, complaint in cases:
        with pytest.raises(ValidationError, match=complaint):
            VimSettings(driver="csp", csp=csp)
    # Another driver leaves an unfinished [vim.csp] alone.
    VimSettings(driver="local", csp={"url": ""})
    with pytest.raises(PermanentVimError, match=r"needs \[vim\.csp\] url"):
        load_driver("csp", tmp_path)


def test_flavors_are_the_settings_own(fake: FakeCsp, tmp_path: Path) -> None:
    flavors = {"vnf.big": {"numcpu": 3, "memory_mb": 3072, "disk_gb": 8}}
    vim = make_driver(fake, tmp_path, flavors=flavors)
    vim.validate_flavor("vnf.big")
    with pytest.raises(
        VimError,
        match=r"unknown flavor 'm1\.small'; the CSP's flavors \(\[vim\.csp\] flavors\) "
        r"are vnf\.big",
    ):
        vim.validate_flavor("m1.small")
    vim.create_vm(spec(flavor="vnf.big"))
    held = fake.service(service_of("vm-1"))
    assert (held["numcpu"], held["memory"], held["disk_size"]) == (3, 3072, 8)


def test_a_module_qualified_answer_is_read_as_the_plain_one() -> None:
    resource = REQUESTS["get_resource"]["response"]["resource"]
    assert member({"resource:resource": resource}, "resource") == member(
        {"resource": resource}, "resource"
    )


def test_a_missing_iso_library_names_the_extra_to_install(
    fake: FakeCsp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in ("esc.vim.csp", "esc.vim.day0_iso"):
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "pycdlib", None)  # as if not installed
    with pytest.raises(
        VimError, match=r"needs the Python package 'pycdlib'.*pip install 'esc\[csp\]'"
    ):
        make_driver(fake, tmp_path)


def test_the_fake_refuses_what_a_csp_refuses_in_confds_form(fake: FakeCsp) -> None:
    """The fake's own refusals, to one who asks it straight, as the shapes record them."""
    service = {"name": "s1", "iso_name": IMAGE, "numcpu": 1, "memory": 512, "disk_size": 1}

    def post(body: dict, client_password: str | None = None, **headers: str) -> tuple[int, str]:
        with fake.client(client_password) as client:
            answer = client.post(SERVICES, content=json.dumps(body), headers=headers)
        if answer.status_code >= 400:
            (error,) = answer.json()["errors"]["error"]
            return answer.status_code, error["error-tag"]
        return answer.status_code, ""

    def expected(kind: str) -> tuple[int, str]:
        return ERRORS[kind]["status"], ERRORS[kind]["tag"]

    assert post({"service": service}) == (REQUESTS["create_service"]["status"], "")
    assert post({"service": service}) == expected("exists")
    assert post({"service": {**service, "name": "s2", "iso_name": "nope.qcow2"}}) == expected(
        "unknown_file"
    )
    assert post({"service": {**service, "name": "s3", "colour": "red"}}) == expected(
        "unknown_element"
    )
    assert post({"service": {**service, "name": "s4"}}, "wrong") == expected("access_denied")
    assert post({"service": {**service, "name": "s5"}}, **{"Content-Type": "application/json"}) == (
        expected("media_type")
    )
    with fake.client() as client:
        refused = client.delete(f"{SERVICES}/service/s1")
        assert (refused.status_code, refused.json()["errors"]["error"][0]["error-tag"]) == (
            expected("powered_on")
        )
        off = client.patch(
            f"{SERVICES}/service/s1", content=json.dumps({"service": {"power": "off"}})
        )
        assert off.status_code == REQUESTS["patch_service"]["status"]
        fake.stop_seconds = 0
        assert (
            client.delete(f"{SERVICES}/service/s1").status_code
            == REQUESTS["delete_service"]["status"]
        )
        unauthenticated = httpx.get(
            f"{fake.url}{SERVICES}", verify=ssl.create_default_context(cafile=fake.cert_file)
        )
    assert unauthenticated.status_code == 401
    assert unauthenticated.headers["www-authenticate"].startswith("Basic")
    assert fake.names() == []
