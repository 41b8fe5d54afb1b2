"""escadm node: deploy, list, show, power-off, power-on, fence, delete, with --json and
clear errors, on the fake VIM in this process (its VMs live as long as the process,
so every command of a test sees the same VIM) and on VIM connections of the node."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from esc.cli.main import cli
from esc.config import NodeHome, Settings
from esc.db.models import VimConnection
from esc.db.session import Database
from esc.ha.provider import node_vims
from esc.ha.providers.vim import NODE_CONTROLLER
from esc.node.setup import init_node
from esc.vim.base import InstanceState
from esc.vim.fake import FakeVim

NET = "198.18.75"
DEPLOY = [
    *("node", "deploy", "--image", "healthy", "--flavor", "m1.tiny", "--name", "esc-b"),
    *("--network", "mgmt", "--ip", f"{NET}.12/24", "--gateway-ip", f"{NET}.1"),
    *("--ha-node-list", f"{NET}.11,{NET}.12", "--kad-vip", f"{NET}.100/24"),
    *("--kad-vif", "eth0", "--floating-ip", "198.19.75.12", "--init-option", "api-port=8443"),
]


def make_home(path: Path, vim: dict) -> NodeHome:
    home = NodeHome(path)
    init_node(home, Settings.model_validate({"vim": vim, "node": {"name": "ops"}}))
    return home


@pytest.fixture
def home(tmp_path: Path) -> Iterator[NodeHome]:
    made = make_home(tmp_path / "home", {"driver": "fake"})
    yield made
    FakeVim.forget(made.data / "nodes" / "fake")
    FakeVim.forget(made.data / "nodes" / "lab2" / "fake")


def escadm(home: NodeHome, *args: str) -> Result:
    return CliRunner().invoke(cli, [*args, "--home", str(home.root)])


def ok(home: NodeHome, *args: str) -> dict | list:
    result = escadm(home, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def nodes_vim(home: NodeHome, connection: str = "") -> FakeVim:
    vim = FakeVim(home.data / "nodes" / connection / "fake")
    vim.controller_id = NODE_CONTROLLER
    return vim


def test_a_node_through_its_whole_life_with_json(home: NodeHome) -> None:
    deployed = ok(home, *DEPLOY)
    assert {k: deployed[k] for k in ("name", "state", "ip", "floating_ip", "image")} == {
        "name": "esc-b",
        "state": "RUNNING",
        "ip": f"{NET}.12",
        "floating_ip": "198.19.75.12",
        "image": "healthy",
    }
    assert deployed["parameters"]["init_options"] == {"api-port": "8443"}
    made = nodes_vim(home).spec_of("esc-b")
    assert made is not None and "api-port" in made.day0_config["esc-node.toml"]

    alone = escadm(home, "node")  # the group alone lists
    assert alone.exit_code == 0, alone.output
    assert alone.output.split()[:11] == [
        *("NAME", "STATE", "IP", "FLOATING", "IP", "IMAGE", "DETAIL"),
        *("esc-b", "RUNNING", f"{NET}.12", "198.19.75.12"),
    ]
    shown = escadm(home, "node", "show", "esc-b")
    assert shown.output.splitlines()[:4] == [
        "node esc-b: RUNNING",
        f"  ip: {NET}.12",
        "  floating ip: 198.19.75.12",
        "  image: healthy",
    ]
    assert ok(home, "node", "show", f"{NET}.12")["name"] == "esc-b"

    assert ok(home, "node", "power-off", "esc-b")["state"] == "STOPPED"
    assert ok(home, "node", "power-on", "esc-b")["state"] == "RUNNING"
    vim = nodes_vim(home)
    before = len(vim.calls)
    assert ok(home, "node", "fence", "esc-b")["state"] == "STOPPED"
    assert [op for op, _ in vim.calls[before:]].count("stop_vm") == 0
    fenced_again = escadm(home, "node", "fence", "esc-b")
    assert fenced_again.exit_code == 0 and "node esc-b fenced" in fenced_again.output

    assert ok(home, "node", "delete", "esc-b") == {"deleted": "esc-b"}
    assert ok(home, "node", "list") == []
    gone = escadm(home, "node", "show", "esc-b")
    assert gone.exit_code == 1 and "no node esc-b on the fake VIM of" in gone.output

    again = ok(home, *DEPLOY)
    assert (again["name"], again["ip"], again["floating_ip"]) == (
        "esc-b",
        f"{NET}.12",
        "198.19.75.12",
    )
    assert vim.status("esc-b").state is InstanceState.RUNNING


def test_nodes_on_a_vim_connection_of_the_node(home: NodeHome) -> None:
    db = Database(home.database_url(home.load()))
    try:
        with db.write() as session:
            session.add(VimConnection(name="lab2", driver="fake", settings={}))
    finally:
        db.dispose()
    on_lab2 = ok(home, *DEPLOY, "--vim", "lab2", "--provider", "fake")
    assert on_lab2["state"] == "RUNNING"
    assert nodes_vim(home, "lab2").list_instances() == ["esc-b"]
    assert nodes_vim(home).list_instances() == []  # not on the default connection
    assert [n["name"] for n in ok(home, "node", "list", "--vim", "lab2")] == ["esc-b"]

    other = escadm(home, "node", "list", "--vim", "lab2", "--provider", "vmware")
    assert other.exit_code == 2
    assert "VIM connection 'lab2' is a fake one, not vmware" in other.output
    missing = escadm(home, "node", "list", "--vim", "nope")
    assert missing.exit_code == 2 and "there is no VIM connection 'nope'" in missing.output


def test_refusals_and_failures_are_named_with_their_exit_codes(home: NodeHome) -> None:
    vim = nodes_vim(home)
    vim.faults.permanent("create_vm", message="fake VIM: quota exceeded for instances")
    refused = escadm(home, *DEPLOY)
    assert refused.exit_code == 1
    assert "could not deploy node esc-b: fake VIM: quota exceeded for instances" in refused.output
    assert "Traceback" not in refused.output
    vim.faults.clear()
    vim.faults.transient("create_vm", message="fake VIM: create_vm timed out")
    busy = escadm(home, *DEPLOY)
    assert busy.exit_code == 3 and "create_vm timed out (ask again)" in busy.output
    assert escadm(home, *DEPLOY).exit_code == 0  # asked again, it works

    for args, message in (
        (["--provider", "openstak"], "unknown node provider 'openstak': give --provider local"),
        (["--provider", "local"], "give --agent URL and --agent-token-file FILE"),
        (["--ha-node-list", f"{NET}.12"], "the pair's two different addresses"),
        (["--name", "Esc_B"], "node name 'Esc_B'"),
        (["--init-option", "api-port"], "write NAME=VALUE"),
    ):
        result = escadm(home, *DEPLOY, *args)
        assert result.exit_code == 2, result.output
        assert message in result.output
    for name in ("openstack", "csp"):
        if name not in node_vims():  # written apart: its driver may not be here yet
            result = escadm(home, "node", "list", "--provider", name)
            assert result.exit_code == 2
            assert f"the {name} VIM driver is not installed with this ESC" in result.output
    unknown = escadm(home, "node", "power-on", "ghost")
    assert unknown.exit_code == 1 and "no node ghost on the fake VIM" in unknown.output


def test_a_vim_that_runs_no_node_and_a_missing_sdk_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = make_home(tmp_path / "local", {"driver": "local"})
    result = escadm(local, "node")
    assert result.exit_code == 2
    assert "is the local VIM, whose VMs are processes of a controller's host" in result.output

    vcenter = {"host": "127.0.0.1", "user": "esc", "password_file": "vcenter.password"}
    vmware = make_home(tmp_path / "vmware", {"driver": "vmware", "vmware": vcenter})
    # As on a host where pyVmomi was never installed.
    monkeypatch.setitem(sys.modules, "pyVmomi", None)
    monkeypatch.delitem(sys.modules, "esc.vim.vmware", raising=False)
    result = escadm(vmware, "node", "list", "--provider", "vmware")
    assert result.exit_code == 2, result.output
    assert "needs the Python package 'pyVmomi'" in result.output
    assert "pip install 'esc[vmware]'" in result.output
