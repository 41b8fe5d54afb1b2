"""VIM connections as rows: added once their VIM answers, named by a deployment's
`vim`, used by every step of its transactions, refused removal while in use; and the
orphans a connection holds."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import Node, wait_transaction
from fastapi.testclient import TestClient

from esc.engine.controller import Controller
from esc.engine.vims import read_controller_id
from esc.vim.base import TAG_CONTROLLER, TAG_VM, PermanentVimError, VmSpec
from esc.vim.fake import FakeVim

YAML = {"content-type": "application/yaml"}


def on_vim(vim: str | None, name: str = "web", image: str = "healthy", bootup: int = 10) -> str:
    line = f"  vim: {vim}\n" if vim else ""
    return (
        "tenant: t\n"
        "deployment:\n"
        f"  name: {name}\n"
        f"{line}"
        "  vm_groups:\n"
        f"    - {{name: app, image: '{image}', flavor: m1.tiny, bootup_time: {bootup},\n"
        "       scaling: {min_active: 2, max_active: 2}}\n"
    )


def fake_vim(node: Node, name: str) -> FakeVim:
    """The fake VIM a connection NAME of driver fake is on (its state is per directory)."""
    return FakeVim(node.home.data / "vims" / name / "fake")


@pytest.fixture
def lab2(api: TestClient, node: Node) -> FakeVim:
    response = api.post("/v0/vims", json={"name": "lab2", "driver": "fake"})
    assert response.status_code == 201, response.text
    vim = fake_vim(node, "lab2")
    yield vim
    FakeVim.forget(vim.data_dir)


def test_the_default_connection_is_the_nodes_own_vim(api: TestClient) -> None:
    (default,) = api.get("/v0/vims").json()
    assert default == {
        "name": "default",
        "driver": "local",
        "source": "esc.toml",
        "settings": {"local_dir": "", "url": "", "token_file": "", "timeout": 30.0},
        "deployments": 0,
        "usable": None,
        "detail": "",
    }
    shown = api.get("/v0/vims/default").json()
    assert shown["usable"] is True and "local VIM usable" in shown["detail"]


def test_a_connection_is_added_listed_and_checked(api: TestClient, lab2: FakeVim) -> None:
    names = [(v["name"], v["driver"], v["source"]) for v in api.get("/v0/vims").json()]
    assert names == [("default", "local", "esc.toml"), ("lab2", "fake", "database")]
    shown = api.get("/v0/vims/lab2").json()
    assert shown["usable"] is True
    lab2.faults.inject("check", PermanentVimError("fake VIM: authentication failed"), times=None)
    shown = api.get("/v0/vims/lab2").json()
    assert (shown["usable"], shown["detail"]) == (False, "fake VIM: authentication failed")


def test_a_connection_whose_vim_refuses_is_not_added(api: TestClient, node: Node) -> None:
    refusing = fake_vim(node, "bad")
    refusing.faults.inject("check", PermanentVimError("fake VIM: authentication failed"))
    try:
        response = api.post("/v0/vims", json={"name": "bad", "driver": "fake"})
        assert response.status_code == 422
        assert (
            "VIM connection 'bad' not added: fake VIM: authentication failed"
            in (response.json()["detail"])
        )
        assert [v["name"] for v in api.get("/v0/vims").json()] == ["default"]
    finally:
        FakeVim.forget(refusing.data_dir)


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"name": "default", "driver": "fake"}, 422, "the node's own [vim]"),
        ({"name": "x", "driver": "vcloud"}, 422, "unknown VIM driver 'vcloud'"),
        (
            {"name": "x", "driver": "local", "settings": {"colour": "blue"}},
            422,
            "unknown key 'colour'",
        ),
        ({"name": "x", "driver": "fake", "settings": {"driver": "local"}}, 422, "given apart"),
        ({"name": "../x", "driver": "fake"}, 422, "name"),
    ],
)
def test_bad_connections_are_refused_by_name(
    api: TestClient, body: dict, status: int, words: str
) -> None:
    response = api.post("/v0/vims", json=body)
    assert response.status_code == status, response.text
    assert words in response.text
    assert [v["name"] for v in api.get("/v0/vims").json()] == ["default"]


def test_a_deployment_runs_on_the_connection_it_names(
    api: TestClient, lab2: FakeVim, controller: Controller
) -> None:
    assert api.post("/v0/vims", json={"name": "lab2", "driver": "fake"}).status_code == 409
    accepted = api.post("/v0/deployments", content=on_vim("lab2"), headers=YAML).json()
    assert wait_transaction(api, accepted["transaction_id"])["state"] == "SUCCESS"
    vms = api.get("/v0/tenants/t/deployments/web").json()["vm_groups"][0]["vms"]
    ids = sorted(vm["id"] for vm in vms)
    with controller.db.read() as session:
        lab2.controller_id = read_controller_id(session)
    assert lab2.list_instances() == ids
    assert controller.vim.list_instances() == []  # nothing on the node's own VIM
    assert lab2.tags_of(ids[0]) == {TAG_CONTROLLER: lab2.controller_id, TAG_VM: ids[0]}
    listed = {v["name"]: v["deployments"] for v in api.get("/v0/vims").json()}
    assert listed == {"default": 0, "lab2": 1}

    refused = api.delete("/v0/vims/lab2")
    assert refused.status_code == 409 and "used by 1 deployment(s) (web)" in refused.text
    moved = api.put("/v0/tenants/t/deployments/web", content=on_vim(None), headers=YAML)
    assert moved.status_code == 422 and "cannot move it to 'default'" in moved.text

    gone = api.delete("/v0/tenants/t/deployments/web").json()
    assert wait_transaction(api, gone["transaction_id"])["state"] == "SUCCESS"
    assert lab2.list_instances() == []
    assert api.delete("/v0/vims/lab2").status_code == 204
    assert api.delete("/v0/vims/lab2").status_code == 404


def test_a_deployment_on_an_unknown_connection_is_refused(api: TestClient) -> None:
    response = api.post("/v0/deployments", content=on_vim("nowhere"), headers=YAML)
    assert response.status_code == 422
    assert "deployment.vim: there is no VIM connection 'nowhere'" in response.json()["detail"]


def test_a_refusal_of_the_connections_vim_fails_the_transaction_in_its_words(
    api: TestClient, lab2: FakeVim
) -> None:
    lab2.faults.permanent("create_vm", message="fake VIM: quota exceeded for instances")
    accepted = api.post("/v0/deployments", content=on_vim("lab2"), headers=YAML).json()
    ended = wait_transaction(api, accepted["transaction_id"])
    assert ended["state"] == "FAILED"
    assert "fake VIM: quota exceeded for instances" in ended["error"]


def test_a_deploy_waits_while_the_vim_shows_its_vms_booting(
    api: TestClient, lab2: FakeVim, controller: Controller
) -> None:
    """The VIM's state is what a deploy waits for on a VM that serves no health endpoint:
    the fake VIM's slow-boot VMs are BUILDING for their first N seconds."""
    with controller.db.read() as session:
        lab2.controller_id = read_controller_id(session)
    started = time.monotonic()
    accepted = api.post(
        "/v0/deployments", content=on_vim("lab2", image="slow-boot:1"), headers=YAML
    )
    assert wait_transaction(api, accepted.json()["transaction_id"])["state"] == "SUCCESS"
    assert time.monotonic() - started >= 1
    vms = api.get("/v0/tenants/t/deployments/web").json()["vm_groups"][0]["vms"]
    assert [vm["state"] for vm in vms] == ["ALIVE", "ALIVE"]
    # Recorded as the VIM gives it once running (none while it was BUILDING).
    assert [vm["address"] for vm in vms] == [lab2.status(vm["id"]).address for vm in vms]
    assert all(vm["address"] for vm in vms)

    slow = on_vim("lab2", name="slower", image="slow-boot:30", bootup=1)
    ended = wait_transaction(
        api, api.post("/v0/deployments", content=slow, headers=YAML).json()["transaction_id"]
    )
    assert ended["state"] == "FAILED"
    assert "did not answer its health check within bootup_time 1 s" in ended["error"]
    assert len(lab2.list_instances()) == 2  # the slower ones rolled back, web's kept


def test_orphans_are_listed_and_deleted_only_on_request(
    api: TestClient, lab2: FakeVim, controller: Controller
) -> None:
    with controller.db.read() as session:
        lab2.controller_id = read_controller_id(session)
    lab2.create_vm(VmSpec("left-behind", "left-behind", "healthy", "m1.tiny"))
    lab2.put_foreign("someone-elses")
    found = api.get("/v0/vims/orphans").json()
    assert found == {
        "orphans": [{"vim": "lab2", "vm_id": "left-behind", "state": "RUNNING", "detail": ""}],
        "unreachable": [],
    }
    accepted = api.post("/v0/deployments", content=on_vim("lab2"), headers=YAML).json()
    wait_transaction(api, accepted["transaction_id"])
    a_vm = api.get("/v0/tenants/t/deployments/web").json()["vm_groups"][0]["vms"][0]["id"]
    refused = api.delete(f"/v0/vims/lab2/orphans/{a_vm}")
    assert refused.status_code == 409 and "not an orphan" in refused.text
    assert api.delete("/v0/vims/lab2/orphans/left-behind").status_code == 204
    assert api.get("/v0/vims/orphans").json()["orphans"] == []
    assert lab2.foreign_running("someone-elses")  # never ours to touch
    assert api.delete("/v0/vims/lab2/orphans/left-behind").status_code == 404


def test_a_connection_that_cannot_be_asked_is_named_not_skipped(
    api: TestClient, lab2: FakeVim, tmp_path: Path
) -> None:
    lab2.faults.inject(
        "list_instances", PermanentVimError("fake VIM: endpoint unreachable"), times=None
    )
    found = api.get("/v0/vims/orphans").json()
    assert found["unreachable"] == ["VIM lab2: fake VIM: endpoint unreachable"]
