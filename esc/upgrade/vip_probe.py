"""How long writes were interrupted, as a client of the pair's VIP sees it.

A thread asks the VIP every `interval` seconds which node answers and in which role
(`GET /esc/ha`, cheap: no database query). The pair takes writes while the node
answering at the VIP is the active one; the interruption is the longest run of
answers that were not (no answer, a standby or FAULT node still holding the VIP, a
node whose role moves), from the last writable answer before it to the first after.
It is what a client retrying through the VIP waits, to within `interval`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import httpx

from esc.upgrade.pair_access import PairAccess

INTERVAL = 0.02
TIMEOUT = 0.5


@dataclass
class Gap:
    started: float  # time.time() of the last writable answer before it
    ended: float  # of the first writable answer after it

    @property
    def seconds(self) -> float:
        return self.ended - self.started


class VipProbe:
    def __init__(self, access: PairAccess, interval: float = INTERVAL) -> None:
        self.access = access
        self.interval = interval
        self.gaps: list[Gap] = []
        self.samples = 0
        self.answering: str = ""  # the address of the node that last answered writable
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> VipProbe:
        self._thread = threading.Thread(target=self._run, name="vip-probe", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    @property
    def longest(self) -> float:
        return max((g.seconds for g in self.gaps), default=0.0)

    def _writable(self, client: httpx.Client) -> bool:
        try:
            response = client.get("/esc/ha")
        except httpx.TransportError:
            return False
        if response.status_code != 200:
            return False
        body = response.json()
        if body.get("role") != "ACTIVE":
            return False
        self.answering = body.get("address", "")
        return True

    def _run(self) -> None:
        last_ok: float | None = None
        in_gap = False
        with httpx.Client(
            base_url=self.access.pair.vip_url,
            auth=self.access.auth,
            verify=self.access.verify,
            timeout=TIMEOUT,
            trust_env=False,
        ) as client:
            while not self._stop.is_set():
                ok = self._writable(client)
                now = time.time()
                self.samples += 1
                if ok:
                    if in_gap and last_ok is not None:
                        self.gaps.append(Gap(last_ok, now))
                    in_gap = False
                    last_ok = now
                else:
                    in_gap = True
                self._stop.wait(self.interval)
            if in_gap and last_ok is not None:  # still interrupted at the end: count it
                self.gaps.append(Gap(last_ok, time.time()))
