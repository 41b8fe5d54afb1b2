"""ICMP echo (ping) of one VM: the ICMPPing collector for a VM of a real VIM.

A VM of the local VIM answers ESC's own health endpoint (esc.monitor.probe); a VM
of OpenStack, libvirt, VMware or CSP runs the operator's image, which answers ping
and nothing of ESC's. The VIM's view of it (running or not) is the driver's; whether
it answers on its network is this probe's.

An unprivileged ICMP socket is used where net.ipv4.ping_group_range allows it, else
a raw one (root). One socket per probe, kept open; each echo carries the probe's id
and a sequence number, and only the reply from the VM's address with both counts.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import os
import socket
import struct

from esc.monitor.probe import ProbeError, ProbeTimeout

ECHO_REQUEST = {4: 8, 6: 128}
ECHO_REPLY = {4: 0, 6: 129}
PAYLOAD = b"esc-mona-icmp-ping"


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def _open(version: int) -> tuple[socket.socket, bool]:
    """(socket, raw): an unprivileged ICMP socket if allowed, else a raw one."""
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    protocol = socket.IPPROTO_ICMP if version == 4 else socket.IPPROTO_ICMPV6
    errors = []
    for kind, raw in ((socket.SOCK_DGRAM, False), (socket.SOCK_RAW, True)):
        try:
            sock = socket.socket(family, kind, protocol)
        except PermissionError as exc:
            errors.append(exc)
            continue
        sock.setblocking(False)
        return sock, raw
    raise ProbeError(
        "cannot send ICMP: run MONA as root, or allow its group in "
        f"net.ipv4.ping_group_range ({errors[-1]})"
    )


class IcmpProbe:
    """Echo requests to one address, one at a time."""

    def __init__(self, address: str) -> None:
        try:
            parsed = ipaddress.ip_address(address)
        except ValueError:
            raise ValueError(f"not an IP address to ping: {address!r}") from None
        self.address, self.version = str(parsed), parsed.version
        self.ident = os.getpid() & 0xFFFF
        self._sequence = itertools.count(1)
        self._socket: socket.socket | None = None
        self._raw = False

    def _packet(self, sequence: int) -> bytes:
        header = struct.pack("!BBHHH", ECHO_REQUEST[self.version], 0, 0, self.ident, sequence)
        if self.version == 6:  # the kernel fills in ICMPv6's checksum
            return header + PAYLOAD
        checksum = _checksum(header + PAYLOAD)
        return struct.pack("!BBHHH", ECHO_REQUEST[4], 0, checksum, self.ident, sequence) + PAYLOAD

    def _is_reply(self, data: bytes, sender: str, sequence: int) -> bool:
        if self._raw and self.version == 4:
            data = data[(data[0] & 0x0F) * 4 :]  # a raw IPv4 socket gives the IP header too
        if len(data) < 8 or sender != self.address:
            return False
        kind, _, _, ident, seq = struct.unpack("!BBHHH", data[:8])
        # An unprivileged socket's id is the kernel's choice: there the sequence decides.
        return (
            kind == ECHO_REPLY[self.version]
            and seq == sequence
            and (ident == self.ident or not self._raw)
        )

    async def ping(self, timeout: float) -> float:
        """Seconds the echo took; ProbeTimeout when none came, ProbeError when it
        could not be sent (no route: the network says the VM is unreachable)."""
        loop = asyncio.get_running_loop()
        if self._socket is None:
            self._socket, self._raw = _open(self.version)
        sequence = next(self._sequence) & 0xFFFF
        started = loop.time()
        try:
            async with asyncio.timeout(timeout):
                await loop.sock_sendto(self._socket, self._packet(sequence), (self.address, 0))
                while True:
                    data, where = await loop.sock_recvfrom(self._socket, 2048)
                    if self._is_reply(data, where[0], sequence):
                        return loop.time() - started
        except TimeoutError:
            raise ProbeTimeout(f"no echo reply from {self.address} within {timeout:g} s") from None
        except OSError as exc:
            self.close()
            raise ProbeError(f"ping {self.address}: {exc.strerror or exc}") from None

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
