"""A real controller node on the fake CSP: `escadm run` in its own process, its esc.toml
naming [vim] driver = "csp" with the fake's certificate as [vim.csp] cacert, deploys
examples/vims/csp.yaml over HTTPS, and what it made is checked on the CSP itself."""

from __future__ import annotations

import json
import os
import shutil
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomli_w
from conftest import escadm, free_port
from fake_csp import IMAGES, REQUESTS, FakeCsp
from target_csp import owner_of

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "examples" / "vims" / "csp.yaml"
SERVICES = REQUESTS["create_service"]["path"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeCsp]:
    csp = FakeCsp(tmp_path_factory.mktemp("csp"))
    csp.start()
    yield csp
    csp.stop()


@pytest.fixture(scope="module")
def node(fake: FakeCsp, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A node made by `escadm init`, its [vim] the fake CSP, started (`escadm start`)."""
    home = tmp_path_factory.mktemp("node") / "home"
    escadm("init", "--api-port", str(free_port()), home=home, check=True)
    shutil.copy(fake.cert_file, home / "csp-cert.pem")
    fd = os.open(home / "csp.password", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(fake.password + "\n")
    config = tomllib.loads((home / "esc.toml").read_text())
    config["vim"] = {
        "driver": "csp",
        "csp": {
            "url": fake.url,
            "username": fake.username,
            "password_file": "csp.password",
            "cacert": "csp-cert.pem",
            "network": "enp1s0f0",
            "boot_timeout": 20,  # the fake boots in a blink: bounded, should it not
            "stop_timeout": 20,
            "flavors": {
                **config["vim"]["csp"]["flavors"],
                "vnf.huge": {"numcpu": 16, "memory_mb": 65536, "disk_gb": 10},
            },
        },
    }
    config["engine"]["vim_backoff"] = 0.2  # a transient error is retried soon
    (home / "esc.toml").write_text(tomli_w.dumps(config))
    escadm("start", home=home, check=True)
    try:
        yield home
    finally:
        escadm("stop", home=home)


@pytest.fixture(autouse=True)
def empty_csp(fake: FakeCsp) -> Iterator[None]:
    fake.reset()
    yield
    fake.reset()


def vim_health(home: Path) -> dict:
    """The VIM check of `escadm health`, as the running controller makes it."""
    checks = json.loads(escadm("health", "--json", home=home).stdout)["checks"]
    return next(c for c in checks if c["name"] == "vim")


def deploy(home: Path, descriptor: Path) -> tuple[int, str]:
    result = escadm("deployment", "deploy", str(descriptor), home=home, timeout=120)
    return result.returncode, result.stdout + result.stderr


def undeploy(home: Path, name: str) -> str:
    result = escadm("deployment", "undeploy", name, home=home, timeout=120, check=True)
    return result.stdout


def test_the_example_deploys_on_the_csp_and_undeploys(node: Path, fake: FakeCsp) -> None:
    assert vim_health(node) == {"name": "vim", "ok": True, "detail": "csp VIM usable"}
    status, output = deploy(node, EXAMPLE)
    assert status == 0 and "DEPLOY demo/csp-edge: SUCCESS" in output, output

    names = fake.names()
    assert len(names) == 3 and all(owner_of(n) for n in names), names
    assert all(fake.powered_on(n) for n in names)
    by_image: dict[str, list[str]] = {}
    for name in names:
        by_image.setdefault(fake.service(name)["iso_name"], []).append(name)
    assert sorted(len(v) for v in by_image.values()) == [1, 2]
    (router,) = by_image["csr1000v-universalk9.16.09.01.qcow2"]
    held = fake.service(router)
    first, second = held["vnics"]["vnic"]
    assert (first["network_name"], first["vlan"], held["ip"]) == ("enp1s0f0", "110", "198.18.80.11")
    assert (second["network_name"], second["model"]) == ("Internal1", "e1000")
    assert "hostname edge-router" in fake.day0_files(held["day0_filename"])["iosxe_config.txt"]
    for app in by_image["ubuntu-22.04-server-cloudimg-amd64.qcow2"]:
        (vnic,) = fake.service(app)["vnics"]["vnic"]
        assert vnic["network_name"] == "enp1s0f1" and "ip" not in fake.service(app)
        files = fake.day0_files(fake.service(app)["day0_filename"])
        assert sorted(files) == ["meta-data", "user-data"]
        assert files["user-data"].startswith("#cloud-config")

    assert "UNDEPLOY demo/csp-edge: SUCCESS" in undeploy(node, "csp-edge")
    assert fake.names() == []
    assert sorted(fake.repository) == sorted(IMAGES)  # the day-0 ISOs went with the services


def test_a_transient_csp_failure_is_retried_and_the_deploy_succeeds(
    node: Path, fake: FakeCsp
) -> None:
    fake.fail_next(1, method="POST", path=SERVICES)
    status, output = deploy(node, EXAMPLE)
    assert status == 0 and "DEPLOY demo/csp-edge: SUCCESS" in output, output
    assert fake.count("POST", SERVICES, 503) == 1 and fake.count("POST", SERVICES, 201) == 3
    assert len(fake.names()) == 3
    undeploy(node, "csp-edge")
    assert fake.names() == []


def test_a_deploy_beyond_the_csps_capacity_ends_failed_in_its_numbers(
    node: Path, fake: FakeCsp, tmp_path: Path
) -> None:
    huge = tmp_path / "huge.yaml"
    huge.write_text(
        EXAMPLE.read_text()
        .replace("name: csp-edge", "name: huge")
        .replace("flavor: m1.small", "flavor: vnf.huge")
    )
    status, output = deploy(node, huge)
    assert status != 0, output
    assert "DEPLOY demo/huge FAILED: the VIM refused: the CSP host" in output
    assert "csp-2100 has no room for service esc-" in output
    assert "it needs 16 CPUs and 65536 MiB, and the CSP counts 6 of 8 CPUs free" in output
    # The group that fitted was made, then rolled back: nothing is left on the CSP.
    assert "rolled back" in output and fake.names() == []
    undeploy(node, "huge")


def test_credentials_the_csp_refuses_are_named_and_nothing_is_made(
    node: Path, fake: FakeCsp
) -> None:
    fake.password = "changed-by-the-csp-admin"
    status, output = deploy(node, EXAMPLE)
    assert status != 0, output
    assert "refused the credentials of user 'admin'" in output, output
    assert "[vim.csp] username and the password in password_file / password_env" in output
    assert "changed-by-the-csp-admin" not in output
    assert fake.names() == []
    health = vim_health(node)
    assert not health["ok"] and "refused the credentials" in health["detail"]


def test_another_csp_is_a_vim_connection_a_deployment_goes_on(
    node: Path, fake: FakeCsp, tmp_path: Path
) -> None:
    other = FakeCsp(tmp_path / "csp")
    other.start()
    try:
        shutil.copy(other.cert_file, node / "edge-cert.pem")
        section = tmp_path / "edge.toml"
        section.write_text(
            tomli_w.dumps(
                {
                    "url": other.url,
                    "password_file": "csp.password",
                    "cacert": "edge-cert.pem",
                    "network": "enp1s0f0",
                }
            )
        )
        add = ("vim", "add", "edge", "--driver", "csp", "--file", str(section))
        other.password = "not-the-nodes"
        refused = escadm(*add, home=node)
        assert refused.returncode == 1 and "refused the credentials" in refused.stderr
        other.password = fake.password
        assert escadm(*add, home=node, check=True).stdout.strip() == (
            "VIM connection edge (csp) added"
        )

        descriptor = tmp_path / "edge.yaml"
        descriptor.write_text(
            EXAMPLE.read_text().replace("  name: csp-edge\n", "  name: edge-site\n  vim: edge\n")
        )
        status, output = deploy(node, descriptor)
        assert status == 0 and "DEPLOY demo/edge-site: SUCCESS" in output, output
        assert len(other.names()) == 3 and fake.names() == []  # on the connection's CSP
        assert "UNDEPLOY demo/edge-site: SUCCESS" in undeploy(node, "edge-site")
        assert other.names() == []
        escadm("vim", "remove", "edge", home=node, check=True)
    finally:
        other.stop()
