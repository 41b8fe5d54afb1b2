"""The VIM host: the local VIM served over HTTP from a host of its own, and the
vimhost driver that controllers use to reach it.

The host runs as a real process on a loopback address other than 127.0.0.1
(127.0.0.2), so a VM found answering there proves it listens on the host's
address, not on the controller's loopback.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import tomli_w
from conftest import ESCADM, escadm, free_port, live_vm_processes, monitored_descriptor
from vim_host_process import HOST_IP, TOKEN, VimHostProcess, wait_until, write_token

from esc.config import NodeHome, VimSettings
from esc.monitor.liveness import vm_is_up
from esc.monitor.probe import HttpProbe, ProbeError
from esc.vim import host as host_service
from esc.vim.base import (
    InstanceState,
    PermanentVimError,
    TransientVimError,
    UnknownFlavor,
    UnknownImage,
    VmSpec,
    load_driver,
)
from esc.vim.vimhost import VimHostDriver


@pytest.fixture
def vim_host(tmp_path: Path) -> Iterator[VimHostProcess]:
    host = VimHostProcess(
        tmp_path / "vimhost", write_token(tmp_path / "vimhost.token"), tmp_path / "vimhost.log"
    )
    host.start()
    try:
        yield host
    finally:
        host.clean_up()


def spec(vm_id: str = "vm-1", image: str = "healthy") -> VmSpec:
    return VmSpec(vm_id, f"name-{vm_id}", image, "m1.tiny", {"app.conf": "x = 1\n"})


def probe(address: str, path: str = "/health") -> tuple[int, object]:
    """One poll as MONA makes it (esc.monitor.probe)."""

    async def poll() -> tuple[int, object]:
        connection = HttpProbe(address)
        try:
            return await connection.get_json(path, 2.0)
        finally:
            connection.close()

    return asyncio.run(poll())


def answers(address: str) -> bool:
    try:
        return probe(address)[0] == 200
    except ProbeError:
        return False


# the driver against a real host -------------------------------------------------------------


def test_the_driver_runs_the_vm_life_cycle_on_the_host(
    vim_host: VimHostProcess, tmp_path: Path
) -> None:
    settings = VimSettings(driver="vimhost", url=vim_host.url, token_file="vimhost.token")
    vim = load_driver("vimhost", tmp_path / "unused", settings, tmp_path)
    assert isinstance(vim, VimHostDriver) and vim.name == "vimhost"
    vim.check()
    vim.validate_image("crash-after:2.5")
    vim.validate_flavor("m1.large")

    created = vim.create_vm(spec())
    assert created.state is InstanceState.RUNNING
    assert created.address is not None and created.address.startswith(f"http://{HOST_IP}:")
    assert vim.create_vm(spec()) == created  # idempotent: the same VM, no second process
    (pid,) = vim_host.vnf_pids()
    vnf = psutil.Process(pid)
    # Started by the host, detached from it: neither the host's nor this test's child.
    assert vnf.ppid() not in (os.getpid(), vim_host.proc.pid)
    assert str(vim_host.directory) in " ".join(vnf.cmdline())
    assert vim.list_instances() == ["vm-1"]
    assert vim.status("vm-1") == created
    assert vm_is_up(vim.status("vm-1"))

    stopped = vim.stop_vm("vm-1")
    assert stopped.state is InstanceState.STOPPED and stopped.address is None
    assert not vm_is_up(vim.status("vm-1")) and vim_host.vnf_pids() == set()
    assert vim.start_vm("vm-1") == created  # the same address after a restart
    assert vm_is_up(vim.status("vm-1"))
    rebooted = vim.reboot_vm("vm-1")
    assert rebooted.state is InstanceState.RUNNING and vim_host.vnf_pids() - {pid}

    vim.delete_vm("vm-1")
    assert vim.status("vm-1").state is InstanceState.ABSENT
    assert vim.list_instances() == [] and vim_host.vnf_pids() == set()
    vim.delete_vm("vm-1")  # idempotent
    assert vim.stop_vm("vm-1").state is InstanceState.ABSENT
    assert not vm_is_up(vim.status("vm-1"))


def test_refusals_keep_the_local_vims_kinds_and_words(vim_host: VimHostProcess) -> None:
    vim = vim_host.driver()
    with pytest.raises(UnknownImage, match=r"unknown image 'ubuntu'.*healthy, crash-after:N"):
        vim.create_vm(spec(image="ubuntu"))
    with pytest.raises(UnknownFlavor, match=r"unknown flavor 'x9'.*m1\.tiny"):
        vim.validate_flavor("x9")
    with pytest.raises(PermanentVimError, match="VM ghost does not exist"):
        vim.start_vm("ghost")
    with pytest.raises(PermanentVimError, match="invalid VM id"):
        vim.status("../escape")
    assert vim.list_instances() == []


def test_a_vm_answers_monas_probes_on_the_hosts_address(vim_host: VimHostProcess) -> None:
    vim = vim_host.driver()
    address = vim.create_vm(spec()).address
    assert address is not None
    assert probe(address) == (200, {"status": "alive", "vm_id": "vm-1", "name": "name-vm-1"})
    assert probe(address, "/metrics")[1] == {"load": 0.0, "vm_id": "vm-1", "name": "name-vm-1"}
    # Bound to the host's address only: the controller's own loopback has nothing there.
    port = address.rsplit(":", 1)[1]
    with pytest.raises(ProbeError):
        probe(f"http://127.0.0.1:{port}")


def test_the_host_tells_a_controller_of_an_older_release_whether_a_vm_is_alive(
    vim_host: VimHostProcess,
) -> None:
    # Controllers before 1.3 ask the host itself (GET /v1/vms/ID/alive) rather than the
    # VM: a pair upgraded from one keeps its VIM host throughout.
    vim = vim_host.driver()
    vim.create_vm(spec())
    headers = {"Authorization": f"Bearer {TOKEN}"}

    def alive(vm_id: str) -> object:
        answer = httpx.get(f"{vim_host.url}/v1/vms/{vm_id}/alive", headers=headers)
        assert answer.status_code == 200, answer.text
        return answer.json()

    assert alive("vm-1") == {"alive": True}
    vim.stop_vm("vm-1")
    assert alive("vm-1") == {"alive": False}
    assert alive("ghost") == {"alive": False}


def test_vms_outlive_a_killed_controller_and_a_new_driver_manages_them(
    vim_host: VimHostProcess,
) -> None:
    controller = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import time
                from pathlib import Path
                from esc.vim.base import VmSpec
                from esc.vim.vimhost import VimHostDriver
                vim = VimHostDriver({vim_host.url!r}, Path({str(vim_host.token_file)!r}))
                for n in (1, 2):
                    print(vim.create_vm(VmSpec(f"vm-{{n}}", "n", "healthy", "m1.tiny")).address)
                print(flush=True)
                time.sleep(60)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert controller.stdout is not None
        addresses = [controller.stdout.readline().strip() for _ in range(2)]
    finally:
        controller.kill()  # SIGKILL: the controller's node dies
        controller.wait()
    assert all(a.startswith(f"http://{HOST_IP}:") for a in addresses)
    assert len(vim_host.vnf_pids()) == 2
    assert [probe(a)[0] for a in addresses] == [200, 200]

    other = vim_host.driver()  # the other node's controller
    assert other.list_instances() == ["vm-1", "vm-2"]
    assert [other.status(v).address for v in ("vm-1", "vm-2")] == addresses
    assert vm_is_up(other.status("vm-1")) and vm_is_up(other.status("vm-2"))
    other.delete_vm("vm-1")
    other.delete_vm("vm-2")
    assert vim_host.vnf_pids() == set()


def test_host_down_is_transient_and_vms_outlive_the_host(vim_host: VimHostProcess) -> None:
    vim = vim_host.driver()
    address = vim.create_vm(spec()).address
    assert address is not None
    vim_host.kill()
    assert probe(address)[0] == 200  # the VM runs on without its host service
    with pytest.raises(TransientVimError, match=r"cannot be reached.*Connection refused"):
        vim.status("vm-1")
    with pytest.raises(TransientVimError, match=r"python -m esc\.vim\.host"):
        vim.create_vm(spec("vm-2"))
    # Restarted on the same address, the host finds its VM; the same driver goes on.
    vim_host.start(listen=vim_host.url.removeprefix("http://"))
    assert vim.status("vm-1").address == address
    assert vim.list_instances() == ["vm-1"]


def test_a_wrong_or_unusable_token_is_a_clear_permanent_error(
    vim_host: VimHostProcess, tmp_path: Path
) -> None:
    wrong = vim_host.driver(write_token(tmp_path / "wrong.token", "f" * 64))
    with pytest.raises(PermanentVimError, match=r"refused the token of .*wrong\.token"):
        wrong.create_vm(spec())
    with pytest.raises(PermanentVimError, match="refused the token"):
        wrong.check()
    readable = vim_host.driver(write_token(tmp_path / "open.token", mode=0o644))
    with pytest.raises(PermanentVimError, match=r"may be read by other users.*chmod 600"):
        readable.check()
    missing = vim_host.driver(tmp_path / "absent.token")
    with pytest.raises(PermanentVimError, match=r"cannot read .*absent\.token.*token_file"):
        missing.check()
    assert vim_host.driver().list_instances() == []  # nothing was created
    log = vim_host.log.read_text()
    assert "wrong or missing token" in log
    assert TOKEN not in log and "f" * 64 not in log


class _Misbehaving(http.server.BaseHTTPRequestHandler):
    """A server that is no working VIM host: answers 500, HTML, or nothing at all."""

    def do_GET(self) -> None:
        if self.path.endswith("/vms/vm-1"):
            time.sleep(2)  # slower than the driver's timeout
            return
        if self.path.endswith("/check"):
            body, status, kind = b"<html>a web server</html>", 200, "text/html"
        else:
            body, status, kind = b'{"error": "disk on fire"}', 500, "application/json"
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_5xx_and_timeouts_are_transient_other_services_permanent(tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Misbehaving)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        vim = VimHostDriver(url, write_token(tmp_path / "t"), timeout=0.5)
        with pytest.raises(TransientVimError, match="failed to list its VMs: disk on fire"):
            vim.list_instances()
        with pytest.raises(TransientVimError, match=r"did not answer within 0\.5 s"):
            vim.status("vm-1")
        with pytest.raises(PermanentVimError, match=r"not as a VIM host does: check \[vim\] url"):
            vim.check()
    finally:
        server.shutdown()
        server.server_close()


def test_the_host_refuses_bad_options_naming_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    token = write_token(tmp_path / "t")
    base = ["--dir", str(tmp_path / "d"), "--token-file", str(token)]
    cases = [
        (["--listen", "vimhost:8470"], "give IP:PORT"),
        (["--listen", "0.0.0.0:8470"], "give --vm-address IP"),
        (["--listen", f"{HOST_IP}:0", "--vm-address", "me"], "is not an IP address"),
    ]
    for extra, said in cases:
        assert host_service.main([*base, *extra]) == host_service.EXIT_USAGE
        assert said in capsys.readouterr().err
    monkeypatch.delenv(host_service.TOKEN_ENV, raising=False)
    no_token = ["--dir", str(tmp_path / "d"), "--listen", f"{HOST_IP}:0"]
    assert host_service.main(no_token) == host_service.EXIT_USAGE
    assert "give --token-file FILE or set $ESC_VIM_TOKEN" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind((HOST_IP, 0))
        taken.listen()
        busy = f"{HOST_IP}:{taken.getsockname()[1]}"
        assert host_service.main([*base, "--listen", busy]) == host_service.EXIT_USAGE
    assert "cannot listen on" in capsys.readouterr().err


def test_the_vimhost_settings_name_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(PermanentVimError, match=r"needs \[vim\] url and token_file"):
        load_driver("vimhost", tmp_path)
    with pytest.raises(ValueError, match=r'needs url = "http://HOST:PORT"'):
        VimSettings(driver="vimhost", url="vimhost:8470", token_file="t")
    with pytest.raises(ValueError, match="needs token_file"):
        VimSettings(driver="vimhost", url="http://127.0.0.2:8470")


# a real controller node on the VIM host -----------------------------------------------------


class NodeProcess:
    """`escadm run`: a whole controller node in one process, killed as its host dies."""

    def __init__(self, home: Path, admin_password: str) -> None:
        self.home = home
        self.proc: subprocess.Popen | None = None
        port = tomllib.loads((home / "esc.toml").read_text())["api"]["port"]
        self.api = httpx.Client(
            base_url=f"http://127.0.0.1:{port}", auth=("admin", admin_password), timeout=10
        )

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [ESCADM, "run", "--home", str(self.home)],
            stdout=(self.home / "log" / "escadm-run.out").open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        assert wait_until(self._ready, 60), (self.home / "log" / "escadm-run.out").read_text()

    def _ready(self) -> bool:
        try:
            return self.api.get("/esc/health").status_code == 200
        except httpx.TransportError:
            return False

    def vms(self, deployment: str) -> list[dict]:
        shown = self.api.get(f"/v0/tenants/mon/deployments/{deployment}").json()
        return [vm for group in shown["vm_groups"] for vm in group["vms"]]

    def recoveries(self) -> list[str]:
        found = self.api.get("/v0/transactions", params={"limit": 100}).json()
        return [tx["state"] for tx in found if tx["operation"] == "VM_RECOVER"]

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def node_on_vim_host(vim_host: VimHostProcess, tmp_path: Path) -> Iterator[NodeProcess]:
    """A node made by `escadm init` whose [vim] is the VIM host."""
    home = tmp_path / "home"
    made = escadm("init", "--api-port", str(free_port()), "--json", home=home, check=True)
    config_file = home / "esc.toml"
    config = tomllib.loads(config_file.read_text())
    write_token(home / "vimhost.token")
    config["vim"] = {"driver": "vimhost", "url": vim_host.url, "token_file": "vimhost.token"}
    config_file.write_text(tomli_w.dumps(config))
    node = NodeProcess(home, json.loads(made.stdout)["admin_password"])
    node.start()
    try:
        yield node
    finally:
        node.kill()
        node.api.close()


@pytest.mark.slow
def test_a_node_deploys_on_the_vim_host_monitors_and_undeploys(
    vim_host: VimHostProcess, node_on_vim_host: NodeProcess, tmp_path: Path
) -> None:
    home = node_on_vim_host.home
    descriptor = tmp_path / "mon.yaml"
    descriptor.write_text(monitored_descriptor("onhost", poll=0.3, wait=0.5))
    deployed = escadm("deployment", "deploy", str(descriptor), home=home, check=True)
    assert "DEPLOY mon/onhost: SUCCESS" in deployed.stdout

    (vm,) = node_on_vim_host.vms("onhost")
    assert vm["address"].startswith(f"http://{HOST_IP}:")
    (pid,) = vim_host.vnf_pids()
    assert live_vm_processes(NodeHome(home)) == []  # nothing runs on the controller's node

    # MONA probes the VM on the host: killed there, it is found dead and rebooted.
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: vim_host.vnf_pids() - {pid} and answers(vm["address"]), 20), (
        "MONA did not recover the VM at its address"
    )
    assert wait_until(lambda: node_on_vim_host.recoveries() == ["SUCCESS"], 20)
    assert [v["address"] for v in node_on_vim_host.vms("onhost")] == [vm["address"]]

    # The controller's node dies: the VM runs on; a controller started on the same
    # database (as the standby takes over) manages it.
    (pid,) = vim_host.vnf_pids()
    node_on_vim_host.kill()
    assert vim_host.vnf_pids() == {pid} and answers(vm["address"])
    node_on_vim_host.start()
    assert vim_host.vnf_pids() == {pid}  # taken over as it is, not recreated
    undeployed = escadm("deployment", "undeploy", "onhost", home=home, check=True)
    assert "UNDEPLOY mon/onhost: SUCCESS" in undeployed.stdout
    assert vim_host.vnf_pids() == set()
    assert vim_host.driver().list_instances() == []
