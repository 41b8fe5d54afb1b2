"""An HA pair installed and run as an operator does it: `escadm init --ha` on two
network-namespace test hosts (the first creates the pair's database and writes the
pair file, the second joins with it), `escadm start` on both, the second node's
PostgreSQL cloned from the first and streaming from it, `escadm status --v` listing
the five services, `escadm stop` on both, and nothing left behind.

The pair has no node provider: its first node is made the active by a role record
written before the start (ACTIVE), as after an earlier MASTER; a standby without a
provider never takes over by itself, but takes the role handed over to it.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from lab import Lab, availability
from needs import keepalived_missing, need
from pg_server import availability as pg_availability

from esc.config import NodeHome
from esc.ha import keepalived as ka
from esc.ha.pairing import read_pair_file
from esc.ha.pgsql import Cluster
from esc.ha.role_record import ACTIVE, STANDBY, RoleRecord, read_role, write_role
from esc.node.processes import HA_SERVICE_NAMES, live_record
from esc.node.service_requests import request_restart

NET = "198.18.50"  # this module's /24 inside 198.18.0.0/15, apart from other labs
PREFIX = "hn"
ESCADM = str(Path(sys.executable).with_name("escadm"))
N1, N2 = f"{NET}.11", f"{NET}.12"
VIP = f"{NET}.100"

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.timeout(180),
]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    need(availability())
    need(pg_availability())
    need(keepalived_missing())
    with Lab(2, net=f"{NET}.0/24", prefix=PREFIX) as made:
        yield made


@pytest.fixture
def base() -> Iterator[Path]:
    """A directory postgres may enter on its way to the homes (mkdtemp's are 0700).
    HN_KEEP=1 keeps it, with the nodes' logs, for a look after a failure."""
    root = Path(tempfile.mkdtemp(prefix="hn-"))
    root.chmod(0o711)
    yield root
    import shutil

    if not os.environ.get("HN_KEEP"):
        shutil.rmtree(root, ignore_errors=True)


def escadm(lab: Lab, ns: str, *args: str, home: Path, timeout: float = 120):
    return lab.run(ns, [ESCADM, *args, "--home", str(home)], check=False, timeout=timeout)


def ok(lab: Lab, ns: str, *args: str, home: Path, timeout: float = 120) -> str:
    result = escadm(lab, ns, *args, home=home, timeout=timeout)
    assert result.returncode == 0, (
        f"escadm {' '.join(args)} in {ns} exited {result.returncode}:\n"
        f"{result.stdout}{result.stderr}"
    )
    return result.stdout


def ha_init(*extra: str) -> list[str]:
    return [
        "init",
        "--ha",
        "--ha-node-list",
        f"{N1},{N2}",
        "--kad-vip",
        f"{VIP}/24",
        "--kad-vif",
        "eth0",
        "--gateway-ip",
        f"{NET}.1",
        "--kad-vri",
        "62",
        "--node-name",
        *extra,
    ]


def supervisor_log(home: Path) -> str:
    return (home / "log" / "supervisor.log").read_text()


def holds(lab: Lab, ns: str) -> bool:
    return any(str(a.ip) == VIP for a in lab.addresses(ns))


def wait_for(check, timeout: float, what: str, details=lambda: "") -> float:
    """Seconds until check() holds; fails after timeout, with details() in the message."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, f"not within {timeout} s: {what}\n{details()}"
        time.sleep(0.05)
    return time.monotonic() - started


def log_tails(*homes: Path) -> str:
    out = []
    for home in homes:
        for name in ("supervisor.log", "pgsql.out", "pgsql.log", "escmanager.log", "mona.out"):
            path = home / "log" / name
            if path.exists():
                out.append(f"--- {path}\n" + "\n".join(path.read_text().splitlines()[-20:]))
    return "\n".join(out)


def test_a_pair_is_installed_started_replicates_and_stops_clean(lab: Lab, base: Path) -> None:
    h1, h2 = base / "n1", base / "n2"
    ns1, ns2 = lab.hosts[0].ns, lab.hosts[1].ns
    pair_copy = base / "pair.json"

    # The second node cannot join before the pair exists: it needs the pair file.
    refused = escadm(lab, ns2, *ha_init("n2"), home=h2)
    assert refused.returncode == 2
    assert f"this node ({N2}) joins the pair that {N1} creates" in refused.stderr
    assert not (h2 / "esc.toml").exists()

    started = time.monotonic()
    created = json.loads(ok(lab, ns1, *ha_init("n1"), "--json", home=h1))
    init_seconds = time.monotonic() - started
    assert created["ha"] == "bootstrap" and created["address"] == N1
    assert created["admin_password"]
    pair_file = Path(created["pair_files"][0])
    assert stat.S_IMODE(pair_file.stat().st_mode) == 0o600
    settings1 = NodeHome(h1).load()
    assert settings1.api.host == "0.0.0.0"
    assert str(settings1.ha.address) == N1
    assert settings1.database.url == Cluster(NodeHome(h1), settings1.ha).database_url()

    # The operator copies the pair file to the second host; it joins. A file that does
    # not fit the node's options, or was damaged on the way, is refused.
    pair_copy.write_bytes(pair_file.read_bytes())
    pair_copy.chmod(0o600)
    other = ha_init("n2")
    other[other.index("--kad-vip") + 1] = f"{NET}.101/24"
    wrong = escadm(lab, ns2, *other, "--ha-pair-file", str(pair_copy), home=h2)
    assert wrong.returncode == 2
    assert f"is the pair file of another pair: kad_vip is {NET}.101/24 here" in wrong.stderr
    damaged = base / "damaged.json"
    damaged.write_text(pair_copy.read_text().replace('"kad_vri": 62', '"kad_vri": 63'))
    broken = escadm(lab, ns2, *ha_init("n2"), "--ha-pair-file", str(damaged), home=h2)
    assert broken.returncode == 2 and "is corrupt" in broken.stderr
    assert not h2.exists()
    joined = json.loads(
        ok(lab, ns2, *ha_init("n2"), "--ha-pair-file", str(pair_copy), "--json", home=h2)
    )
    assert joined["ha"] == "join" and joined["address"] == N2
    assert joined["admin_password"] is None
    for shared in ("data/escadm.credential", "data/backup.key", "data/pgsql.passfile"):
        assert (h1 / shared).read_text() == (h2 / shared).read_text(), shared
    assert read_pair_file(h2 / "data" / "ha-pair.json") == read_pair_file(pair_file)
    assert not (h2 / "data" / "pgsql" / "PG_VERSION").exists()  # cloned at its first start

    # A second bootstrap while the pair's database runs would split the pair: refused.
    write_role(NodeHome(h1), RoleRecord.now(ACTIVE, "test: as after MASTER", peer=N2, active=N1))
    write_role(NodeHome(h2), RoleRecord.now(STANDBY, "test: as after BACKUP", peer=N1, active=N1))
    try:
        started = time.monotonic()
        assert ok(lab, ns1, "start", home=h1).strip() == "ESC started"
        ok(lab, ns2, "start", home=h2)
        again = escadm(lab, ns2, *ha_init("n2", "--ha-bootstrap"), home=base / "n2-again")
        assert again.returncode == 2
        assert f"the peer's PostgreSQL answers on {N1}:5432" in again.stderr
        assert "split the pair" in again.stderr

        ok(lab, ns2, "replication", "status", "--wait-uptodate", "--timeout", "60", home=h2)
        uptodate_seconds = time.monotonic() - started
        primary = ok(lab, ns1, "replication", "status", home=h1)
        assert primary.splitlines()[:4] == [
            "esc role:Primary",
            "  disk:UpToDate",
            f"  {N2} role:Secondary",
            "    peer-disk:UpToDate",
        ]

        for ns, home in ((ns1, h1), (ns2, h2)):
            status = escadm(lab, ns, "status", "--v", home=home)
            lines = status.stdout.splitlines()
            for name in HA_SERVICE_NAMES:
                assert any(
                    line.startswith(f"{name} (pgid ") and line.endswith(") is running")
                    for line in lines
                ), f"{name} missing in {ns}'s status:\n{status.stdout}"
        standby = escadm(lab, ns2, "status", home=h2)
        assert standby.stdout.strip() == "ESC status=0 ESC HA Standby Healthy", (
            standby.stdout + log_tails(h2)
        )
        assert standby.returncode == 0
        active = json.loads(escadm(lab, ns1, "status", "--json", home=h1).stdout)
        assert active["role"] == ACTIVE, active
        assert [s["name"] for s in active["services"]] == list(HA_SERVICE_NAMES)
        assert all(s["pgid"] for s in active["services"])
        wait_for(
            lambda: (
                escadm(lab, ns1, "status", home=h1).stdout.strip()
                == "ESC status=0 ESC HA Active Healthy"
            ),
            30,
            "the first node active and healthy",
        )
        print(f"\ninit {init_seconds:.1f} s; first start to UpToDate {uptodate_seconds:.1f} s")

        # A planned restart of the standby's PostgreSQL (what the role manager asks for
        # when it demotes): a new postmaster, no death, streaming again.
        old = live_record(NodeHome(h2).run, "pgsql")
        new = request_restart(NodeHome(h2), "pgsql")
        assert new.pid != old.pid
        ok(lab, ns2, "replication", "status", "--wait-uptodate", "--timeout", "30", home=h2)
        assert "pgsql stopped (exit 0) for its requested restart" in supervisor_log(h2)

        # keepalived: the first node up took the VIP once its health passed (the node's
        # health loop writes the track file); `keepalived stop` hands it over at once,
        # `keepalived start` brings the node back as BACKUP without taking it back.
        for home in (h1, h2):
            assert ka.TrackFile(ka.KeepalivedPaths.under(home / "run").health_file).healthy()
        wait_for(lambda: holds(lab, ns1), 20, f"{ns1} holds the VIP")
        assert not holds(lab, ns2)
        stopped = ok(lab, ns1, "keepalived", "stop", home=h1)
        assert stopped.strip() == f"keepalived stopped: the VIP {VIP} was handed over to {N2}"
        wait_for(lambda: holds(lab, ns2) and not holds(lab, ns1), 20, f"{ns2} takes the VIP")
        held = escadm(lab, ns1, "status", home=h1)
        assert held.returncode == 1
        assert held.stdout.strip().endswith(
            "Unhealthy: keepalived is stopped on request (escadm keepalived start)"
        ), held.stdout
        assert "keepalived is already stopped" in ok(lab, ns1, "keepalived", "stop", home=h1)
        ok(lab, ns1, "keepalived", "start", home=h1)
        time.sleep(1.0)  # ten advert intervals: time enough to take the VIP back, were it to
        assert holds(lab, ns2) and not holds(lab, ns1)

        # The first node, now the standby under an active peer, had last run as a
        # primary: its role manager has its PostgreSQL follow the new active (rewound
        # by the pgsql service before it starts), and it streams from it.
        ok(lab, ns1, "replication", "status", "--wait-uptodate", "--timeout", "60", home=h1)
        assert ok(lab, ns2, "replication", "status", home=h2).startswith("esc role:Primary")
        assert "it follows" in (h1 / "log" / "pgsql.log").read_text()
        assert "following 198.18.50.12:5432 by rewind" in (h1 / "log" / "pgsql.log").read_text()

        # A keepalived that does not stop on SIGTERM (here: stopped, VRRP child and all)
        # is killed at the node's stop, and the VIP it left on the interface removed.
        # Its peer hears no adverts and becomes MASTER meanwhile, but it has no node
        # provider to fence the active it cannot see and no handover: it goes FAULT and
        # says so, instead of a second node writing.
        assert holds(lab, ns2)
        keepalived = psutil.Process(live_record(NodeHome(h2).run, "keepalived").pid)
        for process in [keepalived, *keepalived.children(recursive=True)]:
            process.send_signal(signal.SIGSTOP)
        fault_s = wait_for(
            lambda: escadm(lab, ns1, "status", home=h1).stdout.startswith(
                "ESC status=1 ESC HA Fault: no node provider is configured"
            ),
            20,
            f"{ns1} goes FAULT",
            lambda: log_tails(h1),
        )
        print(f"FAULT seen {fault_s:.1f} s after the active's keepalived hung")
        ok(lab, ns2, "stop", home=h2, timeout=180)
        assert not holds(lab, ns2), log_tails(h2)
        assert f"the VIP {VIP}/24 the killed keepalived left on eth0 was removed" in (
            supervisor_log(h2)
        )
        assert not holds(lab, ns1)
    finally:
        for ns, home in ((ns2, h2), (ns1, h1)):
            escadm(lab, ns, "stop", home=home)
    for ns, home in ((ns1, h1), (ns2, h2)):
        assert (
            escadm(lab, ns, "status", home=home).stdout.strip() == "ESC status=0 ESC HA is stopped"
        )
        assert lab.pids(ns) == [], f"processes left in {ns}"
        assert not (home / "data" / "pgsql" / "postmaster.pid").exists()
        assert not holds(lab, ns)
        assert read_role(NodeHome(home)) is not None  # the role record is the role manager's
