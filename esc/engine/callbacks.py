"""Where event deliveries may go: the check of a subscription's callback URL.

A callback makes the controller send requests from inside the operator's
network, so a client could aim it at what only the controller can reach.
Refused always: link-local addresses (169.254.0.0/16, fe80::/10), where
clouds serve instance metadata and credentials, and the metadata services'
other addresses and names. With `[notifications] allowed_hosts` set, only
the hosts it lists are taken: by name, or by address inside a listed network.

The check runs when a subscription is made and again before every delivery,
since what a name resolves to can change in between; a name is refused when
any of its addresses is.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from esc.config import NotificationSettings
from esc.errors import InvalidRequest

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

REFUSED_NETWORKS: tuple[IpNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "169.254.0.0/16",  # IPv4 link-local, 169.254.169.254 the metadata of most clouds
        "fe80::/10",  # IPv6 link-local
        "fd00:ec2::254/128",  # AWS instance metadata over IPv6
        "100.100.100.200/32",  # Alibaba Cloud instance metadata
    )
)
REFUSED_NAMES = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.tencentyun.com",
    }
)
SETTING = "[notifications] allowed_hosts in esc.toml"


class CallbackRefused(InvalidRequest):
    title = "Callback refused"


@dataclass(frozen=True)
class AllowList:
    names: frozenset[str]
    networks: tuple[IpNetwork, ...]

    @classmethod
    def of(cls, entries: list[str]) -> AllowList:
        names, networks = set(), []
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                names.add(normal_host(entry))
        return cls(frozenset(names), tuple(networks))

    def __bool__(self) -> bool:
        return bool(self.names or self.networks)

    def covers(self, address: IpAddress) -> bool:
        return any(address in network for network in self.networks)


def normal_host(host: str) -> str:
    return host.strip().rstrip(".").lower()


def resolve_host(host: str, port: int) -> list[IpAddress]:
    """Every address `host` has now (the system resolver); OSError when it has none."""
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [_address(info[4][0]) for info in found]


def _address(text: str) -> IpAddress:
    address = ipaddress.ip_address(text.split("%", 1)[0])  # an IPv6 zone is not the address
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def _literal(host: str) -> IpAddress | None:
    try:
        return _address(host.strip("[]"))
    except ValueError:
        return None


def _refused(address: IpAddress) -> bool:
    return any(address in network for network in REFUSED_NETWORKS)


def check_callback(url: str, settings: NotificationSettings) -> list[IpAddress]:
    """The addresses the callback's host has now, if deliveries may go there; else
    CallbackRefused naming the problem and the setting."""
    parts = urlsplit(url)
    host = normal_host(parts.hostname or "")
    if not host:
        raise CallbackRefused(f"callback URL {url!r} has no host")
    literal = _literal(host)
    allowed = AllowList.of(settings.allowed_hosts)
    if literal is None and host in REFUSED_NAMES:
        raise CallbackRefused(
            f"callback host {host} is a cloud metadata service: refused always "
            "(it would hand out the node's credentials)"
        )
    if allowed and literal is None and host not in allowed.names and not allowed.networks:
        raise CallbackRefused(f"callback host {host} is not in {SETTING}: add it there")
    if literal is not None:
        addresses = [literal]
    else:
        try:
            addresses = resolve_host(host, parts.port or (443 if parts.scheme == "https" else 80))
        except (OSError, UnicodeError) as exc:
            raise CallbackRefused(
                f"callback host {host} does not resolve ({exc}): use a name this node can "
                "resolve, or an address"
            ) from None
    for address in addresses:
        if _refused(address):
            raise CallbackRefused(
                f"callback host {host} is {address}, a link-local or cloud metadata address: "
                f"refused always, whatever {SETTING} says"
            )
    if allowed and host not in allowed.names:
        outside = [a for a in addresses if not allowed.covers(a)]
        if outside:
            raise CallbackRefused(
                f"callback host {host} ({', '.join(map(str, outside))}) is not allowed by "
                f"{SETTING}: add the host name or a network that holds it"
            )
    return addresses
