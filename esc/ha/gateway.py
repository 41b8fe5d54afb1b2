"""The gateway watch: is the gateway reachable from this node? Told to keepalived
through a track file, so a node cut off from the gateway gives up the VIP.

Why a small Python process and not something inside keepalived: keepalived's own
tracking sees an interface's link (`track_interface`), not whether the gateway behind
the switch answers; `vrrp_script` would fork a ping (and this host kind may not even
have one) several times a second at VRRP's pace; BFD needs the gateway to run BFD. A
watch that sends one ICMP echo per interval and writes the track file only when its
verdict changes costs nothing between changes, and keepalived reacts to the write
through inotify at once.

Run it as `python -m esc.ha.gateway --gateway IP --track-file PATH` (see
watch_command), next to keepalived, in the same network namespace.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import itertools
import logging
import os
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Sequence

from esc.config import HaSettings
from esc.ha.keepalived import TRACK_HEALTHY, KeepalivedPaths, TrackFile

log = logging.getLogger("esc.ha.gateway")

# One echo per INTERVAL; the gateway is lost after MISSES unanswered in a row (about
# MISSES x INTERVAL: 0.6 s), and back after RISES answered in a row. A single lost
# packet never moves the VIP.
INTERVAL = 0.2
MISSES = 3
RISES = 2

_ECHO_REQUEST = 8
_ECHO_REPLY = 0


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


class IcmpEcho:
    """ICMP echo to one address: a ping socket where the kernel allows it to this
    user (net.ipv4.ping_group_range), else a raw socket (root / CAP_NET_RAW)."""

    def __init__(self, address: str | ipaddress.IPv4Address) -> None:
        self.address = str(ipaddress.IPv4Address(address))
        try:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
            self.raw = False
        except PermissionError:
            try:
                self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            except PermissionError:
                raise PermissionError(
                    "the gateway watch cannot send ICMP echo: run it as root (or with "
                    "CAP_NET_RAW), or allow this group in sysctl net.ipv4.ping_group_range"
                ) from None
            self.raw = True
        # Connected: the kernel only delivers what comes from the gateway.
        self.sock.connect((self.address, 0))
        self.ident = os.getpid() & 0xFFFF
        self._seq = itertools.count(1)

    def close(self) -> None:
        self.sock.close()

    def ping(self, timeout: float) -> bool:
        """True when the address answered one echo within timeout."""
        seq = next(self._seq) & 0xFFFF
        payload = struct.pack("!d", time.time())
        header = struct.pack("!BBHHH", _ECHO_REQUEST, 0, 0, self.ident, seq)
        packet = header[:2] + struct.pack("!H", _checksum(header + payload)) + header[4:]
        try:
            self.sock.send(packet + payload)
        except OSError:  # no route, interface down: not reachable
            return False
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.sock], [], [], left)
            if not ready:
                return False
            try:
                data = self.sock.recv(1024)
            except OSError:
                return False
            if self.raw:
                data = data[(data[0] & 0x0F) * 4 :]  # strip the IP header
            if len(data) < 8:
                continue
            kind, _, _, ident, reply_seq = struct.unpack("!BBHHH", data[:8])
            # A ping socket's id is the kernel's, and only our replies reach it.
            if kind == _ECHO_REPLY and reply_seq == seq and (not self.raw or ident == self.ident):
                return True
        return False


class GatewayWatch:
    """Probes the gateway each interval and keeps the track file at its verdict."""

    def __init__(
        self,
        gateway: str | ipaddress.IPv4Address,
        track: TrackFile,
        *,
        interval: float = INTERVAL,
        misses: int = MISSES,
        rises: int = RISES,
    ) -> None:
        self.echo = IcmpEcho(gateway)
        self.track = track
        self.interval = interval
        self.misses = misses
        self.rises = rises
        # Start from what the file says, so a restarted watch does not move the VIP:
        # only `misses` / `rises` probes in a row change the verdict.
        current = track.read()
        self.reachable: bool | None = None if current is None else current == TRACK_HEALTHY
        self._streak = 0  # probes in a row that disagree with the current verdict

    def step(self) -> bool | None:
        """One probe; returns the verdict (None until the first one is reached)."""
        answered = self.echo.ping(timeout=self.interval * 0.9)
        if answered == self.reachable:
            self._streak = 0
            return self.reachable
        self._streak += 1
        if self._streak >= (self.rises if answered else self.misses):
            self._streak = 0
            self.reachable = answered
            self.track.set(answered)
            log.warning("gateway %s %s", self.echo.address, "reachable" if answered else "LOST")
        return self.reachable

    def run(self, stop: threading.Event | None = None) -> None:
        stop = stop or threading.Event()
        next_probe = time.monotonic()
        try:
            while not stop.is_set():
                self.step()
                next_probe += self.interval
                stop.wait(max(0.0, next_probe - time.monotonic()))
        finally:
            self.echo.close()


def watch_command(ha: HaSettings, paths: KeepalivedPaths, python: str | None = None) -> list[str]:
    """The argv of this node's gateway watch, for the supervisor."""
    if ha.gateway_ip is None:
        raise ValueError("[ha] gateway_ip is not set")
    return [
        python or sys.executable,
        "-m",
        "esc.ha.gateway",
        "--gateway",
        str(ha.gateway_ip),
        "--track-file",
        str(paths.gateway_file),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m esc.ha.gateway",
        description="Keep a keepalived track file at 0 while the gateway answers ICMP echo, "
        "1 while it does not.",
    )
    parser.add_argument("--gateway", required=True, type=ipaddress.IPv4Address)
    parser.add_argument("--track-file", required=True)
    parser.add_argument("--interval", type=float, default=INTERVAL)
    parser.add_argument("--misses", type=int, default=MISSES)
    parser.add_argument("--rises", type=int, default=RISES)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        watch = GatewayWatch(
            args.gateway,
            TrackFile(args.track_file),
            interval=args.interval,
            misses=args.misses,
            rises=args.rises,
        )
    except PermissionError as exc:
        print(exc, file=sys.stderr)
        return 2
    stop = threading.Event()
    with contextlib.suppress(KeyboardInterrupt):
        watch.run(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
