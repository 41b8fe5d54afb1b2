"""The lab's node provider: a host agent owning the network namespaces the nodes of
an HA pair run in, served over HTTP.

    python -m esc.ha.labhost --listen IP:PORT --node ADDRESS=NETNS [--node ...] \\
        --state FILE [--token-file FILE] [--bridge BR --nodes-dir DIR --releases DIR]

It runs in the root namespace of the host that holds the namespaces, listening on an
address both nodes reach (in the lab, the bridge's gateway address), and it is to
the lab what a VIM is to a real pair: the infrastructure under the nodes, which the
nodes cannot take down with them.

- fence: every link of the node's namespace but `lo` goes down (the node is cut off
  at once), then every process in the namespace gets SIGKILL, until none is left.
  Returns once that holds; fencing a fenced node does it again (cheap, idempotent).
  One power operation runs at a time, and a node asking while it is fenced (both
  nodes of a split pair asked at once, the other one first) or asking to fence
  itself is refused, so one node survives.
- power-off: an orderly shutdown first, as a VM's: SIGTERM to the namespace's top
  processes (a node's supervisor stops its services in their order), then to what is
  left, `grace` seconds in all for them to stop; then as fence.
- power-on: as after a reboot: the node's own address alone on its link (a VIP it
  held is gone), links up, its default route back. Processes are the caller's to
  start.
- the witness record: which node is marked outdated, why, since when, by whom; kept
  in --state (JSON, written atomically and synced before the answer), so it survives
  a restart of the agent.
- nodes of its own (with --bridge, --nodes-dir, --releases): deploy makes a node from
  a release's wheel as a VIM makes a VM (esc.ha.labnodes: its namespace on the
  bridge, its venv, its day-0, its first boot), in the background (the node is
  BUILDING, then RUNNING, or ERROR with the reason); power-on of such a node also
  boots it (escadm start); delete fences it and removes it. They are kept in --state
  too, and named by their name or their address.

Every request carries `Authorization: Bearer TOKEN`, the token of --token-file (else
of $ESC_PROVIDER_TOKEN); the token is never logged. JSON both ways, under /v1:

    GET    /check                    {"service": "esc-lab-provider", "nodes": [ADDRESS, ...]}
    GET    /nodes/ADDRESS            {"address", "netns", "power", "links", "processes",
                                      "outdated", "since", "by"}
    POST   /nodes/ADDRESS/fence      {"address", "power": "off", "killed", "seconds"}
    POST   /nodes/ADDRESS/power-off  {"grace": S} → as fence
    POST   /nodes/ADDRESS/power-on   {"address", "power": "on", "seconds"}
    GET    /nodes/ADDRESS/outdated   {"outdated": REASON | null, "since", "by"}
    PUT    /nodes/ADDRESS/outdated   {"reason": R}: 204
    DELETE /nodes/ADDRESS/outdated   204 (a node without a mark too)
    GET    /nodes                    {"nodes": [status, ...]}
    POST   /nodes                    {"name", "image", "ip", ...: esc.ha.provider.NodeSpec}:
                                     202, its status ("state": "BUILDING")
    DELETE /nodes/NAME               204 (a node it deployed)

A node's status also says its "name", "state" (RUNNING, STOPPED, BUILDING, ERROR),
"image", "ip", "detail" and the "parameters" it was deployed with; ADDRESS may be a
node's name.

A refusal is {"error": MESSAGE, "kind": CLASS}: 404 an unknown node, 422 a malformed
body, 409 another permanent refusal (PermanentProviderError), 503 a fence that could
not be completed within its bound (TransientProviderError: ask again), 401 a wrong or
missing token.

Processes are found as `ip netns pids` finds them (their /proc/PID/ns/net is the
namespace's), and signalled through a pidfd opened after the namespace was checked,
so a pid reused meanwhile by a process elsewhere is never hit. A zombie has left
every namespace: it cannot act and is not waited for (reaping it is its parent's
business, and on this kind of host PID 1 may never do it).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from esc import service
from esc.files import write_atomic
from esc.ha.labnodes import NETNS_DIR, Machine, NodeMachines, ip_command
from esc.ha.provider import (
    NodeSpec,
    PermanentProviderError,
    ProviderError,
    TransientProviderError,
    UnknownNode,
)
from esc.ha.providers.lab import API, SERVICE
from esc.service import UsageError, bind, error_response, service_app, url_of

log = logging.getLogger("esc.ha.labhost")

TOKEN_ENV = "ESC_PROVIDER_TOKEN"
MAX_BODY = 65536  # a deploy's body holds the node's pair file
KEEP_ALIVE = 60  # longer than a client keeps an idle connection (httpx: 5 s)
EXIT_USAGE = 2
STATE_FORMAT = 1
# How long SIGKILLed processes may take to leave the namespace before a fence is
# reported incomplete (transient: asking again fences again). Measured: a few ms.
KILL_BOUND = 2.0
MAX_GRACE = 60.0
LINK_UP_BOUND = 5.0
_POLL = 0.002


class NoteBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, max_length=500)


class PowerOffBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    grace: float = Field(0.0, ge=0.0, le=MAX_GRACE)


class DeployBody(BaseModel):
    """A node to deploy, as esc.ha.provider.NodeSpec says it."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64)
    image: str = Field(min_length=1, max_length=200)
    flavor: str = ""
    network: str = ""
    ip: str = ""
    gateway_ip: str = ""
    ha_node_list: list[str] = Field(default_factory=list, max_length=2)
    kad_vip: str = ""
    kad_vif: str = ""
    floating_ip: str = ""
    init_options: dict[str, str] = Field(default_factory=dict)
    vim_settings: dict[str, str | int | float | bool] = Field(default_factory=dict)
    ha_pair: str = Field("", max_length=60000)

    def spec(self) -> NodeSpec:
        values = self.model_dump()
        values["ha_node_list"] = tuple(self.ha_node_list)
        values["init_options"] = tuple(sorted(self.init_options.items()))
        values["vim_settings"] = tuple(sorted(self.vim_settings.items()))
        return NodeSpec(**values)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


_ip = ip_command


# the namespaces ---------------------------------------------------------------------------


def _ns_key(path: str | os.PathLike[str]) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def netns_pids(netns: str) -> list[int]:
    """The processes in network namespace `netns`, as `ip netns pids` lists them."""
    key = _ns_key(NETNS_DIR / netns)
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if _ns_key(f"/proc/{entry.name}/ns/net") == key:
                    found.append(int(entry.name))
            except OSError:  # gone, or a zombie (it has left its namespaces)
                continue
    return found


def _parent(pid: int) -> int | None:
    """The parent of `pid` (None once it is gone), from /proc/PID/stat."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name, in parentheses, may hold spaces: the fields follow its last ')'.
    return int(stat.rsplit(")", 1)[1].split()[1])


def _kill_in(netns: str, pid: int, signum: int) -> bool:
    """Signal `pid` if it is still in `netns` (checked after pinning it by a pidfd)."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return False  # already gone
    try:
        if _ns_key(f"/proc/{pid}/ns/net") != _ns_key(NETNS_DIR / netns):
            return False  # the pid was reused by a process elsewhere
        signal.pidfd_send_signal(fd, signum)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _links(netns: str) -> list[dict[str, Any]]:
    return json.loads(_ip(["-n", netns, "-j", "link", "show"]) or "[]")


def _outside_links(netns: str) -> list[str]:
    """The namespace's links other than loopback: its ways to reach anything."""
    return [link["ifname"] for link in _links(netns) if link.get("link_type") != "loopback"]


@dataclass(frozen=True)
class Node:
    address: str
    netns: str
    name: str = ""  # a node it deployed: its name (its namespace's too)


# The states of a node it deployed, besides those its power gives (RUNNING, STOPPED).
BUILDING, RUNNING, ERROR = "BUILDING", "RUNNING", "ERROR"


class LabAgent:
    """The nodes (address → namespace), those it deploys on `machines`, and the witness
    record, in `state_file`."""

    def __init__(
        self, nodes: dict[str, str], state_file: Path, machines: NodeMachines | None = None
    ) -> None:
        self.nodes = {a: Node(a, ns) for a, ns in nodes.items()}
        self.machines = machines
        self.state_file = state_file
        self._state_lock = threading.Lock()
        # Deploys and deletes change the set of nodes: one at a time.
        self._nodes_lock = threading.Lock()
        # One power operation at a time, over all nodes: when both nodes of a split pair
        # ask to fence each other at once, the second request finds its caller fenced
        # and is refused, so that one node survives. (A fence takes milliseconds.)
        self._power_lock = threading.Lock()
        self.state = load_state(state_file)
        try:  # found now, not when the first mark is refused
            write_atomic(state_file, _encode(self.state), 0o600, durable=True)
        except OSError as exc:
            raise UsageError(
                f"cannot write the state file {state_file}: {exc.strerror}; give a --state "
                "in a directory the agent may write"
            ) from None
        self._load_deployed()

    def _load_deployed(self) -> None:
        """The nodes it deployed before a restart; a deploy a restart cut short is ERROR."""
        for address, record in self.state["nodes"].items():
            deployed = record.get("deployed")
            if not deployed:
                continue
            if address in self.nodes:
                raise UsageError(
                    f"--node {address} is the address of node {deployed['name']}, which this "
                    "agent deployed: leave that --node out"
                )
            self.nodes[address] = Node(address, deployed["name"], deployed["name"])
            if record.get("state") == BUILDING:
                self._update(
                    address,
                    state=ERROR,
                    detail="the agent stopped during its deploy: delete it and deploy it again",
                )

    # the state file -----------------------------------------------------------------------

    def _record(self, address: str) -> dict[str, Any]:
        """A copy of what the state file holds for the node (changed by _update only)."""
        with self._state_lock:
            return dict(self.state["nodes"].get(address, {}))

    def _update(self, address: str, **changes: Any) -> None:
        """Change the node's record (a None value removes the key), on disk first: a
        write that fails changes nothing, and the caller gets the error."""
        with self._state_lock:
            record = dict(self.state["nodes"].get(address, {}))
            for key, value in changes.items():
                if value is None:
                    record.pop(key, None)
                else:
                    record[key] = value
            state = {**self.state, "nodes": {**self.state["nodes"], address: record}}
            write_atomic(self.state_file, _encode(state), 0o600, durable=True)
            self.state = state

    def _forget(self, address: str) -> None:
        with self._state_lock:
            nodes = {a: r for a, r in self.state["nodes"].items() if a != address}
            state = {**self.state, "nodes": nodes}
            write_atomic(self.state_file, _encode(state), 0o600, durable=True)
            self.state = state

    def node(self, address: str) -> Node:
        """The node of an address, or of a name (a node it deployed, or a namespace)."""
        try:
            return self.nodes[str(ipaddress.ip_address(address))]
        except ValueError:
            for node in list(self.nodes.values()):
                if address in (node.name, node.netns):
                    return node
        except KeyError:
            pass
        raise UnknownNode(
            f"no node {address} at this provider (it has {', '.join(self.nodes) or 'none'}): "
            "start the agent with --node ADDRESS=NETNS for it, or deploy it"
        )

    # power --------------------------------------------------------------------------------

    def fence(self, address: str, grace: float = 0.0, caller: str | None = None) -> dict[str, Any]:
        """Cut the node off and kill its processes (after `grace` seconds of SIGTERM).

        `caller` is the requester's address: a node is not fenced on behalf of itself
        (it would never get the answer) nor of a node that is fenced.
        """
        node = self.node(address)
        started = time.monotonic()
        with self._power_lock:
            self._check_netns(node)
            self._check_caller(node, caller)
            if grace > 0:
                self._terminate(node, grace)
            changes: dict[str, Any] = {"power": "off"}
            if self._record(node.address).get("power") != "off":
                # Read before the links go down: the kernel drops the default route then.
                changes["boot"] = self._boot_config(node)
            links = _outside_links(node.netns)
            for link in links:
                _ip(["-n", node.netns, "link", "set", link, "down"])
            try:
                killed = self._kill_all(node)
            finally:
                # Cut off even if a process outlived its SIGKILL: never powered on again
                # without power-on.
                self._update(node.address, **changes, fenced_at=_now())
        seconds = time.monotonic() - started
        log.info(
            "fenced %s (netns %s): %s down, %d processes killed, in %.3f s",
            node.address,
            node.netns,
            ", ".join(links) or "no links",
            killed,
            seconds,
        )
        return {"address": node.address, "power": "off", "killed": killed, "seconds": seconds}

    def _check_caller(self, node: Node, caller: str | None) -> None:
        if caller == node.address:
            raise PermanentProviderError(
                f"node {node.address} asked to fence itself: a node is fenced by its peer "
                "(or by an operator from elsewhere)"
            )
        if caller in self.nodes and self._record(caller).get("power") == "off":
            log.warning("refused to fence %s for %s, itself fenced", node.address, caller)
            raise PermanentProviderError(
                f"node {caller} asked to fence {node.address}, but {caller} is itself fenced "
                "(both nodes asked at once: the other one's request came first)"
            )

    def _check_netns(self, node: Node) -> None:
        if not (NETNS_DIR / node.netns).exists():
            raise PermanentProviderError(
                f"the namespace {node.netns} of node {node.address} does not exist "
                "(ip netns list): the agent's --node is wrong, or the host was removed"
            )

    def _terminate(self, node: Node, grace: float) -> None:
        """An orderly shutdown, as a VM's init gives one: the namespace's top processes
        (those whose parent is outside it, such as a node's supervisor, which stops its
        services in their order: the engine, which hands the active role over, before
        the database) get SIGTERM first; what is left once they have gone gets it too,
        all within `grace` seconds."""
        deadline = time.monotonic() + grace
        pids = netns_pids(node.netns)
        tops = [pid for pid in pids if _parent(pid) not in pids]
        for pid in tops:
            _kill_in(node.netns, pid, signal.SIGTERM)
        while set(tops) & set(netns_pids(node.netns)) and time.monotonic() < deadline:
            time.sleep(0.02)
        for pid in netns_pids(node.netns):
            _kill_in(node.netns, pid, signal.SIGTERM)
        while netns_pids(node.netns) and time.monotonic() < deadline:
            time.sleep(0.02)

    def _kill_all(self, node: Node) -> int:
        """SIGKILL every process of the namespace until none is left; the count killed."""
        deadline = time.monotonic() + KILL_BOUND
        killed: set[int] = set()
        # Repeated: a process may fork between the listing and its kill.
        while pids := netns_pids(node.netns):
            for pid in pids:
                if _kill_in(node.netns, pid, signal.SIGKILL):
                    killed.add(pid)
            if time.monotonic() > deadline:
                raise TransientProviderError(
                    f"node {node.address} is cut off (its links are down), but processes "
                    f"{pids} in {node.netns} survived SIGKILL for {KILL_BOUND:g} s "
                    "(stuck in the kernel?): fence again, or reboot the host"
                )
            time.sleep(_POLL)
        return len(killed)

    def _boot_config(self, node: Node) -> dict[str, Any]:
        """What a reboot gives the node back: its address on its link, its default route."""
        config: dict[str, Any] = {}
        for entry in json.loads(_ip(["-n", node.netns, "-j", "-4", "addr", "show"]) or "[]"):
            for info in entry.get("addr_info", []):
                if info.get("local") == node.address:
                    config["link"], config["prefix"] = entry["ifname"], info["prefixlen"]
        routes = json.loads(_ip(["-n", node.netns, "-j", "-4", "route", "show", "default"]))
        if routes and routes[0].get("gateway"):
            config["gateway"] = routes[0]["gateway"]
        return config

    def power_on(self, address: str) -> dict[str, Any]:
        node = self.node(address)
        started = time.monotonic()
        with self._power_lock:
            self._check_netns(node)
            boot = self._record(node.address).get("boot") or {}
            link = boot.get("link")
            if link and "prefix" in boot:
                _ip(["-n", node.netns, "addr", "flush", "dev", link])
                _ip(
                    [
                        "-n",
                        node.netns,
                        "addr",
                        "add",
                        f"{node.address}/{boot['prefix']}",
                        "dev",
                        link,
                    ]
                )
            for name in _outside_links(node.netns):
                _ip(["-n", node.netns, "link", "set", name, "up"])
            if link:
                self._wait_up(node, link)
            gateway = boot.get("gateway")
            if gateway and not json.loads(
                _ip(["-n", node.netns, "-j", "-4", "route", "show", "default"])
            ):
                _ip(["-n", node.netns, "route", "add", "default", "via", gateway])
            self._update(node.address, power="on", powered_on_at=_now())
        machine = self._machine(node.address)
        if (
            machine is not None
            and self._record(node.address).get("state") == RUNNING
            and not netns_pids(node.netns)  # a node that is on is not booted again
        ):
            machine.boot()  # as a VM boots once it is on: escadm start
        seconds = time.monotonic() - started
        log.info("powered %s (netns %s) on in %.3f s", node.address, node.netns, seconds)
        return {"address": node.address, "power": "on", "seconds": seconds}

    def _wait_up(self, node: Node, link: str) -> None:
        # The kernel refuses a route through a link that is not up yet.
        deadline = time.monotonic() + LINK_UP_BOUND
        while time.monotonic() < deadline:
            if any(
                entry["ifname"] == link and entry.get("operstate") == "UP"
                for entry in _links(node.netns)
            ):
                return
            time.sleep(0.02)
        raise TransientProviderError(
            f"{link} of node {node.address} did not come up within {LINK_UP_BOUND:g} s: "
            "is the other end of its cable (the bridge port) up?"
        )

    def status(self, address: str) -> dict[str, Any]:
        node = self.node(address)
        record = self._record(node.address)
        deployed = record.get("deployed") or {}
        exists = (NETNS_DIR / node.netns).exists()
        if not exists and not deployed:
            self._check_netns(node)
        state = record.get("state")
        try:
            found = _links(node.netns) if exists else []
        except PermanentProviderError:
            if state != BUILDING:
                raise
            found = []  # its namespace is being made: `ip netns add` is not atomic
        links = {
            entry["ifname"]: entry.get("operstate", "UNKNOWN")
            for entry in found
            if entry.get("link_type") != "loopback"
        }
        power = record.get("power", "on")
        if state not in (BUILDING, ERROR):
            state = "STOPPED" if power == "off" else RUNNING
        return {
            "address": node.address,
            "netns": node.netns,
            "name": node.name or node.netns,
            "state": state,
            "image": deployed.get("parameters", {}).get("image", ""),
            "ip": node.address,
            "detail": record.get("detail", ""),
            "parameters": deployed.get("parameters", {}),
            "deployed": bool(deployed),
            "power": power,
            "links": links,
            "processes": len(netns_pids(node.netns)) if exists else 0,
            **self.outdated(node.address),
        }

    # nodes of its own -----------------------------------------------------------------------

    def _machine(self, address: str) -> Machine | None:
        deployed = self._record(address).get("deployed")
        if not deployed or self.machines is None:
            return None
        return Machine(
            deployed["name"],
            Path(deployed["directory"]),
            ipaddress.IPv4Interface(deployed["address"]),
            deployed["gateway"],
            deployed["bridge"],
        )

    def deploy(self, spec: NodeSpec) -> dict[str, Any]:
        """Start deploying the node of `spec` (BUILDING; then RUNNING, or ERROR with the
        reason). The same node asked again is left as it is; another of its name refused."""
        if self.machines is None:
            raise PermanentProviderError(
                "this agent deploys no nodes: start it with --bridge, --nodes-dir and --releases"
            )
        with self._nodes_lock:
            existing = next((n for n in self.nodes.values() if spec.name == n.name), None)
            if existing is not None:
                deployed = self._record(existing.address)["deployed"]
                if deployed["parameters"] != spec.parameters():
                    changed = sorted(
                        k
                        for k, v in spec.parameters().items()
                        if deployed["parameters"].get(k) != v
                    )
                    raise PermanentProviderError(
                        f"node {spec.name} exists already with another {', '.join(changed)}: "
                        "delete it first to deploy it again"
                    )
                return self.status(existing.address)
            taken = {n.netns for n in self.nodes.values()}
            machine = self.machines.machine(spec, taken, set(self.nodes))
            address = str(machine.address.ip)
            self._update(
                address,
                deployed={
                    "name": machine.name,
                    "directory": str(machine.directory),
                    "address": str(machine.address),
                    "gateway": machine.gateway,
                    "bridge": machine.bridge,
                    "parameters": spec.parameters(),
                },
                state=BUILDING,
                detail="",
                power="on",
                deployed_at=_now(),
            )
            self.nodes[address] = Node(address, machine.name, machine.name)
        threading.Thread(
            target=self._build, args=(machine, spec), name=f"deploy-{spec.name}", daemon=True
        ).start()
        return self.status(address)

    def _build(self, machine: Machine, spec: NodeSpec) -> None:
        assert self.machines is not None
        address = str(machine.address.ip)
        started = time.monotonic()
        try:
            self.machines.build(machine, spec)
        except Exception as exc:
            log.error("deploy of node %s (%s) failed: %s", machine.name, address, exc)
            self._update(address, state=ERROR, detail=f"its deploy failed: {exc}")
            return
        self._update(address, state=RUNNING, detail="")
        log.info(
            "deployed node %s (%s, image %s) in %.1f s",
            machine.name,
            address,
            spec.image,
            time.monotonic() - started,
        )

    def delete(self, address: str) -> None:
        """Fence a node it deployed and remove it: namespace, link, directory, record."""
        node = self.node(address)
        record = self._record(node.address)
        machine = self._machine(node.address)
        if machine is None:
            raise PermanentProviderError(
                f"node {node.address} (netns {node.netns}) was not deployed by this agent: it "
                "is one of its --node; remove its namespace by hand"
            )
        if record.get("state") == BUILDING:
            raise TransientProviderError(
                f"node {node.name} is being deployed: delete it once its deploy has ended"
            )
        with self._nodes_lock:
            with self._power_lock:
                if (NETNS_DIR / node.netns).exists():
                    for link in _outside_links(node.netns):
                        _ip(["-n", node.netns, "link", "set", link, "down"])
                    self._kill_all(node)
                machine.remove()
            self.nodes.pop(node.address, None)
            self._forget(node.address)
        log.info("deleted node %s (%s)", node.name, node.address)

    # the witness record -------------------------------------------------------------------

    def mark_outdated(self, address: str, reason: str, by: str) -> None:
        node = self.node(address)
        outdated = {"reason": reason, "since": _now(), "by": by}
        self._update(node.address, outdated=outdated)
        log.info("marked %s outdated (by %s): %s", node.address, by, reason)

    def clear_outdated(self, address: str, by: str) -> None:
        node = self.node(address)
        if "outdated" in self._record(node.address):
            self._update(node.address, outdated=None)
            log.info("cleared the outdated mark of %s (by %s)", node.address, by)

    def outdated(self, address: str) -> dict[str, Any]:
        mark = self._record(self.node(address).address).get("outdated") or {}
        return {"outdated": mark.get("reason"), "since": mark.get("since"), "by": mark.get("by")}


def _encode(state: dict[str, Any]) -> bytes:
    return json.dumps(state, indent=2, sort_keys=True).encode() + b"\n"


def load_state(path: Path) -> dict[str, Any]:
    """The agent's state file; an absent one is an empty record."""
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return {"format": STATE_FORMAT, "nodes": {}}
    except (OSError, ValueError) as exc:
        raise UsageError(
            f"cannot read the state file {path}: {exc}; restore it from a copy, or remove it "
            "(every outdated mark in it is then lost)"
        ) from None
    if (
        not isinstance(state, dict)
        or state.get("format") != STATE_FORMAT
        or not isinstance(state.get("nodes"), dict)
    ):
        raise UsageError(
            f"the state file {path} is not one of this agent (format {STATE_FORMAT}): "
            "give another --state"
        )
    return state


# the HTTP service -------------------------------------------------------------------------


def _refusal(exc: ProviderError) -> JSONResponse:
    if isinstance(exc, TransientProviderError):
        return error_response(503, str(exc), "TransientProviderError")
    if isinstance(exc, UnknownNode):  # its own kind: "no such node" is an answer too
        return error_response(404, str(exc), "UnknownNode")
    return error_response(409, str(exc), "PermanentProviderError")


def create_app(agent: LabAgent, token: str) -> Any:
    """The agent's ASGI application, serving `agent` to holders of `token`."""
    app = service_app(
        "ESC lab node provider", "the agent", ProviderError, _refusal, log, "PermanentProviderError"
    )

    def caller(request: Request) -> str:
        return request.client.host if request.client else "?"

    @app.get(f"{API}/check")
    def check() -> dict[str, Any]:
        return {"service": SERVICE, "nodes": list(agent.nodes)}

    @app.get(f"{API}/nodes")
    def node_list() -> dict[str, Any]:
        return {"nodes": [agent.status(address) for address in list(agent.nodes)]}

    @app.post(f"{API}/nodes", status_code=202)
    def deploy(body: DeployBody) -> dict[str, Any]:
        return agent.deploy(body.spec())

    @app.get(f"{API}/nodes/{{address}}")
    def node_status(address: str) -> dict[str, Any]:
        return agent.status(address)

    @app.delete(f"{API}/nodes/{{address}}", status_code=204)
    def delete(address: str) -> Response:
        agent.delete(address)
        return Response(status_code=204)

    @app.post(f"{API}/nodes/{{address}}/fence")
    def fence(address: str, request: Request) -> dict[str, Any]:
        return agent.fence(address, caller=caller(request))

    @app.post(f"{API}/nodes/{{address}}/power-off")
    def power_off(address: str, body: PowerOffBody, request: Request) -> dict[str, Any]:
        return agent.fence(address, grace=body.grace, caller=caller(request))

    @app.post(f"{API}/nodes/{{address}}/power-on")
    def power_on(address: str) -> dict[str, Any]:
        return agent.power_on(address)

    @app.get(f"{API}/nodes/{{address}}/outdated")
    def outdated(address: str) -> dict[str, Any]:
        return agent.outdated(address)

    @app.put(f"{API}/nodes/{{address}}/outdated", status_code=204)
    def mark_outdated(address: str, body: NoteBody, request: Request) -> Response:
        agent.mark_outdated(address, body.reason, caller(request))
        return Response(status_code=204)

    @app.delete(f"{API}/nodes/{{address}}/outdated", status_code=204)
    def clear_outdated(address: str, request: Request) -> Response:
        agent.clear_outdated(address, caller(request))
        return Response(status_code=204)

    return service.BearerGuard(app, token, service="node provider", log=log, max_body=MAX_BODY)


def parse_nodes(specs: list[str]) -> dict[str, str]:
    """ADDRESS=NETNS, ... → {address: netns}; each namespace must exist."""
    nodes: dict[str, str] = {}
    for spec in specs:
        address, sep, netns = spec.partition("=")
        try:
            address = str(ipaddress.ip_address(address))
        except ValueError:
            address = ""
        if not sep or not address or not netns or "/" in netns:
            raise UsageError(
                f"--node {spec!r}: give ADDRESS=NETNS, e.g. 198.18.0.11=node1 (the node's IP "
                "address and the network namespace it runs in)"
            )
        if address in nodes:
            raise UsageError(f"--node {address} is given twice")
        if not (NETNS_DIR / netns).exists():
            raise UsageError(
                f"--node {spec}: no network namespace {netns} (ip netns list shows them); "
                f"create it first (ip netns add {netns})"
            )
        nodes[address] = netns
    return nodes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m esc.ha.labhost",
        description="Fence the lab's nodes (network namespaces) and keep the pair's "
        "witness record, over HTTP.",
    )
    parser.add_argument("--listen", required=True, help="IP:PORT to serve on")
    parser.add_argument(
        "--node",
        action="append",
        default=[],
        metavar="ADDRESS=NETNS",
        help="a node's address and the network namespace it runs in (repeat per node)",
    )
    parser.add_argument("--state", required=True, type=Path, help="the witness record (JSON)")
    parser.add_argument(
        "--token-file", type=Path, help=f"the shared token (mode 0600); else ${TOKEN_ENV}"
    )
    parser.add_argument("--bridge", help="deploy nodes: the bridge their links are ports of")
    parser.add_argument("--nodes-dir", type=Path, help="deploy nodes: where their disks are")
    parser.add_argument("--releases", type=Path, help="deploy nodes: the release wheels")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        host, port = service.parse_listen(
            args.listen, "198.18.0.1:7700", "one both nodes of the pair reach"
        )
        token = service.service_token(args.token_file, TOKEN_ENV, "node provider")
        nodes = parse_nodes(args.node)
        machines = None
        deploying = [args.bridge, args.nodes_dir, args.releases]
        if any(deploying):
            if not all(deploying):
                raise UsageError("--bridge, --nodes-dir and --releases go together: give all three")
            machines = NodeMachines(args.bridge, args.nodes_dir, args.releases)
        if not nodes and machines is None:
            raise UsageError(
                "no --node: give ADDRESS=NETNS for each node the agent provides, or --bridge, "
                "--nodes-dir and --releases for the nodes it deploys"
            )
        agent = LabAgent(nodes, args.state.absolute(), machines)
        sock = bind(host, port)
    except UsageError as exc:
        print(f"esc.ha.labhost: {exc}", file=sys.stderr)
        return EXIT_USAGE
    url = url_of(host, sock.getsockname()[1])
    # The socket listens already: a client connecting from now on is served.
    print(json.dumps({"url": url, "pid": os.getpid()}), flush=True)
    marked = [a for a in agent.nodes if agent.outdated(a)["outdated"]]
    log.info(
        "lab node provider on %s for %s; outdated: %s",
        url,
        ", ".join(f"{n.address} (netns {n.netns})" for n in agent.nodes.values()) or "no node yet",
        ", ".join(marked) or "none",
    )
    with contextlib.suppress(KeyboardInterrupt):
        service.serve(create_app(agent, token), sock, keep_alive=KEEP_ALIVE)
    log.info("lab node provider stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
