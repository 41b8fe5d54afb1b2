"""An ESC pair in the network-namespace lab, as an operator sets it up: `escadm init
--ha` on two test hosts with the pair file, the lab's node provider (the host agent in
the root namespace, on the gateway address), `escadm start` on both. Shared by the HA
tests and bench/bench_failover.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from lab import Lab, tcp_probe

from esc.config import NodeHome

ESCADM = str(Path(sys.executable).with_name("escadm"))
API_PORT = 8080
AGENT_PORT = 7700
VIM_PORT = 7800


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.1)


@dataclass
class Node:
    name: str
    ns: str
    address: str
    home: Path
    escadm: str = ESCADM  # another release's, for a node made from its wheel


class Pair:
    """Two ESC nodes on the lab's first two hosts, the VIP at .100 of the lab's net, the
    lab's node provider on the gateway address. `base` must be a directory user
    postgres can traverse (mode 0711)."""

    def __init__(
        self,
        lab: Lab,
        base: Path,
        kad_vri: int = 66,
        pg_clients: tuple[str, ...] = (),
        escadm: tuple[str, str] = (ESCADM, ESCADM),
    ) -> None:
        self.lab = lab
        self.base = base
        self.kad_vri = kad_vri
        # [ha] pg_clients of both nodes: a client in the root namespace (the gateway
        # address) that writes to the pair's PostgreSQL itself.
        self.pg_clients = list(pg_clients)
        self.nodes = [
            Node(f"n{i + 1}", host.ns, str(host.address), base / f"n{i + 1}", escadm[i])
            for i, host in enumerate(lab.hosts[:2])
        ]
        self.gateway = str(lab.gateway)
        self.vip = str(lab.net.network_address + 100)
        self.agent_url = f"http://{self.gateway}:{AGENT_PORT}"
        # The VNFs live on the VIM, not on a controller node: a VIM host of its own on
        # the lab's third host, which both nodes reach.
        # A lab of two hosts runs the pair with each node's own local VIM.
        vim = lab.hosts[2] if len(lab.hosts) > 2 else None
        self.vim_ns = vim.ns if vim else ""
        self.vim_url = f"http://{vim.address}:{VIM_PORT}" if vim else ""
        self.vim_host: subprocess.Popen | None = None
        self.api_url = f"http://{self.vip}:{API_PORT}"
        self.token = base / "provider.token"
        self.agent: subprocess.Popen | None = None
        self.password = ""

    # commands ------------------------------------------------------------------------

    def escadm(self, node: Node, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return self.lab.run(
            node.ns, [node.escadm, *args, "--home", str(node.home)], check=False, timeout=timeout
        )

    def ok(self, node: Node, *args: str, timeout: float = 120) -> str:
        result = self.escadm(node, *args, timeout=timeout)
        assert result.returncode == 0, (
            f"escadm {' '.join(args)} on {node.name} exited {result.returncode}:\n"
            f"{result.stdout}{result.stderr}\n{self.logs()}"
        )
        return result.stdout

    def init_args(self, name: str) -> list[str]:
        return [
            "init",
            "--ha",
            "--ha-node-list",
            ",".join(n.address for n in self.nodes),
            "--kad-vip",
            f"{self.vip}/{self.lab.net.prefixlen}",
            "--kad-vif",
            "eth0",
            "--gateway-ip",
            self.gateway,
            "--kad-vri",
            str(self.kad_vri),
            "--api-port",
            str(API_PORT),
            "--ha-provider",
            "lab",
            "--ha-provider-url",
            self.agent_url,
            "--ha-provider-token-file",
            str(self.token),
            "--node-name",
            name,
        ]

    # set-up --------------------------------------------------------------------------

    def start_agent(self) -> None:
        self.token.write_text("lab-agent-token-for-the-failover-tests\n")
        self.token.chmod(0o600)
        listen = f"{self.gateway}:{AGENT_PORT}"
        command = [sys.executable, "-m", "esc.ha.labhost", "--listen", listen]
        for node in self.nodes:
            command += ["--node", f"{node.address}={node.ns}"]
        command += ["--state", str(self.base / "provider.json"), "--token-file", str(self.token)]
        log = (self.base / "labhost.log").open("w")
        self.agent = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        wait_for(
            lambda: tcp_probe(self.gateway, AGENT_PORT, 0.2) == "open", 15, "the lab agent listens"
        )

    def start_vim_host(self) -> None:
        token = self.base / "vim.token"
        token.write_text("lab-vim-host-token-for-the-failover-tests\n")
        token.chmod(0o600)
        address = self.vim_url.split("//")[1]
        log = (self.base / "vimhost.log").open("w")
        command = [sys.executable, "-m", "esc.vim.host", "--dir", str(self.base / "vim")]
        command += ["--listen", address, "--token-file", str(token)]
        self.vim_host = self.lab.popen(self.vim_ns, command, stdout=log, stderr=subprocess.STDOUT)
        host, port = address.split(":")
        wait_for(lambda: tcp_probe(host, int(port), 0.2) == "open", 30, "the VIM host listens")

    def _configure(self, node: Node) -> None:
        """What `escadm init` has no option for, set in esc.toml before the first start."""
        home = NodeHome(node.home)
        settings = home.load()
        if self.vim_host is not None:
            settings.vim = type(settings.vim)(
                driver="vimhost", url=self.vim_url, token_file=str(self.base / "vim.token")
            )
        ha = settings.ha.model_dump()
        settings.ha = type(settings.ha).model_validate({**ha, "pg_clients": self.pg_clients})
        home.save(settings)

    def create(self) -> None:
        first, second = self.nodes
        created = json.loads(self.ok(first, *self.init_args("n1"), "--json"))
        self.password = created["admin_password"]
        pair_file = self.base / "pair.json"
        pair_file.write_bytes(Path(created["pair_files"][0]).read_bytes())
        pair_file.chmod(0o600)
        self.ok(second, *self.init_args("n2"), "--ha-pair-file", str(pair_file))
        for node in self.nodes:
            self._configure(node)
        self.ok(first, "start")
        self.ok(second, "start")
        self.wait_pair(active=first)

    def wait_pair(self, active: Node, timeout: float = 90) -> None:
        standby = self.other(active)
        wait_for(
            lambda: self.status(active) == "ESC status=0 ESC HA Active Healthy",
            timeout,
            f"{active.name} active: {self.status(active)}\n{self.logs()}",
        )
        self.ok(standby, "replication", "status", "--wait-uptodate", "--timeout", str(timeout))
        wait_for(
            lambda: self.status(standby) == "ESC status=0 ESC HA Standby Healthy",
            timeout,
            f"{standby.name} standby: {self.status(standby)}\n{self.logs()}",
        )

    def access_file(self, name: str) -> Path:
        """The pair access file an upgrade's orchestrator is given (its VIP, the nodes'
        addresses, the admin password in a file beside it): `escadm upgrade --pair`."""
        secret = self.base / f"{name}.password"
        secret.write_text(self.password + "\n")
        secret.chmod(0o600)
        nodes = "".join(
            f'\n[[node]]\nname = "{n.name}"\naddress = "{n.address}"\n' for n in self.nodes
        )
        path = self.base / f"{name}.toml"
        path.write_text(
            f'vip = "{self.vip}"\nport = {API_PORT}\nuser = "admin"\n'
            f'password_file = "{secret.name}"\n{nodes}'
        )
        return path

    def status(self, node: Node) -> str:
        return self.escadm(node, "status", timeout=30).stdout.strip()

    def other(self, node: Node) -> Node:
        return self.nodes[1] if node is self.nodes[0] else self.nodes[0]

    def active(self) -> Node:
        for node in self.nodes:
            if self.status(node).startswith("ESC status=0 ESC HA Active"):
                return node
        raise AssertionError(f"no active node:\n{self.logs()}")

    def by_name(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.api_url,
            auth=("admin", self.password),
            timeout=10,
            trust_env=False,
        )

    def tenants(self) -> set[str]:
        with self.client() as client:
            response = client.get("/v0/tenants")
            response.raise_for_status()
            return {t["name"] for t in response.json()}

    def power_on_and_start(self, node: Node) -> None:
        """Bring back a node the new active fenced, as after a reboot, and start it."""
        with httpx.Client(trust_env=False, timeout=10) as agent:
            headers = {"Authorization": f"Bearer {self.token.read_text().strip()}"}
            agent.post(f"{self.agent_url}/v1/nodes/{node.address}/power-on", headers=headers)
        self.lab.host_up(node.ns)
        self.ok(node, "start", timeout=180)

    def logs(self) -> str:
        out = []
        for node in self.nodes:
            for name in ("escmanager.log", "pgsql.out", "supervisor.log"):
                path = node.home / "log" / name
                if path.exists():
                    tail = "\n".join(path.read_text().splitlines()[-25:])
                    out.append(f"--- {node.name} {name}\n{tail}")
        return "\n".join(out)

    def stop(self) -> None:
        for node in self.nodes:
            self.escadm(node, "stop", timeout=120)
        for process in (self.agent, self.vim_host):
            if process is not None:
                process.terminate()
                process.wait(10)
