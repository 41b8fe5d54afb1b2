"""govmomi's vCenter simulator (tests/vim/vcsim/main.go, built by scripts/vim-targets/vmware)
run as a process for the VMware driver's tests, with an observer's own pyVmomi session
that sees vCenter as it is, bypassing the driver.

One simulator serves a whole test module (`shared`): it starts in well under a second,
but each test works under a controller id of its own, so tests never see each other's VMs.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import select
import signal
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import need
from pyVim.connect import Disconnect, SmartConnect
from pyVim.task import WaitForTask
from pyVmomi import vim

from esc.config import VmwareSettings
from esc.vim.vmware import VmwareVim

ROOT = Path(__file__).parents[2]
BINARY = ROOT / ".venv" / "vcsim" / "vcsim"
USER = "esc@vsphere.local"
# What the simulator's inventory (simulator.VPX) holds, and what start() adds to it.
DATACENTER = "DC0"
CLUSTER = "DC0_C0"
STANDALONE = "DC0_H0"
NETWORK = "VM Network"
PORT_GROUP = "DC0_DVPG0"
SOURCE_VM = "DC0_C0_RP0_VM0"
IMAGE = "vnf-image"  # a template in the datacenter's VM folder
FOLDER_IMAGE = "folder-image"  # a plain VM in the folder IMAGES_FOLDER
IMAGES_FOLDER = "images"
# Real vCenter's words when admission control refuses a power-on.
QUOTA_MESSAGE = (
    "The available Memory resources in the parent resource pool are insufficient for the operation."
)
_KEY = pytest.StashKey["Vcsim"]()


def availability() -> str | None:
    if not BINARY.is_file():
        return f"the vCenter simulator {BINARY} is not built: run scripts/vim-targets/vmware"
    return None


class Vcsim:
    """One simulator process: its address, its observer session, its faults."""

    def __init__(
        self, root: Path, *, datastores: int = 2, tls: tuple[Path, Path] | None = None
    ) -> None:
        self.root = root
        self.datastores = datastores
        self.tls = tls
        self.password = secrets.token_hex(12)
        self.password_file = root / "vcenter.password"
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.si: Any = None
        self.started_in = 0.0

    # the process -----------------------------------------------------------------------

    def start(self) -> None:
        begun = time.monotonic()
        self.root.mkdir(parents=True, exist_ok=True)
        self.password_file.write_text(self.password + "\n")
        self.password_file.chmod(0o600)
        command = [str(BINARY), "-listen", "127.0.0.1:0", "-username", USER]
        command += ["-password", self.password, "-datastores", str(self.datastores)]
        if self.tls:
            command += ["-tls-cert", str(self.tls[0]), "-tls-key", str(self.tls[1])]
        log = self.root / "vcsim.log"
        self.proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=log.open("ab"),
            text=True,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = self.proc.stdout.readline() if ready else ""
        assert line, f"the vCenter simulator did not start: {log.read_text()[-2000:]}"
        self.port = int(json.loads(line)["url"].rsplit(":", 1)[1].split("/")[0])
        self.si = self._connect()
        self._add_images()
        self.started_in = time.monotonic() - begun

    def stop(self) -> None:
        if self.si is not None:
            with contextlib.suppress(Exception):
                Disconnect(self.si)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def _connect(self) -> Any:
        import ssl

        if self.tls:
            context = ssl.create_default_context(cafile=str(self.tls[0]))
            return SmartConnect(
                host="127.0.0.1", port=self.port, user=USER, pwd=self.password, sslContext=context
            )
        return SmartConnect(
            host="127.0.0.1", port=self.port, user=USER, pwd=self.password, protocol="http"
        )

    @property
    def content(self) -> Any:
        return self.si.RetrieveContent()

    @property
    def datacenter(self) -> Any:
        return self.content.rootFolder.childEntity[0]

    def _add_images(self) -> None:
        """Make the images the tests clone: a template, and a plain VM in a folder."""
        dc = self.datacenter
        source = self.vm_named(SOURCE_VM)
        pool = self.compute(CLUSTER).resourcePool
        location = vim.vm.RelocateSpec(pool=pool)
        spec = vim.vm.CloneSpec(location=location, template=True, powerOn=False)
        WaitForTask(source.CloneVM_Task(folder=dc.vmFolder, name=IMAGE, spec=spec))
        folder = dc.vmFolder.CreateFolder(IMAGES_FOLDER)
        spec = vim.vm.CloneSpec(location=location, template=False, powerOn=False)
        WaitForTask(source.CloneVM_Task(folder=folder, name=FOLDER_IMAGE, spec=spec))

    # the driver's view ------------------------------------------------------------------

    def settings(self, **overrides: Any) -> VmwareSettings:
        values: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": self.port,
            "protocol": "https" if self.tls else "http",
            "user": USER,
            "password_file": self.password_file.name,
            "timeout": 30.0,
            "request_timeout": 10.0,
            "shutdown_timeout": 5.0,
        }
        if self.tls:
            values["cacert"] = str(self.tls[0])
        values.update(overrides)
        return VmwareSettings.model_validate(values)

    def driver(self, controller_id: str = "", **overrides: Any) -> VmwareVim:
        vim_driver = VmwareVim(self.settings(**overrides), self.root)
        vim_driver.controller_id = controller_id or f"ctl-{uuid.uuid4().hex[:8]}"
        return vim_driver

    # faults -----------------------------------------------------------------------------

    def _control(self, method: str, path: str, body: dict | None = None) -> bytes:
        scheme = "https" if self.tls else "http"
        request = urllib.request.Request(
            f"{scheme}://127.0.0.1:{self.port}/esc-test/{path}",
            data=json.dumps(body).encode() if body is not None else None,
            method=method,
        )
        context = None
        if self.tls:
            import ssl

            context = ssl.create_default_context(cafile=str(self.tls[0]))
        with urllib.request.urlopen(request, timeout=5, context=context) as answer:
            assert answer.status in (200, 204)
            return answer.read()

    def fail_task(self, method: str, fault: str, message: str = "", times: int = 1) -> None:
        """The next `times` calls of the task method `method` start a task that fails with
        the vim fault `fault` and `message`, as vCenter fails one."""
        body = {"method": method, "fault": fault, "message": message, "times": times}
        self._control("POST", "faults", body)

    def fail_http(self, method: str = "", status: int = 503, times: int = 1) -> None:
        """The next `times` SOAP calls of `method` (any when empty) get HTTP `status`."""
        self._control("POST", "faults", {"method": method, "status": status, "times": times})

    def clear_faults(self) -> None:
        self._control("DELETE", "faults")

    def pending_faults(self) -> list[dict]:
        return json.loads(self._control("GET", "faults")) or []

    def end_sessions(self) -> None:
        """Terminate every session but the observer's, as vCenter does when they expire."""
        manager = self.content.sessionManager
        own = manager.currentSession.key
        others = [s.key for s in manager.sessionList if s.key != own]
        if others:
            manager.TerminateSession(others)

    def guest_tools(self, running: bool) -> None:
        """Whether VMs powered on from now on report VMware Tools running."""
        self._control("PUT", "guest-tools", {"running": running})

    # the observer's view ----------------------------------------------------------------

    def vm_named(self, name: str) -> Any:
        vm = self.content.searchIndex.FindChild(self.datacenter.vmFolder, name)
        if vm is None:
            folder = self.content.searchIndex.FindChild(self.datacenter.vmFolder, IMAGES_FOLDER)
            vm = self.content.searchIndex.FindChild(folder, name) if folder else None
        return vm

    def compute(self, name: str) -> Any:
        return next(c for c in self.datacenter.hostFolder.childEntity if c.name == name)

    def all_vms(self) -> list[Any]:
        view = self.content.viewManager.CreateContainerView(
            self.datacenter.vmFolder, [vim.VirtualMachine], True
        )
        try:
            return list(view.view)
        finally:
            view.Destroy()

    def options(self, vm: Any) -> dict[str, str]:
        return {o.key: str(o.value) for o in vm.config.extraConfig}

    def vms_of(self, controller_id: str) -> dict[str, Any]:
        """This controller's VMs by VM id, as their extraConfig tags them."""
        found = {}
        for vm in self.all_vms():
            options = self.options(vm)
            if options.get("esc.controller") == controller_id and "esc.vm_id" in options:
                found[options["esc.vm_id"]] = vm
        return found

    def put_vm(self, name: str, options: dict[str, str] | None = None) -> Any:
        """A running VM cloned from the template bypassing the driver (with `options` in its
        extraConfig, none by default), as another tool makes one."""
        config = vim.vm.ConfigSpec(
            extraConfig=[vim.option.OptionValue(key=k, value=v) for k, v in (options or {}).items()]
        )
        location = vim.vm.RelocateSpec(pool=self.compute(CLUSTER).resourcePool)
        spec = vim.vm.CloneSpec(location=location, config=config, powerOn=False)
        task = self.vm_named(IMAGE).CloneVM_Task(
            folder=self.datacenter.vmFolder, name=name, spec=spec
        )
        WaitForTask(task)
        vm = task.info.result
        WaitForTask(vm.PowerOnVM_Task())
        return vm

    def destroy(self, vm: Any) -> None:
        with contextlib.suppress(vim.fault.InvalidPowerState):
            WaitForTask(vm.PowerOffVM_Task())
        WaitForTask(vm.Destroy_Task())

    def events(self, vm: Any) -> list[str]:
        """The names of vCenter's events about `vm`, oldest first."""
        spec = vim.event.EventFilterSpec(
            entity=vim.event.EventFilterSpec.ByEntity(entity=vm, recursion="self"),
            maxCount=1000,  # vCenter answers the latest 10 otherwise
        )
        found = self.content.eventManager.QueryEvents(spec)
        return [type(e).__name__.rsplit(".", 1)[-1] for e in sorted(found, key=lambda e: e.key)]


def shared(request: pytest.FixtureRequest) -> Vcsim:
    """The simulator of the requesting test's module: started at its first use, stopped
    when the module's last test is done."""
    need(availability())
    module = request.node.getparent(pytest.Module)
    assert module is not None
    simulator = module.stash.get(_KEY, None)
    if simulator is None:
        factory: pytest.TempPathFactory = request.getfixturevalue("tmp_path_factory")
        root = factory.mktemp("vcsim")
        simulator = Vcsim(root)
        simulator.start()
        module.stash[_KEY] = simulator
        module.addfinalizer(simulator.stop)
    return simulator
