"""The parts of an upgrade by image that need no pair: a node replaced through its
provider (on the fake VIM), the day-0's VIM settings written into a node's esc.toml,
the pair access file's provider and pair file, the schema pre-check on kept wheels."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from esc.config import NodeHome, Settings
from esc.ha.provider import NodeSpec, UnknownNode
from esc.ha.providers.lab import LabProvider
from esc.ha.providers.vim import NODE_CONTROLLER, VimNodeProvider
from esc.node.firstboot import Day0Error, check_day0, with_vim
from esc.release.numbers import ReleaseNumber
from esc.upgrade.node_replace import recorded_parameters, replace_node
from esc.upgrade.pair_access import PairAccessError, load_pair
from esc.upgrade.pair_upgrade import _schema_check
from esc.upgrade.release_files import find_package
from esc.vim.base import InstanceState
from esc.vim.fake import FakeVim

ROOT = Path(__file__).parents[2]
NET = "198.18.74"
SPEC = NodeSpec(
    name="esc-b",
    image="healthy",
    flavor="m1.tiny",
    network="mgmt",
    ip=f"{NET}.12/24",
    gateway_ip=f"{NET}.1",
    ha_node_list=(f"{NET}.11", f"{NET}.12"),
    kad_vip=f"{NET}.100/24",
    kad_vif="eth0",
    floating_ip="198.19.74.12",
    init_options=(("api-port", "8080"),),
    vim_settings=(("driver", "vimhost"), ("url", "http://198.18.74.5:7800")),
)
PAIR = '{"pair": "secret parts"}'


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[VimNodeProvider]:
    yield VimNodeProvider(FakeVim(tmp_path / "vim"), "the fake VIM")
    FakeVim.forget(tmp_path / "vim")


def _calls(tmp_path: Path) -> list[str]:
    vim = FakeVim(tmp_path / "vim")
    vim.controller_id = NODE_CONTROLLER
    return [operation for operation, _vm in vim.calls]


# a node replaced -------------------------------------------------------------------


def test_a_node_is_replaced_by_the_same_node_from_another_image(
    provider: VimNodeProvider, tmp_path: Path
) -> None:
    provider.deploy(SPEC)
    recorded = recorded_parameters(provider, "esc-b")
    assert recorded["image"] == "healthy" and recorded["joins_pair"] is False
    lines: list[str] = []
    replaced = replace_node(provider, "esc-b", recorded, "slow-boot:0", PAIR, lines.append)
    assert replaced.state is InstanceState.RUNNING
    assert (replaced.image, replaced.ip, replaced.floating_ip) == (
        "slow-boot:0",
        f"{NET}.12",
        "198.19.74.12",
    )
    after = provider.show("esc-b").parameters
    # Everything as it was but the image, and it joins its pair now.
    assert {k: v for k, v in after.items() if k not in ("image", "joins_pair")} == {
        k: v for k, v in recorded.items() if k not in ("image", "joins_pair")
    }
    assert after["vim_settings"] == {"driver": "vimhost", "url": "http://198.18.74.5:7800"}
    assert after["joins_pair"] is True
    assert [line.split(": ")[1] for line in lines] == [
        "orderly shutdown (up to 60 s)",
        "deleting it with its disks",
        "deploying it from slow-boot:0",
    ]
    # Asked again (an orchestrator taken up again): nothing is shut down or deleted.
    calls = len(_calls(tmp_path))
    again = replace_node(provider, "esc-b", recorded, "slow-boot:0", PAIR)
    assert again.image == "slow-boot:0"
    assert not {"delete_vm", "stop_vm", "power_off"} & set(_calls(tmp_path)[calls:])
    assert [n.name for n in provider.nodes()] == ["esc-b"]


def test_a_replacement_cut_short_after_the_delete_deploys_from_the_recorded_parameters(
    provider: VimNodeProvider,
) -> None:
    provider.deploy(SPEC)
    recorded = recorded_parameters(provider, "esc-b")
    provider.delete("esc-b")
    with pytest.raises(UnknownNode):
        provider.show("esc-b")
    made = replace_node(provider, "esc-b", recorded, "slow-boot:0", PAIR)
    assert (made.image, made.ip) == ("slow-boot:0", f"{NET}.12")


def test_a_replaced_node_left_powered_off_is_powered_on(provider: VimNodeProvider) -> None:
    provider.deploy(SPEC)
    recorded = recorded_parameters(provider, "esc-b")
    replace_node(provider, "esc-b", recorded, "slow-boot:0", PAIR)
    provider.power_off("esc-b")
    again = replace_node(provider, "esc-b", recorded, "slow-boot:0", PAIR)
    assert again.state is InstanceState.RUNNING


# the day-0's VIM settings ----------------------------------------------------------


def test_the_day0_vim_settings_go_into_the_vim_section_of_esc_toml(tmp_path: Path) -> None:
    home = NodeHome(tmp_path)
    home.save(Settings())
    config = home.config_file
    written = with_vim(
        config.read_text(),
        {"driver": "vimhost", "url": "http://198.18.74.5:7800", "token_file": "/t", "timeout": 9.5},
    )
    data = tomllib.loads(written)
    assert data["vim"]["driver"] == "vimhost"
    assert data["vim"]["url"] == "http://198.18.74.5:7800"
    assert data["vim"]["timeout"] == 9.5
    # Its subsections are left as they were.
    assert data["vim"]["openstack"] == tomllib.loads(config.read_text())["vim"]["openstack"]
    config.write_text(written)
    assert home.load().vim.driver == "vimhost"  # the node's own settings accept it


def test_a_key_the_vim_section_lacks_is_added_and_a_file_without_one_gets_one() -> None:
    text = with_vim('[node]\nname = "n"\n\n[vim]\ndriver = "local"\n\n[ha]\n', {"url": "u"})
    assert tomllib.loads(text)["vim"] == {"driver": "local", "url": "u"}
    assert "ha" in tomllib.loads(text)
    assert tomllib.loads(with_vim('[node]\nname = "n"\n', {"driver": "x"}))["vim"] == {
        "driver": "x"
    }


@pytest.mark.parametrize(
    "vim",
    [{"Driver": "x"}, {"driver": ["x"]}, "vimhost"],
)
def test_a_day0_vim_table_that_is_not_settings_is_refused(vim: object) -> None:
    with pytest.raises(Day0Error, match=r"\[vim\]"):
        check_day0({"hostname": "esc-a", "vim": vim})


# the pair access file of an upgrade by image ------------------------------------------

ACCESS = """
vip = "198.18.80.100"
password_file = "secret"
{extra}
[[node]]
name = "esc-1"
address = "198.18.80.11"

[[node]]
name = "esc-2"
address = "198.18.80.12"
{provider}
"""


def _access(tmp_path: Path, extra: str = "", provider: str = ""):
    (tmp_path / "secret").write_text("s3cret\n")
    path = tmp_path / "lab.toml"
    path.write_text(ACCESS.format(extra=extra, provider=provider))
    return load_pair(str(path))


def test_the_access_file_names_the_lab_provider_and_the_pair_file(tmp_path: Path) -> None:
    (tmp_path / "pair.json").write_text(PAIR)
    access = _access(
        tmp_path,
        'ha_pair_file = "pair.json"',
        '[provider]\nname = "local"\nagent = "http://198.18.80.1:7700"\n'
        'agent_token_file = "agent.token"\n',
    )
    assert access.ha_pair_text() == PAIR
    provider = access.node_provider(tmp_path / "nodes")
    assert isinstance(provider, LabProvider)
    assert provider.token_file == tmp_path / "agent.token"
    provider.close()


def test_an_upgrade_by_image_without_provider_or_pair_file_is_refused_naming_them(
    tmp_path: Path,
) -> None:
    access = _access(tmp_path)
    with pytest.raises(PairAccessError, match=r"add a \[provider\] table"):
        access.node_provider(tmp_path)
    with pytest.raises(PairAccessError, match="ha_pair_file"):
        access.ha_pair_text()
    lab = _access(tmp_path, 'ha_pair_file = "gone.json"', '[provider]\nname = "local"\n')
    with pytest.raises(PairAccessError, match="agent URL and agent_token_file"):
        lab.node_provider(tmp_path)
    with pytest.raises(PairAccessError, match="cannot read the pair file"):
        lab.ha_pair_text()
    with pytest.raises(PairAccessError, match=r"provider\.name"):
        _access(tmp_path, provider='[provider]\nname = "nova"\n')
    with pytest.raises(PairAccessError, match=r"\[provider.openstack\]"):
        _access(tmp_path, provider='[provider]\nname = "openstack"\n').node_provider(tmp_path)


# the schema pre-check --------------------------------------------------------------


def test_the_migrations_between_kept_releases_pass_the_schema_check_named() -> None:
    source = find_package(ROOT / "releases", ReleaseNumber.parse("1.2.0.1"))
    target = find_package(ROOT / "releases", ReleaseNumber.parse("1.3.0.1"))
    check = _schema_check(target, source, {})
    assert check.ok, check
    assert "applied at the switchover: 0009, 0010, 0011" in check.detail
    same = _schema_check(target, target, {})
    assert same.ok and "nothing is migrated" in same.detail


def test_a_node_of_a_provider_keeping_no_record_takes_its_parameters_from_the_file(
    tmp_path: Path, provider: VimNodeProvider
) -> None:
    (tmp_path / "secret").write_text("s3cret\n")
    path = tmp_path / "csp.toml"
    path.write_text(
        'vip = "198.18.80.100"\npassword_file = "secret"\n'
        '[[node]]\nname = "esc-b"\naddress = "198.18.80.12"\n'
        '[node.parameters]\nimage = "healthy"\nip = "198.18.80.12/24"\n'
        '[[node]]\nname = "esc-c"\naddress = "198.18.80.13"\n'
    )
    nodes = load_pair(str(path)).pair.node
    assert nodes[0].parameters == {"image": "healthy", "ip": "198.18.80.12/24"}
    assert nodes[1].parameters == {}
    # The provider's own record comes first; the file's only where it keeps none.
    provider.deploy(SPEC)
    assert recorded_parameters(provider, "esc-b", nodes[0].parameters)["flavor"] == "m1.tiny"
