"""Creating a node of an HA pair (`escadm init --ha`): its [ha] settings checked
against this host's interfaces, then either the pair's database created (the node that
bootstraps the pair) or the pair joined with the pair file (the other node).

Which node creates the database: the first address of ha_node_list, or the node given
`--ha-bootstrap`, and only when no pair file is given. Exactly one node may: a second
database would split the pair into two that never replicate. So a node given an
existing pair file always joins (the same command line redeploys a node, whichever it
was), and a node about to bootstrap first looks whether the peer's PostgreSQL
answers already, and refuses if it does.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from esc.config import ConfigError, HaSettings, NodeHome, Settings
from esc.ha.pairing import PAIR_FILE, PairFile, PairFileError, read_pair_file, write_pair_file

# How long init waits for the peer's PostgreSQL to answer before it counts as not
# running (it is on the same LAN: an answer comes in milliseconds).
PEER_PROBE_TIMEOUT = 1.0
BOOTSTRAP = "bootstrap"
JOIN = "join"


def interface_addresses(
    vif: str, interfaces: Mapping[str, Sequence] | None = None
) -> list[ipaddress.IPv4Interface]:
    """The IPv4 addresses (with their prefix) of interface `vif` on this host."""
    table = psutil.net_if_addrs() if interfaces is None else interfaces
    if vif not in table:
        raise ConfigError(
            f"there is no interface {vif!r} on this host (it has {', '.join(sorted(table))}): "
            "give the one that holds this node's address in --kad-vif"
        )
    return [
        ipaddress.IPv4Interface(f"{a.address}/{a.netmask}")
        for a in table[vif]
        if a.family == socket.AF_INET and a.netmask
    ]


def own_address(
    node_list: Sequence[ipaddress.IPv4Address],
    vip: ipaddress.IPv4Interface,
    vif: str,
    interfaces: Mapping[str, Sequence] | None = None,
) -> ipaddress.IPv4Address:
    """This node's address: the one of node_list found on `vif`, whose subnet must hold
    the VIP; a ConfigError names what the interface has otherwise."""
    present = interface_addresses(vif, interfaces)
    has = ", ".join(str(a) for a in present) or "no IPv4 address"
    mine = [a for a in present if a.ip in node_list]
    listed = ", ".join(map(str, node_list))
    if not mine:
        raise ConfigError(
            f"none of ha_node_list ({listed}) is an address of {vif}, which has {has}: give "
            "this host's address in --ha-node-list, or the interface that holds it in --kad-vif"
        )
    if len(mine) > 1:
        raise ConfigError(
            f"both addresses of ha_node_list ({listed}) are on {vif} ({has}): each node holds "
            "only its own address; the other belongs to the peer host"
        )
    address = mine[0]
    if vip.ip not in address.network:
        raise ConfigError(
            f"the VIP {vip.ip} is not in {vif}'s subnet {address.network} (this node's "
            f"address {address}): keepalived can hold it only in the subnet it advertises in"
        )
    return address.ip


def ha_settings(raw: dict, interfaces: Mapping[str, Sequence] | None = None) -> HaSettings:
    """[ha] from init's options (node_list, kad_vip, kad_vif, gateway_ip, kad_vri, ...),
    `address` found on kad_vif; ConfigError or pydantic's ValueError when they do not fit."""
    node_list = [ipaddress.IPv4Address(a) for a in raw["node_list"]]
    vip = ipaddress.IPv4Interface(raw["kad_vip"])
    address = own_address(node_list, vip, raw.get("kad_vif", "eth0"), interfaces)
    return HaSettings.model_validate({**raw, "enabled": True, "address": str(address)})


def peer_database_answers(ha: HaSettings, timeout: float = PEER_PROBE_TIMEOUT) -> bool:
    """Does the peer's PostgreSQL accept a TCP connection (a pair database exists)?"""
    try:
        with socket.create_connection((str(ha.peer), ha.pg_port), timeout=timeout):
            return True
    except OSError:
        return False


def pair_file_of(home: NodeHome) -> Path:
    return home.data / PAIR_FILE


@dataclass(frozen=True)
class HaInitResult:
    home: NodeHome
    how: str  # BOOTSTRAP or JOIN
    admin_password: str | None  # only when this node created the database
    database_url: str
    pair_files: list[Path]  # where the pair file is (BOOTSTRAP: written)


def _refuse_existing(home: NodeHome) -> None:
    if home.exists():
        raise ConfigError(
            f"a node already exists at {home.root} ({home.config_file.name} is there); "
            "choose another --home, or remove that directory to start afresh"
        )


def init_ha_node(
    home: NodeHome,
    settings: Settings,
    *,
    bootstrap: bool,
    pair_file: Path | None,
    durable: bool = True,
) -> HaInitResult:
    """Create an HA node: join the pair with `pair_file` when it exists; else, when
    `bootstrap`, create the pair's database and write the pair file (to data/ and to
    `pair_file` if given). Leaves PostgreSQL stopped; its data of a joining node is
    cloned from the peer at the node's first start."""
    from esc.ha.pgsql import Cluster, PgsqlError

    _refuse_existing(home)
    ha = settings.ha
    cluster = Cluster(home, ha, durable=durable)
    try:
        cluster.check_access()
    except PgsqlError as exc:
        raise ConfigError(str(exc)) from None
    if pair_file is not None and pair_file.exists():
        return _join(home, settings, cluster, pair_file)
    if not bootstrap:
        raise ConfigError(
            f"this node ({ha.address}) joins the pair that {ha.node_list[0]} creates: copy the "
            f"pair file that node's escadm init wrote (its {home.data.name}/{PAIR_FILE}) here and "
            "give it with --ha-pair-file FILE"
            + (f" ({pair_file} does not exist)" if pair_file else "")
        )
    if peer_database_answers(ha):
        raise ConfigError(
            f"the peer's PostgreSQL answers on {ha.peer}:{ha.pg_port}: the pair's database "
            "exists already, and creating another here would split the pair into two that "
            f"never replicate. Join it: copy the peer's {home.data.name}/{PAIR_FILE} here and "
            "give it with --ha-pair-file FILE"
        )
    return _bootstrap(home, settings, cluster, pair_file)


def _bootstrap(home: NodeHome, settings: Settings, cluster, pair_file: Path | None) -> HaInitResult:
    from esc.backup.signing import ensure_key
    from esc.ha.pgsql import PgsqlError
    from esc.node.setup import create_schema_and_accounts, write_local_credential

    try:
        cluster.prepare()
        cluster.initialise_primary()
        cluster.start(as_standby=False)
    except PgsqlError as exc:
        raise ConfigError(f"cannot create the pair's database: {exc}") from None
    try:
        admin_password, local_password, display_url = create_schema_and_accounts(
            cluster.database_url()
        )
    finally:
        cluster.stop()
    write_local_credential(home, local_password)
    pair = PairFile.new(
        settings.ha,
        replication_secret=cluster.replication_secret(),
        local_credential=local_password,
        backup_key=ensure_key(home),
    )
    written = [pair_file_of(home)]
    write_pair_file(written[0], pair)
    if pair_file is not None:
        write_pair_file(pair_file, pair)
        written.append(pair_file)
    home.save(settings)  # last: its presence marks a complete node
    return HaInitResult(home, BOOTSTRAP, admin_password, display_url, written)


def _join(home: NodeHome, settings: Settings, cluster, pair_file: Path) -> HaInitResult:
    from esc.backup.signing import parse_key, store_key
    from esc.ha.pgsql import PgsqlError
    from esc.node.setup import write_local_credential

    try:
        pair = read_pair_file(pair_file)
    except PairFileError as exc:
        raise ConfigError(str(exc)) from None
    wrong = pair.mismatches(settings.ha)
    if wrong:
        raise ConfigError(
            f"{pair_file} is the pair file of another pair: {'; '.join(wrong)}. Give the "
            "options the pair was created with, or that pair's file"
        )
    try:
        cluster.prepare()
        cluster.install_replication_secret(pair.replication_secret)
    except PgsqlError as exc:
        raise ConfigError(str(exc)) from None
    write_local_credential(home, pair.local_credential)
    store_key(home, parse_key(pair.backup_key, str(pair_file)))
    own = pair_file_of(home)
    own.unlink(missing_ok=True)
    write_pair_file(own, pair)
    home.save(settings)
    return HaInitResult(home, JOIN, None, cluster.database_url(), [own])
