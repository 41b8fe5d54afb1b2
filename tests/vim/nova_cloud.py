"""The real nova of nova_server.py as a process the tests start, and what they do to it.

One per test module: `shared_cloud(request)` starts it for the module's first test
that asks and stops it after the module's last test (a nova takes seconds to start).
The tests reach it as the driver does, over HTTP with openstacksdk: as the project's
user `esc` (what the driver logs in as) or as `admin` (to arrange what a user
cannot: quotas, flavors, a look at which host a server is on).
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import select
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from keystoneauth1 import session as ksa_session
from keystoneauth1.identity import v3
from openstack import connection
from openstack import exceptions as sdk

from esc.config import OpenStackSettings
from esc.vim.openstack import OpenStackVim

REPO = Path(__file__).parents[2]
NOVA_PYTHON = REPO / ".venv-nova" / "bin" / "python"
SERVER = Path(__file__).with_name("nova_server.py")
PROJECT = "esc"
USER, PASSWORD = "esc", "esc-user-password-1"
ADMIN, ADMIN_PASSWORD = "admin", "esc-admin-password-1"
IMAGE, FLAVOR = "cirros-0.6.2", "m1.tiny"
START_TIMEOUT = 90.0
_KEY = pytest.StashKey["NovaCloud"]()


def availability() -> str | None:
    """Why the real nova cannot run here, or None."""
    if not NOVA_PYTHON.exists():
        return f"no nova venv at {NOVA_PYTHON.parent.parent}: run scripts/vim-targets/openstack"
    return None


def sdk_connection(
    auth_url: str, user: str, password: str, verify: bool | str = True
) -> connection.Connection:
    auth = v3.Password(
        auth_url=auth_url,
        username=user,
        password=password,
        project_name=PROJECT,
        user_domain_name="Default",
        project_domain_name="Default",
    )
    session = ksa_session.Session(auth=auth, verify=verify, timeout=30)
    return connection.Connection(session=session, region_name="RegionOne")


def write_ca(directory: Path, name: str) -> tuple[Path, Any, Any]:
    """A CA of its own (its PEM at DIR/NAME.pem) and its key, to sign a server's cert."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = directory / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, cert, key


def write_server_cert(directory: Path, ca_cert: Any, ca_key: Any) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by the CA, and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = directory / "server.pem", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


class NovaCloud:
    """nova_server.py run by the nova venv's python, on free ports of 127.0.0.1."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.https_url = ""
        self.start_seconds = 0.0
        self.log = root / "nova.log"
        # The CA that signed the https listener's certificate, and one that did not.
        self.ca, ca_cert, ca_key = write_ca(root, "cloud-ca")
        self.other_ca, _, _ = write_ca(root, "other-ca")
        self.cert, self.key = write_server_cert(root, ca_cert, ca_key)
        self.password_file = root / "esc.password"
        self.password_file.write_text(PASSWORD + "\n")
        self.password_file.chmod(0o600)
        self._admin: connection.Connection | None = None
        self._user: connection.Connection | None = None

    def start(self) -> None:
        config = {
            "users": {
                USER: {"password": PASSWORD, "roles": ["reader", "member"]},
                ADMIN: {"password": ADMIN_PASSWORD, "roles": ["reader", "member", "admin"]},
            },
            "project": {"name": PROJECT, "domain": "Default"},
            "tls": {"cert": str(self.cert), "key": str(self.key)},
        }
        config_file = self.root / "nova-server.json"
        config_file.write_text(json.dumps(config))
        config_file.chmod(0o600)
        scratch = self.root / "tmp"
        scratch.mkdir(exist_ok=True)
        begun = time.monotonic()
        self.proc = subprocess.Popen(
            [str(NOVA_PYTHON), str(SERVER), "--config", str(config_file)],
            stdout=subprocess.PIPE,
            stderr=self.log.open("ab"),
            text=True,
            start_new_session=True,
            # What nova's fixtures make (lock directories) goes under the test's tree.
            env={**os.environ, "TMPDIR": str(scratch), "OS_LOG_CAPTURE": "0"},
            cwd=self.root,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], START_TIMEOUT)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.stop()
            raise AssertionError(f"nova did not start within {START_TIMEOUT} s:\n{self.tail()}")
        announced = json.loads(line)
        self.url, self.https_url = announced["url"], announced["https_url"]
        self.start_seconds = time.monotonic() - begun

    def tail(self, size: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-size:] if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    # how the tests reach it -------------------------------------------------------------

    @property
    def auth_url(self) -> str:
        return f"{self.url}/identity/v3"

    @property
    def admin(self) -> connection.Connection:
        if self._admin is None:
            self._admin = sdk_connection(self.auth_url, ADMIN, ADMIN_PASSWORD)
        return self._admin

    @property
    def user(self) -> connection.Connection:
        if self._user is None:
            self._user = sdk_connection(self.auth_url, USER, PASSWORD)
        return self._user

    def settings(self, **overrides: Any) -> OpenStackSettings:
        values: dict[str, Any] = {
            "auth_url": self.auth_url,
            "username": USER,
            "password_file": str(self.password_file),
            "project_name": PROJECT,
            "region_name": "RegionOne",
            "timeout": 10,
            "boot_timeout": 60,
            "poll_interval": 0.2,
        }
        values.update(overrides)
        return OpenStackSettings.model_validate(values)

    def driver(self, controller_id: str = "esc-test", **overrides: Any) -> OpenStackVim:
        vim = OpenStackVim(self.settings(**overrides), self.root)
        vim.controller_id = controller_id
        return vim

    def control(self, method: str, path: str, body: Any = None) -> Any:
        response = httpx.request(method, f"{self.url}/_test{path}", json=body, timeout=10)
        response.raise_for_status()
        return response.json()

    def fail_next(
        self, count: int, status: int = 503, service: str = "", method: str = "", path: str = ""
    ) -> None:
        """The next `count` requests to `service` (any: ""), with `method` (any: "") to a
        path ending in `path`, answer `status`."""
        body = {"count": count, "status": status, "service": service, "method": method}
        self.control("POST", "/fail", {**body, "path": path})

    def expire_tokens(self) -> None:
        self.control("POST", "/expire-tokens")

    def change_password(self, password: str, user: str = USER) -> None:
        """As a cloud admin rotating it; tokens already issued stay valid until they expire."""
        self.control("POST", "/password", {"user": user, "password": password})

    def tokens_issued(self, user: str = USER) -> int:
        return self.control("GET", "/stats")["tokens_issued"].get(user, 0)

    # what it holds ----------------------------------------------------------------------

    def servers(self) -> list[Any]:
        return list(self.admin.compute.servers(details=True))

    def server_of(self, vm_id: str) -> Any | None:
        """The server whose esc-vm-id is `vm_id`, as the admin sees it (host included)."""
        found = [s for s in self.servers() if (s.metadata or {}).get("esc-vm-id") == vm_id]
        return found[0] if found else None

    def put_foreign(self, name: str) -> None:
        """A server of the project made by someone else: no ESC tags."""
        image = self.user.image.find_image(IMAGE, ignore_missing=False)
        flavor = self.user.compute.find_flavor(FLAVOR, ignore_missing=False)
        server = self.user.compute.create_server(
            name=name, image_id=image.id, flavor_id=flavor.id, networks="none"
        )
        self.user.compute.wait_for_server(server, interval=0.1, wait=60)

    def foreign_running(self, name: str) -> bool:
        found = [s for s in self.user.compute.servers(details=True) if s.name == name]
        return len(found) == 1 and found[0].status == "ACTIVE" and not found[0].metadata

    def tags_of(self, vm_id: str) -> dict[str, str]:
        server = self.server_of(vm_id)
        return dict(server.metadata) if server is not None else {}

    def clean(self) -> None:
        """Back to an empty project: no fault pending, the floating IPs let go of, every
        server deleted, the quotas nova's defaults."""
        self.fail_next(0)
        for fip in self.admin.network.ips():
            if fip.port_id:
                self.admin.network.update_ip(fip, port_id=None)
        servers = self.servers()
        for server in servers:
            self.admin.compute.delete_server(server, ignore_missing=True)
        for server in servers:
            with contextlib.suppress(sdk.ResourceNotFound):
                self.admin.compute.wait_for_delete(server, interval=0.1, wait=60)
        for group in self.admin.compute.server_groups(all_projects=True):
            self.admin.compute.delete_server_group(group, ignore_missing=True)
        project = self.admin.current_project_id
        self.admin.compute.revert_quota_set(project)
        self.change_password(PASSWORD)


def shared_cloud(request: pytest.FixtureRequest) -> NovaCloud:
    """The module's nova: started by the first test of the module that asks, stopped
    after its last test."""
    from conftest import need

    need(availability())
    module = request.node.getparent(pytest.Module) or request.node
    cloud = module.stash.get(_KEY, None)
    if cloud is None:
        root = request.getfixturevalue("tmp_path_factory").mktemp("nova")
        cloud = NovaCloud(root)
        cloud.start()
        module.stash[_KEY] = cloud
        module.addfinalizer(cloud.stop)
    return cloud
