"""The local VIM: each VM is a real OS process on this host (the embedded default).

State lives in `<data>/instances/<vm_id>/`: spec.json (what was asked),
state.json (pid, port, start time, written by the VM itself), port,
instance.lock, console.log. VM processes are detached (not children of the
controller), so they outlive a controller crash and are found again here.

A process is only ever signalled after its identity is proven: its pid's
start time matches the one the VM recorded, and its command line names the
instance directory. A reused pid is therefore never mistaken for a VM.
"""

from __future__ import annotations

import fcntl
import http.client
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import psutil

from esc.vim import vnf
from esc.vim.base import (
    InstanceState,
    InstanceStatus,
    UnknownFlavor,
    UnknownImage,
    VimDriver,
    VimError,
    VmSpec,
)

log = logging.getLogger(__name__)

VNF_PROGRAM = Path(vnf.__file__).resolve()
FLAVORS = ("m1.tiny", "m1.small", "m1.medium", "m1.large")
IMAGE_FORMS = "healthy, crash-after:N, unhealthy-after:N, slow-boot:N (N seconds, e.g. 2.5)"
LAUNCH_TIMEOUT = 10.0
STOP_GRACE = 5.0
HEALTH_TIMEOUT = 1.0


class LocalVim(VimDriver):
    name = "local"

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.instances_dir = self.data_dir / "instances"
        self.instances_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)

    # validation -----------------------------------------------------------------

    def validate_image(self, image: str) -> None:
        try:
            vnf.parse_image(image)
        except ValueError:
            raise UnknownImage(
                f"unknown image {image!r}; the local VIM's images are {IMAGE_FORMS}"
            ) from None

    def validate_flavor(self, flavor: str) -> None:
        if flavor not in FLAVORS:
            raise UnknownFlavor(
                f"unknown flavor {flavor!r}; the local VIM's flavors are {', '.join(FLAVORS)}"
            )

    # instance records --------------------------------------------------------------

    def _dir(self, vm_id: str) -> Path:
        if not vm_id or "/" in vm_id or vm_id.startswith("."):
            raise VimError(f"invalid VM id {vm_id!r}")
        return self.instances_dir / vm_id

    def _running(self, directory: Path) -> bool:
        """True when a VM process holds the instance lock."""
        try:
            fd = os.open(directory / "instance.lock", os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        finally:
            os.close(fd)

    def _process(self, directory: Path) -> psutil.Process | None:
        """The VM's process, only if its identity checks out."""
        try:
            state = json.loads((directory / "state.json").read_text())
            proc = psutil.Process(state["pid"])
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            if vnf.process_start_ticks(proc.pid) != state["start_ticks"]:
                return None
            if str(directory) not in " ".join(proc.cmdline()):
                return None
            return proc
        except (OSError, ValueError, KeyError, psutil.Error):
            return None

    def _status(self, vm_id: str, directory: Path) -> InstanceStatus:
        if not (directory / "spec.json").exists():
            return InstanceStatus(vm_id, InstanceState.ABSENT)
        if self._running(directory):
            try:
                port = json.loads((directory / "state.json").read_text())["port"]
            except (OSError, ValueError, KeyError):
                return InstanceStatus(vm_id, InstanceState.RUNNING, None, "starting")
            return InstanceStatus(vm_id, InstanceState.RUNNING, f"http://127.0.0.1:{port}")
        return InstanceStatus(vm_id, InstanceState.STOPPED)

    # life cycle ------------------------------------------------------------------

    def _launch(self, vm_id: str, directory: Path) -> InstanceStatus:
        command = [
            sys.executable,
            "-I",
            "-S",
            str(VNF_PROGRAM),
            "--instance-dir",
            str(directory),
            "--detach",
        ]
        try:
            result = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=LAUNCH_TIMEOUT,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise VimError(
                f"VM {vm_id} did not start within {LAUNCH_TIMEOUT:g} s; "
                f"console: {self._console_tail(directory)}"
            ) from None
        if result.returncode == vnf.EXIT_ALREADY_RUNNING:
            return self._status(vm_id, directory)  # started meanwhile: not a duplicate
        if result.returncode != 0:
            raise VimError(
                f"VM {vm_id} failed to start: {result.stderr.strip()}; "
                f"console: {self._console_tail(directory)}"
            )
        status = self._status(vm_id, directory)
        log.info("VM %s started at %s", vm_id, status.address, extra={"tags": "start_vm"})
        return status

    @staticmethod
    def _console_tail(directory: Path) -> str:
        try:
            return (directory / "console.log").read_text()[-500:].strip() or "(empty)"
        except OSError:
            return "(none)"

    def create_vm(self, spec: VmSpec) -> InstanceStatus:
        self.validate_image(spec.image)
        self.validate_flavor(spec.flavor)
        directory = self._dir(spec.vm_id)
        with self._locks[spec.vm_id]:
            if not (directory / "spec.json").exists():
                directory.mkdir(mode=0o700, exist_ok=True)
                vnf.write_atomic(
                    directory / "spec.json",
                    {
                        "vm_id": spec.vm_id,
                        "name": spec.name,
                        "image": spec.image,
                        "flavor": spec.flavor,
                        "day0_config": spec.day0_config,
                    },
                )
            if self._running(directory):
                return self._status(spec.vm_id, directory)
            return self._launch(spec.vm_id, directory)

    def start_vm(self, vm_id: str) -> InstanceStatus:
        directory = self._dir(vm_id)
        with self._locks[vm_id]:
            if not (directory / "spec.json").exists():
                raise VimError(f"VM {vm_id} does not exist on the local VIM; redeploy it")
            if self._running(directory):
                return self._status(vm_id, directory)
            return self._launch(vm_id, directory)

    def _wait_released(self, directory: Path, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if not self._running(directory):
                return True
            time.sleep(0.02)
        return not self._running(directory)

    def _stop(self, vm_id: str, directory: Path) -> None:
        if not self._running(directory):
            return
        proc = self._process(directory)
        if proc is None:
            # The lock is held but state.json is not (yet) that process's: give a
            # starting VM a moment to record itself before deciding.
            time.sleep(0.2)
            proc = self._process(directory)
        if proc is None:
            if self._running(directory):
                raise VimError(
                    f"VM {vm_id} is running but its process cannot be identified; see {directory}"
                )
            return
        for sig, wait in ((signal.SIGTERM, STOP_GRACE), (signal.SIGKILL, STOP_GRACE)):
            try:
                proc.send_signal(sig)
            except psutil.NoSuchProcess:
                return
            if self._wait_released(directory, wait):
                return
        raise VimError(f"VM {vm_id} (pid {proc.pid}) did not stop after SIGKILL")

    def stop_vm(self, vm_id: str) -> InstanceStatus:
        directory = self._dir(vm_id)
        with self._locks[vm_id]:
            self._stop(vm_id, directory)
            return self._status(vm_id, directory)

    def reboot_vm(self, vm_id: str) -> InstanceStatus:
        directory = self._dir(vm_id)
        with self._locks[vm_id]:
            if not (directory / "spec.json").exists():
                raise VimError(f"VM {vm_id} does not exist on the local VIM; redeploy it")
            self._stop(vm_id, directory)
            return self._launch(vm_id, directory)

    def delete_vm(self, vm_id: str) -> None:
        directory = self._dir(vm_id)
        with self._locks[vm_id]:
            if not directory.exists():
                return
            self._stop(vm_id, directory)
            shutil.rmtree(directory, ignore_errors=True)
            log.info("VM %s deleted", vm_id, extra={"tags": "delete_vm"})
        self._locks.pop(vm_id, None)

    # queries -----------------------------------------------------------------------

    def status(self, vm_id: str) -> InstanceStatus:
        return self._status(vm_id, self._dir(vm_id))

    def is_alive(self, vm_id: str) -> bool:
        status = self.status(vm_id)
        if status.state is not InstanceState.RUNNING or status.address is None:
            return False
        port = int(status.address.rsplit(":", 1)[1])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=HEALTH_TIMEOUT)
        try:
            connection.request("GET", "/health")
            return connection.getresponse().status == 200
        except OSError:
            return False
        finally:
            connection.close()

    def list_instances(self) -> list[str]:
        return sorted(p.name for p in self.instances_dir.iterdir() if p.is_dir())

    def find_vnf_processes(self) -> list[psutil.Process]:
        """Every live VM process of this VIM, whatever its records say."""
        marker = str(self.instances_dir) + os.sep
        found = []
        for proc in psutil.process_iter(["cmdline", "status"]):
            cmdline = proc.info["cmdline"] or []
            if (
                proc.info["status"] != psutil.STATUS_ZOMBIE
                and str(VNF_PROGRAM) in cmdline
                and any(arg.startswith(marker) for arg in cmdline)
            ):
                found.append(proc)
        return found

    def check(self) -> None:
        if not os.access(self.instances_dir, os.W_OK):
            raise VimError(f"local VIM directory {self.instances_dir} is not writable")
