"""The csp driver on the fake Cisco CSP (fake_csp.py) as a contract target.

The fake serves HTTPS on 127.0.0.1 from a thread, once per test module that uses
this target (started by the module's first test, stopped when the module ends);
each test starts on an empty CSP. What the CSP holds is read from the fake
itself, bypassing the driver: ownership lives in a service's name,
`esc-<10 hex digits of the SHA-256 of the controller id>-<VM id>`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_csp import FakeCsp
from vim_host_process import wait_until
from vim_target import Target

from esc.config import VimSettings
from esc.vim.base import TAG_CONTROLLER, TAG_VM, VimDriver, load_driver

CONTROLLER = "contract-controller"
IMAGE = "csr1000v-universalk9.16.09.01.qcow2"
OWNED = re.compile(r"esc-(?P<controller>[0-9a-f]{10})-(?P<vm_id>.+)\Z")

_fakes: dict[str, FakeCsp] = {}


def module_fake(request: pytest.FixtureRequest) -> FakeCsp:
    """The fake CSP of the requesting test's module, started on first use."""
    module = request.node.getparent(pytest.Module)
    key = module.nodeid if module is not None else request.node.nodeid
    fake = _fakes.get(key)
    if fake is None:
        directory = request.getfixturevalue("tmp_path_factory").mktemp("csp")
        fake = FakeCsp(directory)
        fake.start()
        _fakes[key] = fake

        def stop() -> None:
            fake.stop()
            _fakes.pop(key, None)

        (module or request.node).addfinalizer(stop)
    return fake


def settings_for(fake: FakeCsp, home: Path, **csp: object) -> VimSettings:
    """[vim] driver = "csp" on the fake: its certificate trusted by cacert, the password
    in a file of `home` (mode 0600)."""
    home.mkdir(parents=True, exist_ok=True)
    password_file = home / "csp.password"
    if not password_file.exists():
        fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(fake.password + "\n")
    return VimSettings.model_validate(
        {
            "driver": "csp",
            "csp": {
                "url": fake.url,
                "username": fake.username,
                "password_file": password_file.name,
                "cacert": str(fake.cert_file),
                "network": "enp1s0f0",
                # The fake boots and stops in a blink: a wait this long is a failure.
                "boot_timeout": 5,
                "stop_timeout": 5,
                **csp,
            },
        }
    )


def make_driver(
    fake: FakeCsp, home: Path, controller: str = CONTROLLER, **csp: object
) -> VimDriver:
    return load_driver("csp", home / "vim", settings_for(fake, home, **csp), home, controller)


def digest(controller: str) -> str:
    return hashlib.sha256(controller.encode()).hexdigest()[:10]


def owner_of(name: str) -> tuple[str, str] | None:
    """(controller digest, VM id) a service's name says, None for a name not made so."""
    found = OWNED.match(name)
    return (found["controller"], found["vm_id"]) if found else None


def tags_on_csp(fake: FakeCsp, vm_id: str, controllers: list[str]) -> dict[str, str]:
    """The tags the CSP holds for `vm_id`: its service's name, among `controllers`."""
    by_digest = {digest(c): c for c in controllers}
    for name in fake.names():
        owner = owner_of(name)
        if owner and owner[1] == vm_id and owner[0] in by_digest:
            return {TAG_CONTROLLER: by_digest[owner[0]], TAG_VM: vm_id}
    return {}


def put_foreign(fake: FakeCsp, name: str) -> None:
    """A service made as an operator's script makes one: straight through the API."""
    body = {
        "service": {
            "name": name,
            "iso_name": IMAGE,
            "numcpu": 1,
            "memory": 512,
            "disk_size": 1,
            "power": "on",
            "vnics": {
                "vnic": [
                    {
                        "nic": 0,
                        "type": "access",
                        "tagged": "false",
                        "model": "virtio",
                        "network_name": "enp1s0f0",
                    }
                ]
            },
        }
    }
    with fake.client() as client:
        answer = client.post("/api/running/services", content=json.dumps(body))
        assert answer.status_code == 201, answer.text
    assert wait_until(lambda: fake.powered_on(name), 5)


def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    fake = module_fake(request)
    fake.reset()
    yield Target(
        make=lambda: make_driver(fake, tmp_path),
        image=IMAGE,
        flavor="m1.tiny",
        put_foreign=lambda name: put_foreign(fake, name),
        foreign_running=fake.powered_on,
        tags_of=lambda vm_id: tags_on_csp(fake, vm_id, [CONTROLLER]),
    )
    fake.reset()
