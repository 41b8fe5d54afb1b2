"""The services of an HA node, as its supervisor runs them, in start order:

- `pgsql`: the node's PostgreSQL (`esc.ha.pgsql_service` decides how it starts, then
  execs the postmaster, so the supervisor's child is the server itself); stopped with
  PostgreSQL's "fast" signal, after the other services, so that escmanager can still
  write while it finishes its transactions;
- `keepalived`: its config rendered from esc.toml at every start (and both track
  files set to fault at the supervisor's start, so a value left from before never
  hands this node the VIP); stopped with SIGTERM (the peer takes the VIP over at
  once) and, if it had to be killed, the VIP it left on kad_vif removed;
- `gateway-watch`: the ICMP watch of the gateway that keeps the gateway track file;
- `escmanager` and `mona`, as on a standalone node; escmanager's role manager
  (esc.ha.roles) decides the node's role and the replication's synchronous setting,
  and escmanager is stopped first, so an active hands its role over while the rest
  still runs.

Besides, the supervisor runs the node's health loop: `run/ha-health.track` is 0
while the node's PostgreSQL and its API answer, 1 otherwise (keepalived then releases
the VIP). The role manager keeps its own track file (`run/ha-role.track`): fault while
the node is in FAULT or hands its role over.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
from collections.abc import Callable

import psutil

from esc.config import HaSettings, NodeHome, Settings
from esc.ha import keepalived as ka
from esc.ha.gateway import watch_command
from esc.node.processes import (
    GATEWAY_WATCH,
    KEEPALIVED,
    PGSQL,
    SERVICE_MODULES,
    ServiceSpec,
    live_record,
)

log = logging.getLogger("esc.supervisor")

# How often the node's health is written to keepalived's health track file, and how
# long each of its checks may take: a node whose database or API hangs gives up the VIP
# within about a second.
HEALTH_INTERVAL = 0.5
HEALTH_TIMEOUT = 1.0


def keepalived_paths(home: NodeHome) -> ka.KeepalivedPaths:
    return ka.KeepalivedPaths.under(home.run)


def _module(module: str, home: NodeHome) -> list[str]:
    # -P and the home as working directory: never an `esc` from wherever it was started.
    return [sys.executable, "-P", "-m", module, "--home", str(home.root)]


def holds_vip(ha: HaSettings) -> bool:
    """Is the VIP on kad_vif of this host (network namespace) now?"""
    if ha.kad_vip is None:
        return False
    wanted = str(ha.kad_vip.ip)
    return any(
        a.family == socket.AF_INET and a.address == wanted
        for a in psutil.net_if_addrs().get(ha.kad_vif, [])
    )


def remove_vip(ha: HaSettings) -> bool:
    """Remove the VIP from kad_vif if it is there (a killed keepalived leaves it);
    True when it was removed."""
    if not holds_vip(ha):
        return False
    subprocess.run(
        ["ip", "addr", "del", str(ha.kad_vip), "dev", ha.kad_vif],
        check=True,
        capture_output=True,
        timeout=10,
    )
    return True


def stop_keepalived(ha: HaSettings, paths: ka.KeepalivedPaths) -> None:
    """SIGTERM (the peer takes the VIP over at once); killed after 5 s, then the VIP
    it left behind is removed so that only the peer answers for it."""
    if ka.stop(paths):
        return
    log.error("keepalived did not stop on SIGTERM and was killed")
    if remove_vip(ha):
        log.warning(
            "the VIP %s the killed keepalived left on %s was removed", ha.kad_vip, ha.kad_vif
        )


def _prepare_keepalived(settings: Settings, paths: ka.KeepalivedPaths) -> Callable[[bool], None]:
    def prepare(first: bool) -> None:
        ka.write_config(settings.ha, settings.node.name, paths)
        for stale in ka.clear_stale_pidfiles(paths):
            log.warning("removed %s: it named no running keepalived of this node", stale)
        if first:
            # Only at the supervisor's start: at a keepalived restart the gateway watch
            # keeps running and would not write its (unchanged) verdict again.
            ka.reset_track_files(paths)

    return prepare


def ha_service_specs(home: NodeHome, settings: Settings) -> list[ServiceSpec]:
    from esc.ha.pgsql import STOP_SIGNAL

    paths = keepalived_paths(home)
    ha = settings.ha
    return [
        ServiceSpec(
            PGSQL,
            _module("esc.ha.pgsql_service", home),
            stop_signal=STOP_SIGNAL,
            signal_group=False,
            stop_last=True,
        ),
        ServiceSpec(
            KEEPALIVED,
            ka.command(paths),
            before_start=_prepare_keepalived(settings, paths),
            stop=lambda: stop_keepalived(ha, paths),
        ),
        ServiceSpec(GATEWAY_WATCH, watch_command(ha, paths)),
        *(
            ServiceSpec(name, _module(module, home), stop_first=name == "escmanager")
            for name, module in SERVICE_MODULES.items()
        ),
    ]


def ha_periodic_tasks(
    home: NodeHome, settings: Settings
) -> list[tuple[str, float, Callable[[], None]]]:
    from esc.ha.pgsql import Cluster

    cluster = Cluster(home, settings.ha)

    health = ka.TrackFile(keepalived_paths(home).health_file)

    def keep_health() -> None:
        healthy = node_serves(home, settings, cluster)
        if health.healthy() != healthy:
            log.warning("node health %s", "passes" if healthy else "FAILS: the VIP is released")
        health.set(healthy)

    return [("health", HEALTH_INTERVAL, keep_health)]


def node_serves(home: NodeHome, settings: Settings, cluster) -> bool:
    """The node's health for keepalived: its PostgreSQL answers on its socket and its
    API answers at all (a standby's health is 503 by design: it does not hold the
    active role yet, and must be able to take the VIP to get it)."""
    from esc.ha.pgsql import PgsqlError
    from esc.node.control import api_answers

    if live_record(home.run, PGSQL) is None or live_record(home.run, "escmanager") is None:
        return False
    try:
        with cluster.connect(timeout=HEALTH_TIMEOUT) as conn:
            conn.execute("SELECT 1")
    except PgsqlError:
        return False
    return api_answers(home, settings, HEALTH_TIMEOUT)
