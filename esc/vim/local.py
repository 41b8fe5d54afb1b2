"""The local VIM: each VM is a real OS process on this host (the embedded default).

State lives in `<data>/instances/<vm_id>/`: spec.json (what was asked),
state.json (pid, address, port, start time: written by the VM itself), port (kept
across restarts so a VM keeps its address), instance.lock, console.log.
VM processes are detached (not children of the controller), so they outlive
a controller crash and are found again here.

"Running" means a VNF holds the instance lock: no pid is trusted for that.
A process is signalled only once its identity is proven: its start time
matches the one the VM recorded and its command line names the instance
directory; a reused pid is never mistaken for a VM.

VMs listen on 127.0.0.1 (the controller's own host) unless the driver is
given another address: a VIM host (esc.vim.host) gives its own, so monitors
on other hosts reach them.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from esc.files import lock_held
from esc.vim import vnf
from esc.vim.base import (
    VM_ID,
    InstanceState,
    InstanceStatus,
    PermanentVimError,
    TransientVimError,
    UnknownFlavor,
    UnknownImage,
    VimDriver,
    VmSpec,
    check_vm_id,
)

log = logging.getLogger(__name__)

VNF_PROGRAM = Path(vnf.__file__).resolve()
FLAVORS = ("m1.tiny", "m1.small", "m1.medium", "m1.large")
IMAGE_FORMS = (
    "healthy, crash-after:N, unhealthy-after:N, slow-boot:N (N: seconds >= 0, e.g. 3 or 2.5)"
)
LAUNCH_TIMEOUT = 10.0
STOP_GRACE = 5.0
# How long a lock held by no identifiable VNF may take to go away before stop gives up.
UNKNOWN_HOLDER_WAIT = 1.0
TOMBSTONE_PREFIX = ".deleting-"


def instance_dir_arg(cmdline: list[str]) -> str | None:
    """The --instance-dir of a vnf.py command line; None for any other command.

    The program is matched by name, not by full path: VMs started by another
    installation of ESC (before an upgrade) are still VMs of this VIM.
    """
    if not any(os.path.basename(arg) == "vnf.py" for arg in cmdline[:4]):
        return None
    for i, arg in enumerate(cmdline):
        if arg == "--instance-dir" and i + 1 < len(cmdline):
            return cmdline[i + 1]
        if arg.startswith("--instance-dir="):
            return arg.partition("=")[2]
    return None


def validate_image(image: str, vim: str) -> None:
    """Refuse an image the local VIM's VNF program cannot behave as, naming the known ones;
    `vim` names the VIM in the message (a VIM that runs the same images says its own)."""
    try:
        vnf.parse_image(image)
    except ValueError:
        raise UnknownImage(
            f"unknown image {image!r}; the {vim}'s images are {IMAGE_FORMS}"
        ) from None


def validate_flavor(flavor: str, vim: str) -> None:
    """Refuse a flavor not in the local VIM's catalogue, naming the known ones."""
    if flavor not in FLAVORS:
        raise UnknownFlavor(
            f"unknown flavor {flavor!r}; the {vim}'s flavors are {', '.join(FLAVORS)}"
        )


class _VmLocks:
    """One threading lock per VM id, dropped when nobody uses it (ids are not reused)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, list[int]]] = {}

    @contextlib.contextmanager
    def hold(self, vm_id: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.setdefault(vm_id, (threading.Lock(), [0]))
            users[0] += 1
        try:
            with lock:
                yield
        finally:
            with self._guard:
                users[0] -= 1
                if users[0] == 0:
                    del self._locks[vm_id]


# File-system errors that pass by themselves (a busy or overloaded host): worth a retry.
TRANSIENT_ERRNOS = frozenset({errno.EAGAIN, errno.EBUSY, errno.EINTR, errno.ETIMEDOUT})


@contextlib.contextmanager
def _os_errors(action: str) -> Iterator[None]:
    """File-system failures reach the controller as VimError, saying what failed: transient
    for a busy host, permanent for what a person must fix (permissions, a full disk)."""
    try:
        yield
    except OSError as exc:
        kind = TransientVimError if exc.errno in TRANSIENT_ERRNOS else PermanentVimError
        raise kind(f"local VIM could not {action}: {exc}") from exc


class LocalVim(VimDriver):
    name = "local"

    def __init__(self, data_dir: Path, vm_address: str = vnf.DEFAULT_ADDRESS) -> None:
        # Absolute: the path goes on VNF command lines, where processes are matched by it.
        self.data_dir = Path(data_dir).absolute()
        self.vm_address = vm_address
        self.instances_dir = self.data_dir / "instances"
        self._vm_locks = _VmLocks()
        try:
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.instances_dir.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            # Not fatal here: check() reports it, so `escadm health` can say what is wrong.
            log.error("local VIM directory %s is not usable: %s", self.instances_dir, exc)

    # images and flavors -----------------------------------------------------------------

    def validate_image(self, image: str) -> None:
        validate_image(image, "local VIM")

    def validate_flavor(self, flavor: str) -> None:
        validate_flavor(flavor, "local VIM")

    # life cycle -------------------------------------------------------------------------

    def create_vm(self, spec: VmSpec) -> InstanceStatus:
        self.validate_image(spec.image)
        self.validate_flavor(spec.flavor)
        directory = self._dir(spec.vm_id)
        with self._vm_locks.hold(spec.vm_id), _os_errors(f"create VM {spec.vm_id}"):
            if self._running(directory):
                return self._status(spec.vm_id, directory)
            if self._read_spec(directory) is None:
                directory.mkdir(mode=0o700, exist_ok=True)
                # Durable: after a power loss the definition must be whole to restart the VM.
                vnf.write_atomic(directory / "spec.json", self._spec_record(spec), durable=True)
            return self._launch(spec.vm_id, directory)

    def start_vm(self, vm_id: str) -> InstanceStatus:
        directory = self._dir(vm_id)
        with self._vm_locks.hold(vm_id), _os_errors(f"start VM {vm_id}"):
            self._require_defined(vm_id, directory)
            if self._running(directory):
                return self._status(vm_id, directory)
            return self._launch(vm_id, directory)

    def stop_vm(self, vm_id: str) -> InstanceStatus:
        directory = self._dir(vm_id)
        with self._vm_locks.hold(vm_id), _os_errors(f"stop VM {vm_id}"):
            self._stop(vm_id, directory)
            return self._status(vm_id, directory)

    def reboot_vm(self, vm_id: str) -> InstanceStatus:
        directory = self._dir(vm_id)
        with self._vm_locks.hold(vm_id), _os_errors(f"reboot VM {vm_id}"):
            self._require_defined(vm_id, directory)
            self._stop(vm_id, directory)
            return self._launch(vm_id, directory)

    def delete_vm(self, vm_id: str) -> None:
        directory = self._dir(vm_id)
        with self._vm_locks.hold(vm_id), _os_errors(f"delete VM {vm_id}"):
            if not directory.exists():
                return
            self._stop(vm_id, directory)
            # Renamed first, so a half-finished removal never looks like an instance.
            tombstone = self.instances_dir / f"{TOMBSTONE_PREFIX}{vm_id}-{uuid.uuid4().hex[:8]}"
            directory.rename(tombstone)
            # Once renamed the VM is gone; what a failed removal leaves is swept at next start.
            shutil.rmtree(tombstone, ignore_errors=True)
            log.info("VM %s deleted", vm_id, extra={"tags": "delete_vm"})

    # queries ----------------------------------------------------------------------------

    def status(self, vm_id: str) -> InstanceStatus:
        directory = self._dir(vm_id)
        with _os_errors(f"read the status of VM {vm_id}"):
            return self._status(vm_id, directory)

    def list_instances(self) -> list[str]:
        with _os_errors(f"list {self.instances_dir}"):
            return sorted(
                entry.name
                for entry in self.instances_dir.iterdir()
                if entry.is_dir() and VM_ID.match(entry.name)
            )

    def find_vnf_processes(self) -> list[psutil.Process]:
        """Every live VNF process of this VIM (by command line), whatever the records say.

        During a launch this includes the short-lived launcher, which runs the same
        command line; any of them may be killed safely.
        """
        found = []
        for proc in psutil.process_iter(["cmdline", "status"]):
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            arg = instance_dir_arg(proc.info["cmdline"] or [])
            if arg is not None and Path(arg).parent == self.instances_dir:
                found.append(proc)
        return found

    def check(self) -> None:
        # A real write, not os.access(): access() answers yes to root whatever the modes.
        try:
            fd, probe = tempfile.mkstemp(prefix=".check-", dir=self.instances_dir)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise PermanentVimError(
                f"local VIM directory {self.instances_dir} is not usable: {exc.strerror}; "
                "create it, writable by the user ESC runs as"
            ) from exc

    # instance records -------------------------------------------------------------------

    def _dir(self, vm_id: str) -> Path:
        check_vm_id(vm_id)
        return self.instances_dir / vm_id

    def _spec_record(self, spec: VmSpec) -> dict[str, Any]:
        return {
            "vm_id": spec.vm_id,
            "name": spec.name,
            "image": spec.image,
            "flavor": spec.flavor,
            "day0_config": spec.day0_config,
            # For whoever looks at the VIM: the directory belongs to one controller.
            "tags": self.tags(spec.vm_id),
            # The instance's birth, kept across reboots (unhealthy-after:N counts from it).
            "created_at": time.time(),
        }

    @staticmethod
    def _read_json(path: Path) -> dict[str, Any] | None:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _read_spec(self, directory: Path) -> dict[str, Any] | None:
        return self._read_json(directory / "spec.json")

    def _require_defined(self, vm_id: str, directory: Path) -> None:
        if self._read_spec(directory) is None:
            raise PermanentVimError(f"VM {vm_id} does not exist on the local VIM; create it again")

    @staticmethod
    def _running(directory: Path) -> bool:
        """A VNF holds the instance lock (a VNF starting during the probe waits the
        instant it lasts)."""
        return lock_held(directory / "instance.lock")

    def _recorded(self, directory: Path) -> tuple[psutil.Process, dict[str, Any]] | None:
        """The process state.json names (and the record), only if it provably is this
        instance's VNF: alive, same start time as recorded, this instance on its command line.
        """
        state = self._read_json(directory / "state.json")
        if state is None:
            return None
        try:
            proc = psutil.Process(int(state["pid"]))
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            if vnf.process_start_ticks(proc.pid) != state["start_ticks"]:
                return None  # the pid was reused by another process
            if instance_dir_arg(proc.cmdline()) != str(directory):
                return None
        except (OSError, ValueError, KeyError, TypeError, psutil.Error):
            return None
        return proc, state

    def _processes_of(self, directory: Path) -> list[psutil.Process]:
        return [
            proc
            for proc in self.find_vnf_processes()
            if instance_dir_arg(proc.info["cmdline"] or []) == str(directory)
        ]

    def _status(self, vm_id: str, directory: Path) -> InstanceStatus:
        if self._read_spec(directory) is None:
            return InstanceStatus(vm_id, InstanceState.ABSENT)
        if not self._running(directory):
            return InstanceStatus(vm_id, InstanceState.STOPPED)
        recorded = self._recorded(directory)
        if recorded is None:
            # Locked, but state.json is not (yet) the holder's: no address to trust.
            return InstanceStatus(
                vm_id, InstanceState.RUNNING, None, "starting, or its state.json is not its own"
            )
        state = recorded[1]
        # A VM started before VMs recorded their address listens on the default one.
        address = vnf.http_address(state.get("host", vnf.DEFAULT_ADDRESS), state["port"])
        return InstanceStatus(vm_id, InstanceState.RUNNING, address)

    # processes --------------------------------------------------------------------------

    def _launch(self, vm_id: str, directory: Path) -> InstanceStatus:
        command = [
            sys.executable,
            "-I",
            "-S",
            str(VNF_PROGRAM),
            "--instance-dir",
            str(directory),
            "--address",
            self.vm_address,
            "--detach",
        ]
        try:
            result = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=LAUNCH_TIMEOUT,
                cwd="/",
            )
        except subprocess.TimeoutExpired:
            # Leave no half-started VM behind an error that says it did not start;
            # a loaded host may start it next time.
            self._kill_all(directory)
            raise TransientVimError(
                f"VM {vm_id} did not start within {LAUNCH_TIMEOUT:g} s; "
                f"console: {self._console_tail(directory)}"
            ) from None
        if result.returncode == vnf.EXIT_ALREADY_RUNNING:
            return self._status(vm_id, directory)  # started meanwhile: not a duplicate
        if result.returncode != 0:
            # The VNF that failed may still be exiting with the instance lock: it is
            # gone before the error says the VM did not start.
            self._kill_all(directory)
            raise PermanentVimError(
                f"VM {vm_id} failed to start: {result.stderr.strip()[-500:]}; "
                f"console: {self._console_tail(directory)}"
            )
        try:
            ready = json.loads(result.stdout)
            address = vnf.http_address(str(ready["host"]), int(ready["port"]))
        except (ValueError, KeyError, TypeError):
            raise PermanentVimError(
                f"VM {vm_id}: unexpected launcher output {result.stdout!r}"
            ) from None
        log.info("VM %s started (pid %s)", vm_id, ready["pid"], extra={"tags": "start_vm"})
        return InstanceStatus(vm_id, InstanceState.RUNNING, address)

    def _stop(self, vm_id: str, directory: Path) -> None:
        targets = self._stop_targets(vm_id, directory)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not targets:
                return
            for proc in targets:
                self._signal(vm_id, proc, sig)
            if self._wait_released(directory, STOP_GRACE):
                log.info("VM %s stopped", vm_id, extra={"tags": "stop_vm"})
                return
        # A process stuck in the kernel (uninterruptible I/O) usually comes out of it.
        raise TransientVimError(
            f"VM {vm_id} still holds {directory / 'instance.lock'} after SIGKILL; "
            "the process may be stuck in the kernel (check with ps)"
        )

    @staticmethod
    def _signal(vm_id: str, proc: psutil.Process, sig: int) -> None:
        try:
            # psutil refuses to signal a pid whose process changed since `proc` was made;
            # one already gone is what the signal was for.
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(sig)
        except psutil.AccessDenied as exc:
            raise PermanentVimError(
                f"VM {vm_id} (pid {proc.pid}) runs as another user: stop it as that user"
            ) from exc

    def _stop_targets(self, vm_id: str, directory: Path) -> list[psutil.Process]:
        """What to signal to stop the VM: nothing when it is not running."""
        deadline = time.monotonic() + UNKNOWN_HOLDER_WAIT
        while self._running(directory):
            recorded = self._recorded(directory)
            if recorded is not None:
                return [recorded[0]]
            # state.json is not the holder's (a VM starting, or a forged or stale record):
            # find the VNF by its command line, which names exactly this instance.
            found = self._processes_of(directory)
            if found:
                return found
            if time.monotonic() >= deadline:
                raise PermanentVimError(
                    f"VM {vm_id}: {directory / 'instance.lock'} is held by a process that is "
                    "not a VNF of this instance; find it with `fuser` and stop it"
                )
            time.sleep(0.05)
        return []

    def _wait_released(self, directory: Path, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while self._running(directory):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def _kill_all(self, directory: Path) -> None:
        for proc in self._processes_of(directory):
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        self._wait_released(directory, STOP_GRACE)

    @staticmethod
    def _console_tail(directory: Path) -> str:
        try:
            tail = (directory / "console.log").read_text(errors="replace")[-500:].strip()
        except OSError:
            return "(none)"
        return tail or "(empty)"

    def recover(self) -> None:
        """Finish deletions a crash interrupted (their VMs were stopped before the rename)."""
        for entry in self.instances_dir.glob(f"{TOMBSTONE_PREFIX}*"):
            shutil.rmtree(entry, ignore_errors=True)
