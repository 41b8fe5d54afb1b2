"""escadm init --ha, what needs no test host: the node's address found on its
interface, the options checked, the pair file, the role record, and how the pgsql
service decides to start."""

from __future__ import annotations

import ipaddress
import json
import socket
import time
from collections import namedtuple
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from esc.cli.main import cli
from esc.config import ConfigError, HaSettings, NodeHome
from esc.ha import pgsql_service as service
from esc.ha.pairing import PairFile, PairFileError, read_pair_file, write_pair_file
from esc.ha.pgsql import Cluster
from esc.ha.role_record import (
    ACTIVE,
    STANDBY,
    RoleRecord,
    RoleRecordError,
    read_role,
    role_path,
    write_role,
)
from esc.node.ha_setup import own_address

NET = "198.18.50"
N1, N2 = f"{NET}.11", f"{NET}.12"
NODES = [ipaddress.IPv4Address(N1), ipaddress.IPv4Address(N2)]
VIP = ipaddress.IPv4Interface(f"{NET}.100/24")


# What psutil.net_if_addrs() lists per interface (its fields, in its order).
snicaddr = namedtuple("snicaddr", "family address netmask broadcast ptp")


def _v4(address: str, netmask: str = "255.255.255.0") -> snicaddr:
    return snicaddr(socket.AF_INET, address, netmask, None, None)


# A host's interfaces as psutil.net_if_addrs() reports them (an IPv6 address too).
INTERFACES = {
    "lo": [_v4("127.0.0.1", "255.0.0.0")],
    "eth0": [_v4(N1), snicaddr(socket.AF_INET6, "fe80::1%eth0", "ffff:ffff::", None, None)],
    "eth1": [_v4("198.18.51.5")],
}


def _ha(address: str = N1, **changes: object) -> HaSettings:
    values = {
        "enabled": True,
        "node_list": [N1, N2],
        "address": address,
        "kad_vip": str(VIP),
        "gateway_ip": f"{NET}.1",
        **changes,
    }
    return HaSettings.model_validate(values)


# ---------------------------------------------------------------- the node's address
def test_the_node_address_is_the_one_of_the_list_on_the_interface() -> None:
    assert own_address(NODES, VIP, "eth0", INTERFACES) == NODES[0]


@pytest.mark.parametrize(
    ("vif", "vip", "interfaces", "message"),
    [
        (
            "eth9",
            VIP,
            INTERFACES,
            "there is no interface 'eth9' on this host (it has eth0, eth1, lo)",
        ),
        (
            "eth1",
            VIP,
            INTERFACES,
            f"none of ha_node_list ({N1}, {N2}) is an address of eth1, which has 198.18.51.5/24",
        ),
        (
            "eth0",
            VIP,
            {"eth0": [_v4(N1), _v4(N2)]},
            f"both addresses of ha_node_list ({N1}, {N2}) are on eth0",
        ),
        (
            "eth0",
            ipaddress.IPv4Interface("198.18.51.100/24"),
            INTERFACES,
            f"the VIP 198.18.51.100 is not in eth0's subnet {NET}.0/24 (this node's address "
            f"{N1}/24)",
        ),
        (
            "eth0",
            ipaddress.IPv4Interface(f"{NET}.200/24"),
            {"eth0": [_v4(N1, "255.255.255.128")]},
            f"the VIP {NET}.200 is not in eth0's subnet {NET}.0/25",
        ),
    ],
)
def test_an_address_that_does_not_fit_the_interface_is_refused_naming_what_it_has(
    vif: str, vip: ipaddress.IPv4Interface, interfaces: dict, message: str
) -> None:
    with pytest.raises(ConfigError) as error:
        own_address(NODES, vip, vif, interfaces)
    assert message in str(error.value)


def _init(tmp_path: Path, *args: str):
    return CliRunner().invoke(cli, ["init", "--home", str(tmp_path / "home"), *args])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--kad-vip", str(VIP)], "--kad-vip need --ha"),
        (["--ha", "--kad-vip", str(VIP)], "--ha needs --ha-node-list, --gateway-ip"),
        (
            [
                "--ha",
                "--ha-node-list",
                f"{N1},{N2}",
                "--kad-vip",
                str(VIP),
                "--gateway-ip",
                f"{NET}.1",
                "--db-url",
                "sqlite:////tmp/x.db",
            ],
            "--db-url does not go with --ha",
        ),
        (
            [
                "--ha",
                "--ha-node-list",
                f"{N1},{N2}",
                "--kad-vip",
                str(VIP),
                "--gateway-ip",
                f"{NET}.1",
                "--api-host",
                "127.0.0.1",
            ],
            "--api-host does not go with --ha",
        ),
        (
            # The real interfaces of this host: loopback never holds a pair's address.
            [
                "--ha",
                "--ha-node-list",
                f"{N1},{N2}",
                "--kad-vip",
                str(VIP),
                "--gateway-ip",
                f"{NET}.1",
                "--kad-vif",
                "lo",
            ],
            f"none of ha_node_list ({N1}, {N2}) is an address of lo, which has 127.0.0.1/8",
        ),
        (
            [
                "--ha",
                "--ha-node-list",
                f"{N1},nonsense",
                "--kad-vip",
                str(VIP),
                "--gateway-ip",
                f"{NET}.1",
            ],
            "invalid option",
        ),
    ],
)
def test_init_ha_refuses_options_that_do_not_make_a_node_and_creates_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = _init(tmp_path, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "home").exists()


def test_ha_settings_still_check_the_pair_itself() -> None:
    with pytest.raises(ValueError, match="not in the VIP's subnet"):
        _ha(gateway_ip="198.18.51.1")
    with pytest.raises(ValueError, match="is a node's or the gateway's address"):
        _ha(kad_vip=f"{N2}/24")


def test_pg_clients_are_networks_and_never_everyone() -> None:
    assert _ha().pg_clients == []
    ha = _ha(pg_clients=["198.18.61.1/32", "10.1.2.0/24", "10.9.9.9"])
    assert [str(n) for n in ha.pg_clients] == ["198.18.61.1/32", "10.1.2.0/24", "10.9.9.9/32"]
    with pytest.raises(ValueError, match=r"'10.1.2.7/24' is not an IPv4 network.*10.1.2.0/24"):
        _ha(pg_clients=["10.1.2.7/24"])  # host bits set: which was meant is unclear
    with pytest.raises(ValueError, match="is not an IPv4 network"):
        _ha(pg_clients=["db-clients.example.com"])
    with pytest.raises(ValueError, match="admits every address"):
        _ha(pg_clients=["0.0.0.0/0"])


# ---------------------------------------------------------------- the pair file
def _pair() -> PairFile:
    return PairFile.new(
        _ha(), replication_secret="s3cret", local_credential="local-pw", backup_key=b"k" * 32
    )


def test_a_pair_file_reads_back_as_written_and_only_by_its_owner(tmp_path: Path) -> None:
    path = tmp_path / "pair.json"
    pair = _pair()
    write_pair_file(path, pair)
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_pair_file(path) == pair
    assert pair.mismatches(_ha(N2)) == []  # the other node of the same pair fits
    with pytest.raises(FileExistsError):  # never overwritten
        write_pair_file(path, _pair())


def test_a_pair_file_of_another_pair_is_told_apart() -> None:
    wrong = _pair().mismatches(_ha(N2, kad_vip=f"{NET}.101/24", kad_vri=7))
    assert wrong == [
        f"kad_vip is {NET}.101/24 here but {VIP} in the pair file",
        "kad_vri is 7 here but 50 in the pair file",
    ]
    other_nodes = _pair().mismatches(
        _ha(f"{NET}.13", node_list=[f"{NET}.13", N2], kad_vip=str(VIP))
    )
    assert other_nodes == [
        f"ha_node_list is ['{NET}.13', '{N2}'] here but ['{N1}', '{N2}'] in the pair file"
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "is not an ESC pair file (not JSON)"),
        ('{"format": "something/2"}', "format 'something/2', not 'esc-ha-pair/1'"),
        (None, "is corrupt (its checksum does not match)"),
    ],
)
def test_a_corrupt_pair_file_is_refused_naming_the_fix(
    tmp_path: Path, text: str | None, message: str
) -> None:
    path = tmp_path / "pair.json"
    if text is None:  # one secret changed by hand
        data = json.loads(_pair().text())
        data["replication_secret"] = "edited"
        text = json.dumps(data)
    path.write_text(text)
    with pytest.raises(PairFileError) as error:
        read_pair_file(path)
    assert message in str(error.value)
    assert "copy it again from the node that created the pair" in str(error.value)
    with pytest.raises(PairFileError, match="cannot read the pair file"):
        read_pair_file(tmp_path / "missing.json")


# ---------------------------------------------------------------- the role record
def test_the_role_record_is_written_atomically_and_read_back(tmp_path: Path) -> None:
    home = NodeHome(tmp_path)
    assert read_role(home) is None
    record = RoleRecord.now(ACTIVE, "keepalived MASTER", peer=N2, active=N1, epoch=3)
    write_role(home, record)
    assert read_role(home) == record
    assert json.loads(role_path(home).read_text()) == {
        "role": "ACTIVE",
        "reason": "keepalived MASTER",
        "since": record.since,
        "epoch": 3,
        "peer": N2,
        "active": N1,
    }
    assert role_path(home).stat().st_mode & 0o777 == 0o600
    assert [p.name for p in home.run.iterdir()] == ["ha-role.json"]  # no temporary left


@pytest.mark.parametrize(
    "content",
    [
        "{",
        '{"role": "LEADER", "reason": "", "since": "2026-01-01T00:00:00+00:00", '
        '"epoch": null, "peer": "198.18.50.12", "active": null}',
        '{"role": "ACTIVE", "reason": "", "since": "2026-01-01T00:00:00", '
        '"epoch": null, "peer": "198.18.50.12", "active": null}',
        '{"role": "ACTIVE", "reason": "", "since": "2026-01-01T00:00:00+00:00", '
        '"epoch": "7", "peer": "198.18.50.12", "active": null}',
        '{"role": "ACTIVE"}',
    ],
)
def test_a_file_that_is_no_role_record_is_refused_naming_it(tmp_path: Path, content: str) -> None:
    home = NodeHome(tmp_path)
    home.run.mkdir()
    role_path(home).write_text(content)
    with pytest.raises(RoleRecordError, match=f"{role_path(home)} is not a role record"):
        read_role(home)


# ---------------------------------------------------------------- the pgsql service
def _cluster(tmp_path: Path, *, data: bool, standby: bool = False) -> Cluster:
    home = NodeHome(tmp_path)
    cluster = Cluster(home, _ha(N2))
    if data:
        cluster.data_dir.mkdir(parents=True)
        (cluster.data_dir / "PG_VERSION").write_text("15\n")
        if standby:
            (cluster.data_dir / "standby.signal").write_text("")
    return cluster


def _record(role: str, active: str | None) -> RoleRecord:
    return RoleRecord.now(role, "test", peer=N1, active=active)


def test_how_the_pgsql_service_starts_the_server(tmp_path: Path) -> None:
    empty = _cluster(tmp_path / "empty", data=False)
    assert service.plan_start(empty, _record(ACTIVE, N2)).action == service.CLONE
    standby = _cluster(tmp_path / "standby", data=True, standby=True)
    assert service.plan_start(standby, None).action == service.STANDBY
    assert service.plan_start(standby, _record(STANDBY, N1)).action == service.STANDBY
    assert service.plan_start(standby, _record(ACTIVE, N2)).action == service.PRIMARY

    former = _cluster(tmp_path / "former", data=True)  # last ran as a primary
    assert service.plan_start(former, _record(ACTIVE, N2)).action == service.PRIMARY
    plan = service.plan_start(former, _record(STANDBY, N1))
    assert plan.action == service.FOLLOW and plan.as_standby
    held = service.plan_start(former, _record(STANDBY, None))
    assert held.action == service.HOLD and "nothing rewound" in held.reason
    # Once it stood by without following, it still needs the rewind when the peer is
    # known to be active, although standby.signal is there now.
    (former.data_dir / "standby.signal").write_text("")
    service.unfollowed_marker(former).write_text("")
    assert service.plan_start(former, _record(STANDBY, N1)).action == service.FOLLOW


def test_a_role_record_from_before_the_boot_is_no_role(tmp_path: Path) -> None:
    home = NodeHome(tmp_path)
    record = RoleRecord(
        ACTIVE,
        "before a crash",
        (datetime.now(UTC) - timedelta(hours=1)).isoformat(),
        4,
        N1,
        N2,
    )
    write_role(home, record)
    assert service.current_role(home, booted_at=time.time() - 60) is None
    assert service.current_role(home, booted_at=time.time() - 7200) == record
