"""An HA pair whose two nodes the lab's host agent deployed from a release's image, as
a VIM deploys ESC's node VMs (`escadm node deploy`): each node a namespace of its own
on the lab's bridge, made by its first boot from its day-0 (escadm init --ha, the
second node joining with the pair file the first one made). The VNFs run on a VIM
host of their own on the lab's first test host, which both nodes reach. What an
upgrade by image starts from; shared by its test and bench/bench_upgrade.py.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from pathlib import Path

import httpx
from esc_pair import wait_for
from lab import Lab, tcp_probe

from esc.ha.labnodes import veth_name
from esc.ha.provider import NodeSpec, UnknownNode
from esc.ha.providers.lab import LabProvider
from esc.upgrade.node_api import NodeApi, NodeApiError

AGENT_PORT = 7700
VIM_PORT = 7800
API_PORT = 8080
DEPLOY_BOUND = 600.0  # seconds, one HA node's deploy on a loaded machine
PAIR_BOUND = 240.0


class DeployedPair:
    """Nodes PREFIX-a and PREFIX-b at .21 and .22 of the lab's net, the VIP at .100,
    the agent on the gateway address. The lab's directory must be mode 0711 (the
    nodes' PostgreSQL crosses it)."""

    def __init__(self, lab: Lab, releases: Path, image: str, kad_vri: int) -> None:
        assert lab.dir is not None
        self.lab = lab
        self.dir = lab.dir
        self.releases = releases
        self.image = image
        self.kad_vri = kad_vri
        net = lab.net.network_address
        self.gateway = str(lab.gateway)
        self.names = (f"{lab.prefix}-a", f"{lab.prefix}-b")
        self.addresses = (str(net + 21), str(net + 22))
        self.vip = str(net + 100)
        self.api_url = f"http://{self.vip}:{API_PORT}"
        self.agent_url = f"http://{self.gateway}:{AGENT_PORT}"
        self.vim_ns = lab.hosts[0].ns
        self.vim_url = f"http://{lab.hosts[0].address}:{VIM_PORT}"
        self.token = self.dir / "agent.token"
        self.vim_token = self.dir / "vim.token"
        self.nodes_dir = self.dir / "nodes"
        self.agent: subprocess.Popen | None = None
        self.vim_host: subprocess.Popen | None = None
        self.provider: LabProvider | None = None
        self.password = ""
        self.pair_file = self.dir / "pair.json"

    # set-up --------------------------------------------------------------------------

    def start(self) -> None:
        for path, text in ((self.token, "deployed-pair-agent"), (self.vim_token, "deployed-vim")):
            path.write_text(f"{text}-token-of-the-lab\n")
            path.chmod(0o600)
        host, port = self.vim_url[7:].split(":")
        command = [sys.executable, "-m", "esc.vim.host", "--dir", str(self.dir / "vim")]
        command += ["--listen", f"{host}:{port}", "--token-file", str(self.vim_token)]
        log = (self.dir / "vimhost.log").open("w")
        self.vim_host = self.lab.popen(self.vim_ns, command, stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: tcp_probe(host, int(port), 0.2) == "open", 30, "the VIM host listens")
        command = [sys.executable, "-m", "esc.ha.labhost", "--listen", self.agent_url[7:]]
        command += ["--state", str(self.dir / "agent.json"), "--token-file", str(self.token)]
        command += ["--bridge", self.lab.bridge, "--nodes-dir", str(self.nodes_dir)]
        command += ["--releases", str(self.releases)]
        log = (self.dir / "agent.log").open("w")
        self.agent = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
        wait_for(
            lambda: tcp_probe(self.gateway, AGENT_PORT, 0.2) == "open", 30, "the agent listens"
        )
        self.provider = LabProvider(self.agent_url, self.token, timeout=30)

    def spec(self, index: int, image: str, ha_pair: str = "") -> NodeSpec:
        return NodeSpec(
            name=self.names[index],
            image=image,
            ip=f"{self.addresses[index]}/24",
            gateway_ip=self.gateway,
            ha_node_list=self.addresses,
            kad_vip=f"{self.vip}/24",
            kad_vif="eth0",
            init_options=(
                ("api-port", str(API_PORT)),
                ("ha-provider", "lab"),
                ("ha-provider-token-file", str(self.token)),
                ("ha-provider-url", self.agent_url),
                ("kad-vri", str(self.kad_vri)),
            ),
            vim_settings=(
                ("driver", "vimhost"),
                ("token_file", str(self.vim_token)),
                ("url", self.vim_url),
            ),
            ha_pair=ha_pair,
        )

    def deploy(self) -> None:
        """Both nodes from the image: the first makes the pair, the second joins it."""
        assert self.provider is not None
        self.provider.deploy(self.spec(0, self.image))
        made = json.loads((self.home(0) / "data" / "first-boot.json").read_text())
        self.password = made["admin_password"]
        self.pair_file.write_bytes(Path(made["pair_files"][0]).read_bytes())
        self.pair_file.chmod(0o600)
        self.provider.deploy(self.spec(1, self.image, self.pair_file.read_text()))
        # The first node took the active role while the second was being made, and
        # fenced it, as an active does with a peer it cannot reach (its first boot went
        # on, cut off): reboot it, as an operator does; it joins as the standby. Had the
        # first one asked before the second existed at the agent, it went FAULT: reboot
        # that one.
        if self.provider.status(self.names[1]).get("power") == "off":
            self.provider.power_off(self.names[1], grace=30)
            self.provider.power_on(self.names[1])
        if self.roles()[self.names[0]].startswith("FAULT"):
            self.provider.power_off(self.names[0], grace=30)
            self.provider.power_on(self.names[0])
        self.wait_pair()

    def redeploy(self) -> None:
        """A new pair in place of this one: both nodes deleted and deployed again from
        the image (a new admin password and pair file)."""
        assert self.provider is not None
        for name in self.names:
            with contextlib.suppress(UnknownNode):
                self.provider.delete(name)
        self.deploy()

    def home(self, index: int) -> Path:
        return self.nodes_dir / self.names[index] / "home"

    def api(self, index: int) -> NodeApi:
        url = f"http://{self.addresses[index]}:{API_PORT}"
        return NodeApi(url, ("admin", self.password), False)

    def roles(self) -> dict[str, str]:
        """Each node's role, healthy or not ("" when it does not answer)."""
        found = {}
        for index, name in enumerate(self.names):
            with self.api(index) as api:
                try:
                    facts = api.facts()
                    found[name] = facts.role + ("" if facts.healthy else " unhealthy")
                except NodeApiError:
                    found[name] = ""
        return found

    def wait_pair(self, timeout: float = PAIR_BOUND) -> None:
        wait_for(
            lambda: sorted(self.roles().values()) == ["ACTIVE", "STANDBY"],
            timeout,
            f"one healthy active and one healthy standby: {self.roles()}\n{self.logs()}",
        )

    def versions(self) -> dict[str, str]:
        found = {}
        for index, name in enumerate(self.names):
            with self.api(index) as api:
                found[name] = api.facts().version
        return found

    def access_file(self, name: str) -> Path:
        """The pair access file of an upgrade by image: the VIP, the nodes by their
        names at the provider, the admin password and the pair file beside it, the
        lab's agent as the node provider."""
        secret = self.dir / f"{name}.password"
        secret.write_text(self.password + "\n")
        secret.chmod(0o600)
        nodes = "".join(
            f'\n[[node]]\nname = "{n}"\naddress = "{a}"\n'
            for n, a in zip(self.names, self.addresses, strict=True)
        )
        path = self.dir / f"{name}.toml"
        path.write_text(
            f'vip = "{self.vip}"\nport = {API_PORT}\nuser = "admin"\n'
            f'password_file = "{secret.name}"\nha_pair_file = "{self.pair_file.name}"\n'
            f'{nodes}\n[provider]\nname = "local"\nagent = "{self.agent_url}"\n'
            f'agent_token_file = "{self.token.name}"\n'
        )
        return path

    # the pair's work -------------------------------------------------------------------

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.api_url, auth=("admin", self.password), timeout=10, trust_env=False
        )

    def tenants(self) -> set[str]:
        with self.client() as client:
            response = client.get("/v0/tenants")
            response.raise_for_status()
            return {t["name"] for t in response.json()}

    def vm_pids(self) -> set[int]:
        assert self.vim_host is not None
        return {p for p in self.lab.pids(self.vim_ns) if p != self.vim_host.pid}

    def logs(self) -> str:
        out = []
        for index, name in enumerate(self.names):
            files = [self.nodes_dir / name / "boot.log"]
            files += [self.home(index) / "log" / f for f in ("escmanager.log", "pgsql.out")]
            for path in files:
                if path.exists():
                    tail = "\n".join(path.read_text(errors="replace").splitlines()[-20:])
                    out.append(f"--- {name} {path.name}\n{tail}")
            log = self.home(index) / "log" / "escmanager.log"
            if log.exists():  # the errors of the whole run, with their tracebacks
                errors = [
                    line
                    for line in log.read_text(errors="replace").splitlines()
                    if "loglevel=ERROR" in line or not line.startswith("[date=")
                ]
                out.append(f"--- {name} errors\n" + "\n".join(errors[:60]))
        agent = self.dir / "agent.log"
        if agent.exists():
            out.append("--- agent\n" + "\n".join(agent.read_text().splitlines()[-15:]))
        return "\n".join(out)

    # tear-down -------------------------------------------------------------------------

    def stop(self) -> None:
        if self.provider is not None:
            for name in self.names:
                try:
                    self.provider.delete(name)
                except UnknownNode:
                    pass
                except Exception as exc:  # the agent gone: the namespaces go below
                    print(f"delete {name}: {exc}", file=sys.stderr)
            self.provider.close()
        for process in (self.agent, self.vim_host):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()
        # What a failed deploy may have left of the nodes.
        for name in self.names:
            pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
            for pid in pids.stdout.split():
                subprocess.run(["kill", "-9", pid], capture_output=True)
            subprocess.run(["ip", "link", "del", veth_name(name)], capture_output=True)
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
