"""The node API on a standalone node: its facts in one answer (each fact that cannot be
read says why, never a 500), and the package store's checks: a package that is not the
release wheel its name and checksum say is refused naming the problem, and nothing is
stored. The install itself runs in tests/node/test_package_install.py."""

from __future__ import annotations

import fcntl
import hashlib
import io
import os
import zipfile
from pathlib import Path

import pytest
from conftest import Node, database_down, slow_boot_descriptor, wait_transaction
from fastapi.testclient import TestClient

from esc.engine.controller import Controller
from esc.node import installer, packages
from esc.node.package_install import install_paths
from esc.version import CURRENT

YAML = {"content-type": "application/yaml"}
sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def wheel(
    version: str, *, metadata_version: str | None = None, module: bool = True, padding: int = 0
) -> bytes:
    """A small archive shaped like a release wheel of `version` (`padding` bytes more)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        if module:
            archive.writestr("esc/__init__.py", f'__version__ = "{version}"\n')
        if padding:
            archive.writestr("esc/padding.bin", os.urandom(padding))
        archive.writestr(
            f"esc-{version}.dist-info/METADATA",
            f"Metadata-Version: 2.1\nName: esc\nVersion: {metadata_version or version}\n",
        )
    return out.getvalue()


def put(api: TestClient, file: str, body: bytes, checksum: str | None = None):
    digest = checksum or hashlib.sha256(body).hexdigest()
    return api.put(
        f"/esc/node/packages/{file}", content=body, headers={"X-Checksum-Sha256": digest}
    )


def name(version: str) -> str:
    return f"esc-{version}-py3-none-any.whl"


def stored(node: Node) -> list[str]:
    """Every file of the package store, temporary ones included."""
    directory = node.home.packages
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_the_facts_of_a_standalone_node(api: TestClient, node: Node) -> None:
    facts = api.get("/esc/node")
    assert facts.status_code == 200, facts.text
    body = facts.json()
    assert body["node"] == node.settings.node.name
    assert body["version"] == str(CURRENT) and len(body["version"].split(".")) == 4
    assert (body["role"], body["replication"], body["vip"]) == ("STANDALONE", None, None)
    health = api.get("/esc/health").json()
    assert body["health"]["passed"] is True
    assert [c["name"] for c in body["health"]["checks"]] == [c["name"] for c in health["checks"]]
    schema = body["schema"]
    assert schema["revision"] == schema["head"] and schema["error"] is None
    assert body["op_mode"] == {"mode": "OPERATION", "error": None}
    assert body["transactions"] == {"queued": 0, "in_progress": 0, "error": None}
    assert body["disk"]["path"] == str(node.home.root) and body["disk"]["free_bytes"] > 0

    accepted = api.post("/v0/deployments", content=slow_boot_descriptor("slow", 3), headers=YAML)
    assert accepted.status_code == 202, accepted.text
    busy = api.get("/esc/node").json()["transactions"]
    assert busy["queued"] + busy["in_progress"] == 1, busy
    assert wait_transaction(api, accepted.json()["transaction_id"])["state"] == "SUCCESS"

    assert api.put("/esc/op_mode", json={"mode": "MAINTENANCE"}).status_code == 200
    in_maintenance = api.get("/esc/node")
    assert in_maintenance.status_code == 200
    assert in_maintenance.json()["op_mode"]["mode"] == "MAINTENANCE"
    assert in_maintenance.json()["transactions"]["in_progress"] == 0


@sqlite_only
def test_a_database_that_does_not_answer_is_a_fact_said_unreadable(
    api: TestClient, controller: Controller
) -> None:
    assert api.get("/esc/node").status_code == 200  # the login is known from here on
    with database_down(controller):
        response = api.get("/esc/node")
    assert response.status_code == 200, response.text
    body = response.json()
    for fact in ("schema", "op_mode", "transactions"):
        assert "connection refused" in body[fact]["error"], body[fact]
    assert body["op_mode"]["mode"] is None and body["transactions"]["queued"] is None
    assert body["schema"]["revision"] is None and body["schema"]["head"]
    assert body["health"]["passed"] is False
    database = next(c for c in body["health"]["checks"] if c["name"] == "database")
    assert not database["ok"] and "connection refused" in database["detail"]
    assert body["disk"]["error"] is None and body["version"] == str(CURRENT)


NOT_A_ZIP = b"PK\x03\x04 but not a zip archive after all " * 10
BAD_PACKAGES = {
    # case: (file name, body, checksum or None for the body's own, words of the refusal)
    "bad checksum": (name("1.2.0.7"), wheel("1.2.0.7"), "ab" * 32, ["sha256", "ab" * 32]),
    "bad name": ("esc-1.2.0.7.whl", wheel("1.2.0.7"), None, ["not the name", "py3-none-any"]),
    "another project's name": (
        "other-1.2.0.7-py3-none-any.whl",
        wheel("1.2.0.7"),
        None,
        ["not the name"],
    ),
    "not a wheel": (name("1.2.0.7"), NOT_A_ZIP, None, ["not a wheel"]),
    "version mismatch": (
        name("1.2.0.7"),
        wheel("1.2.0.7", metadata_version="1.2.0.8"),
        None,
        ["Version 1.2.0.8", "not the 1.2.0.7"],
    ),
    "other release inside": (name("1.2.0.7"), wheel("1.2.0.8"), None, ["no esc-1.2.0.7.dist-info"]),
    "no package module": (
        name("1.2.0.7"),
        wheel("1.2.0.7", module=False),
        None,
        ["no esc/__init__.py"],
    ),
    "empty": (name("1.2.0.7"), b"", None, ["empty"]),
}


@sqlite_only
@pytest.mark.parametrize("case", list(BAD_PACKAGES))
def test_a_bad_package_is_refused_and_nothing_is_stored(
    case: str, api: TestClient, node: Node
) -> None:
    file, body, checksum, words = BAD_PACKAGES[case]
    response = put(api, file, body, checksum)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    detail = response.json()["detail"]
    for word in words:
        assert word in detail, f"{word!r} not in {detail!r}"
    assert stored(node) == []
    assert api.get("/esc/node/packages").json() == []


@sqlite_only
def test_a_checksum_not_of_hexadecimal_digits_is_refused(api: TestClient, node: Node) -> None:
    response = put(api, name("1.2.0.7"), wheel("1.2.0.7"), "not-a-sha256")
    assert response.status_code == 422 and "64 hexadecimal digits" in response.json()["detail"]
    missing = api.put(f"/esc/node/packages/{name('1.2.0.7')}", content=wheel("1.2.0.7"))
    assert missing.status_code == 422 and "X-Checksum-Sha256" in missing.json()["detail"]
    assert stored(node) == []


@sqlite_only
def test_a_package_larger_than_the_bound_is_refused_declared_or_streamed(
    api: TestClient, node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(packages, "MAX_PACKAGE_BYTES", 64 * 1024)
    big = b"x" * (64 * 1024 + 1)
    declared = put(api, name("1.2.0.7"), big)
    assert declared.status_code == 413, declared.text
    assert "larger than" in declared.json()["detail"]

    def chunks():  # no Content-Length: sent chunked, counted as it comes
        for _ in range(5):
            yield b"y" * 16 * 1024

    streamed = api.put(
        f"/esc/node/packages/{name('1.2.0.7')}",
        content=chunks(),
        headers={"X-Checksum-Sha256": "cd" * 32},
    )
    assert streamed.status_code == 413, streamed.text
    assert stored(node) == []


@sqlite_only
def test_a_package_may_be_larger_than_any_other_request(api: TestClient, node: Node) -> None:
    package = wheel("1.2.0.7", padding=node.settings.api.max_body_bytes)
    assert len(package) > node.settings.api.max_body_bytes  # [api] max_body_bytes
    created = put(api, name("1.2.0.7"), package)
    assert created.status_code == 201, created.text
    assert created.json()["size"] == len(package)
    too_big = api.post("/v0/tenants", content=b"{" + b" " * len(package) + b"}")
    assert too_big.status_code == 413  # the bound of every other request holds


@sqlite_only
def test_a_package_is_stored_listed_replaced_and_deleted(api: TestClient, node: Node) -> None:
    body = wheel("1.2.0.7")
    created = put(api, name("1.2.0.7"), body)
    assert created.status_code == 201, created.text
    view = {
        "file": name("1.2.0.7"),
        "version": "1.2.0.7",
        "sha256": hashlib.sha256(body).hexdigest(),
        "size": len(body),
    }
    assert created.json() == view
    assert (node.home.packages / name("1.2.0.7")).read_bytes() == body
    assert put(api, name("1.2.0.10"), wheel("1.2.0.10")).status_code == 201
    listed = api.get("/esc/node/packages").json()
    assert [p["version"] for p in listed] == ["1.2.0.7", "1.2.0.10"]  # by release, not text
    assert listed[0] == view

    again = wheel("1.2.0.7", padding=10)  # the same release uploaded again replaces it
    assert put(api, name("1.2.0.7"), again).json()["size"] == len(again)
    assert (node.home.packages / name("1.2.0.7")).read_bytes() == again

    assert api.delete(f"/esc/node/packages/{name('1.2.0.7')}").status_code == 204
    gone = api.delete(f"/esc/node/packages/{name('1.2.0.7')}")
    assert gone.status_code == 404 and "upload it first" in gone.json()["detail"]
    assert stored(node) == [name("1.2.0.10"), f"{name('1.2.0.10')}.sha256"]


@sqlite_only
def test_the_node_routes_are_served_in_maintenance(api: TestClient, node: Node) -> None:
    assert api.put("/esc/op_mode", json={"mode": "MAINTENANCE"}).status_code == 200
    assert put(api, name("1.2.0.7"), wheel("1.2.0.7")).status_code == 201
    assert api.delete(f"/esc/node/packages/{name('1.2.0.7')}").status_code == 204


@sqlite_only
def test_an_install_is_refused_with_what_to_do_and_nothing_starts(
    api: TestClient, node: Node
) -> None:
    idle = api.get("/esc/node/package/install")
    assert idle.status_code == 200 and idle.json()["state"] == "idle"

    absent = api.post("/esc/node/package/install", json={"version": "1.2.0.7"})
    assert absent.status_code == 404 and "upload it first" in absent.json()["detail"]

    assert put(api, name(str(CURRENT)), wheel(str(CURRENT))).status_code == 201
    same = api.post("/esc/node/package/install", json={"version": str(CURRENT)})
    assert same.status_code == 409 and "runs on this node already" in same.json()["detail"]

    older = f"{CURRENT.key[0]}.{CURRENT.key[1]}.{CURRENT.key[2]}.0"
    assert put(api, name(older), wheel(older)).status_code == 201
    downgrade = api.post("/esc/node/package/install", json={"version": older})
    assert downgrade.status_code == 409 and '"rollback": true' in downgrade.json()["detail"]

    # This test's ESC is a source checkout, not a release installed from its wheel.
    checkout = api.post("/esc/node/package/install", json={"version": older, "rollback": True})
    assert checkout.status_code == 409, checkout.text
    assert "install the node from a release wheel" in checkout.json()["detail"]

    bad = api.post("/esc/node/package/install", json={"version": "1.2"})
    assert bad.status_code == 422
    assert api.get("/esc/node/package/install").json()["state"] == "idle"
    assert not Path(node.home.install_dir / "installer.py").exists()


@sqlite_only
def test_while_an_install_runs_another_is_refused_and_its_package_kept(
    api: TestClient, node: Node
) -> None:
    """The install lock is held (here by the test, as an installer holds it)."""
    assert put(api, name("1.2.0.7"), wheel("1.2.0.7")).status_code == 201
    paths = install_paths(node.home)
    paths.directory.mkdir(mode=0o700)
    installer.write_state(paths.state, installer.initial_state(str(CURRENT), "1.2.0.7", True))
    lock = os.open(paths.lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        running = api.get("/esc/node/package/install").json()
        assert (running["state"], running["to"]) == ("stopping", "1.2.0.7")
        again = api.post("/esc/node/package/install", json={"version": "1.2.0.7"})
        assert again.status_code == 409 and "runs (state stopping)" in again.json()["detail"]
        for response in (
            api.delete(f"/esc/node/packages/{name('1.2.0.7')}"),
            put(api, name("1.2.0.7"), wheel("1.2.0.7")),
        ):
            assert response.status_code == 409, response.text
            assert "runs from this package" in response.json()["detail"]
        assert put(api, name("1.2.0.8"), wheel("1.2.0.8")).status_code == 201
    finally:
        os.close(lock)
    assert (node.home.packages / name("1.2.0.7")).is_file()


@sqlite_only
def test_an_install_whose_installer_died_is_reported_failed(api: TestClient, node: Node) -> None:
    paths = install_paths(node.home)
    paths.directory.mkdir(mode=0o700)
    state = installer.initial_state(str(CURRENT), "1.2.0.7", False)
    state["state"], state["pid"] = "installing", 4242
    state["steps"] = [
        {
            "name": "stop",
            "started_at": installer.now(),
            "ended_at": installer.now(),
            "ok": True,
            "detail": "ESC stopped",
        },
        {"name": "save", "started_at": installer.now(), "ended_at": None, "ok": None, "detail": ""},
    ]
    installer.write_state(paths.state, state)
    reported = api.get("/esc/node/package/install").json()
    assert reported["state"] == "failed" and reported["to"] == "1.2.0.7"
    assert "the installer (pid 4242) ended in step save without finishing" in reported["error"]
    assert [s["name"] for s in reported["steps"]] == ["stop", "save"]
    assert installer.read_state(paths.state)["state"] == "installing"  # a read writes nothing


@sqlite_only
def test_a_store_that_cannot_be_written_is_said_so(api: TestClient, node: Node) -> None:
    node.home.packages.write_text("a file where the store's directory belongs\n")
    refused = put(api, name("1.2.0.7"), wheel("1.2.0.7"))
    assert refused.status_code == 409, refused.text
    assert "cannot store esc-1.2.0.7-py3-none-any.whl" in refused.json()["detail"]
