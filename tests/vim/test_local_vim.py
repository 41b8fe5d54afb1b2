"""The local VIM with real processes: idempotent, identity-checked, leak-free."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from esc.monitor.liveness import vm_is_up
from esc.vim import local
from esc.vim.base import (
    InstanceState,
    PermanentVimError,
    TransientVimError,
    UnknownFlavor,
    UnknownImage,
    VimError,
    VmSpec,
    load_driver,
)
from esc.vim.local import VNF_PROGRAM, LocalVim
from esc.vim.vnf import EXIT_ALREADY_RUNNING, process_start_ticks

RSS_LIMIT = 20 * 2**20


@pytest.fixture
def vim(tmp_path: Path) -> Iterator[LocalVim]:
    driver = load_driver("local", tmp_path / "vim")
    assert isinstance(driver, LocalVim)
    try:
        yield driver
    finally:
        # Whatever a test did or where it failed, no VNF outlives it.
        leftovers = driver.find_vnf_processes()
        for proc in leftovers:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        # Zombies count as gone: reaping them is up to whoever adopted them.
        wait_until(lambda: all(gone(p.pid) for p in leftovers))


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen]:
    """A live process that is no VM: it must never be signalled."""
    proc = subprocess.Popen(["sleep", "60"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def spec(vm_id: str = "vm-1", image: str = "healthy", flavor: str = "m1.tiny") -> VmSpec:
    return VmSpec(
        vm_id=vm_id,
        name=f"name-{vm_id}",
        image=image,
        flavor=flavor,
        day0_config={"app.conf": "x = 1\n"},
    )


def state_of(vim: LocalVim, vm_id: str) -> dict:
    return json.loads((vim.instances_dir / vm_id / "state.json").read_text())


def forge_state(vim: LocalVim, vm_id: str, pid: int) -> None:
    """Point state.json at `pid`, with that process's true start time (the best forgery)."""
    state_file = vim.instances_dir / vm_id / "state.json"
    state = json.loads(state_file.read_text())
    state.update(pid=pid, start_ticks=process_start_ticks(pid))
    state_file.write_text(json.dumps(state))


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def vnf_command(vim: LocalVim, vm_id: str, *extra: str) -> list[str]:
    """The VNF's command line as the driver runs it."""
    directory = str(vim.instances_dir / vm_id)
    return [sys.executable, "-I", "-S", str(VNF_PROGRAM), "--instance-dir", directory, *extra]


def vnfs_of(vim: LocalVim, vm_id: str) -> list[psutil.Process]:
    directory = str(vim.instances_dir / vm_id)
    return [p for p in vim.find_vnf_processes() if directory in p.cmdline()]


# create ------------------------------------------------------------------------------


def test_create_starts_a_detached_vnf_answering_health(vim: LocalVim) -> None:
    status = vim.create_vm(spec())
    assert status.state is InstanceState.RUNNING
    assert status.address is not None and status.address.startswith("http://127.0.0.1:")
    health = httpx.get(f"{status.address}/health", timeout=2)
    assert health.status_code == 200
    assert health.json() == {"status": "alive", "vm_id": "vm-1", "name": "name-vm-1"}
    assert httpx.get(f"{status.address}/day0", timeout=2).json() == {"app.conf": "x = 1\n"}
    root = httpx.get(f"{status.address}/", timeout=2).json()
    assert root["image"] == "healthy" and root["flavor"] == "m1.tiny" and root["uptime"] >= 0
    assert vm_is_up(vim.status("vm-1"))
    assert vim.status("vm-1") == status

    state = state_of(vim, "vm-1")
    proc = psutil.Process(state["pid"])
    assert proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    assert abs(proc.create_time() - state["create_time"]) < 0.01
    assert str(VNF_PROGRAM) in proc.cmdline()
    assert [p.pid for p in vim.find_vnf_processes()] == [proc.pid]
    assert "up on 127.0.0.1" in (vim.instances_dir / "vm-1" / "console.log").read_text()


def test_vnf_is_detached_from_its_launcher(vim: LocalVim) -> None:
    vim.create_vm(spec())
    proc = psutil.Process(state_of(vim, "vm-1")["pid"])
    assert proc.ppid() != os.getpid()
    assert proc.pid not in {c.pid for c in psutil.Process().children(recursive=True)}
    assert os.getsid(proc.pid) != os.getsid(0), "a VM must not share the controller's session"


def test_vnf_resident_set_is_small(vim: LocalVim) -> None:
    address = vim.create_vm(spec()).address
    for _ in range(20):  # warm: handler threads have run, lazily loaded code is in
        httpx.get(f"{address}/health", timeout=2)
    rss = psutil.Process(state_of(vim, "vm-1")["pid"]).memory_info().rss
    print(f"VNF RSS: {rss / 2**20:.1f} MB")
    assert rss < RSS_LIMIT


def test_create_twice_is_the_same_vm(vim: LocalVim) -> None:
    first = vim.create_vm(spec())
    pid = state_of(vim, "vm-1")["pid"]
    assert vim.create_vm(spec()) == first
    assert state_of(vim, "vm-1")["pid"] == pid
    assert len(vnfs_of(vim, "vm-1")) == 1


def test_concurrent_creates_of_one_vm_start_one_process(vim: LocalVim) -> None:
    barrier = threading.Barrier(4)
    results = []

    def create() -> None:
        barrier.wait()
        results.append(vim.create_vm(spec()))

    threads = [threading.Thread(target=create) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4
    assert all(r.state is InstanceState.RUNNING for r in results)
    assert len({r.address for r in results}) == 1
    assert len(vnfs_of(vim, "vm-1")) == 1


def test_two_drivers_racing_on_one_vm_start_one_process(vim: LocalVim) -> None:
    # Two driver objects share no threading lock: only the instance lock stops a duplicate.
    other = LocalVim(vim.data_dir)
    barrier = threading.Barrier(2)
    results = []

    def create(driver: LocalVim) -> None:
        barrier.wait()
        results.append(driver.create_vm(spec()))

    threads = [threading.Thread(target=create, args=(d,)) for d in (vim, other)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.state for r in results] == [InstanceState.RUNNING] * 2
    assert len(vnfs_of(vim, "vm-1")) == 1
    assert vm_is_up(vim.status("vm-1"))


def test_a_second_vnf_for_a_running_instance_refuses_to_run(vim: LocalVim) -> None:
    vim.create_vm(spec())
    result = subprocess.run(
        vnf_command(vim, "vm-1", "--detach"),
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == EXIT_ALREADY_RUNNING
    assert "instance already running" in result.stderr
    assert wait_until(lambda: len(vnfs_of(vim, "vm-1")) == 1)


def test_concurrent_probes_never_look_like_a_running_vm(vim: LocalVim) -> None:
    vim.create_vm(spec())
    vim.stop_vm("vm-1")
    # Another thread (or driver) asking "running?" at this very moment holds this lock.
    probe_fd = os.open(vim.instances_dir / "vm-1" / "instance.lock", os.O_RDONLY)
    try:
        fcntl.flock(probe_fd, fcntl.LOCK_SH)
        assert vim.status("vm-1").state is InstanceState.STOPPED
    finally:
        os.close(probe_fd)
    errors: list[str] = []

    def ask() -> None:
        for _ in range(300):
            if vim.status("vm-1").state is not InstanceState.STOPPED:
                errors.append("a probe was taken for a VM")

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_vms_of_different_ids_are_independent(vim: LocalVim) -> None:
    a, b = vim.create_vm(spec("vm-a")), vim.create_vm(spec("vm-b"))
    assert a.address != b.address
    assert vim.list_instances() == ["vm-a", "vm-b"]
    vim.stop_vm("vm-a")
    assert not vm_is_up(vim.status("vm-a")) and vm_is_up(vim.status("vm-b"))


# stop, start, reboot, delete ----------------------------------------------------------------


def test_stop_then_start_keeps_the_address(vim: LocalVim) -> None:
    address = vim.create_vm(spec()).address
    pid = state_of(vim, "vm-1")["pid"]

    stopped = vim.stop_vm("vm-1")
    assert stopped.state is InstanceState.STOPPED and stopped.address is None
    assert gone(pid)
    assert not vm_is_up(vim.status("vm-1"))
    assert vim.stop_vm("vm-1").state is InstanceState.STOPPED  # idempotent
    # A stopped VM keeps its records, so it starts again as it was.
    for record in ("spec.json", "state.json", "port", "console.log"):
        assert (vim.instances_dir / "vm-1" / record).exists()

    started = vim.start_vm("vm-1")
    assert started.state is InstanceState.RUNNING and started.address == address
    assert vm_is_up(vim.status("vm-1"))
    assert state_of(vim, "vm-1")["pid"] != pid
    assert vim.start_vm("vm-1") == started  # a running VM is left alone


def test_start_takes_another_port_when_its_own_is_taken(vim: LocalVim) -> None:
    address = vim.create_vm(spec()).address
    assert address is not None
    vim.stop_vm("vm-1")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", int(address.rsplit(":", 1)[1])))
        squatter.listen()
        started = vim.start_vm("vm-1")
    assert started.address != address
    assert vm_is_up(vim.status("vm-1"))


def test_reboot_runs_a_new_process(vim: LocalVim) -> None:
    vim.create_vm(spec())
    pid = state_of(vim, "vm-1")["pid"]
    rebooted = vim.reboot_vm("vm-1")
    assert rebooted.state is InstanceState.RUNNING
    assert gone(pid)
    assert state_of(vim, "vm-1")["pid"] != pid
    assert vm_is_up(vim.status("vm-1"))
    assert len(vnfs_of(vim, "vm-1")) == 1
    vim.stop_vm("vm-1")
    assert vim.reboot_vm("vm-1").state is InstanceState.RUNNING  # a stopped VM just starts


def test_delete_leaves_no_process_and_no_record(vim: LocalVim) -> None:
    vim.create_vm(spec())
    pid = state_of(vim, "vm-1")["pid"]
    vim.delete_vm("vm-1")
    assert gone(pid)
    assert vim.find_vnf_processes() == []
    assert not (vim.instances_dir / "vm-1").exists()
    assert list(vim.instances_dir.iterdir()) == []
    assert vim.status("vm-1").state is InstanceState.ABSENT
    assert vim.list_instances() == []
    vim.delete_vm("vm-1")  # idempotent
    vim.delete_vm("never-created")


def test_operations_on_an_absent_vm(vim: LocalVim) -> None:
    assert vim.status("vm-x").state is InstanceState.ABSENT
    assert vim.stop_vm("vm-x").state is InstanceState.ABSENT
    assert not vm_is_up(vim.status("vm-x"))
    with pytest.raises(PermanentVimError, match="does not exist"):
        vim.start_vm("vm-x")
    with pytest.raises(PermanentVimError, match="does not exist"):
        vim.reboot_vm("vm-x")
    assert vim.list_instances() == []


def test_vnf_exits_0_on_sigterm_and_can_run_in_the_foreground(vim: LocalVim) -> None:
    vim.create_vm(spec())
    vim.stop_vm("vm-1")
    foreground = subprocess.Popen(
        vnf_command(vim, "vm-1"),
        stdout=subprocess.DEVNULL,
    )
    try:
        assert wait_until(lambda: vm_is_up(vim.status("vm-1")))
        foreground.send_signal(signal.SIGTERM)
        assert foreground.wait(timeout=5) == 0
        assert vim.status("vm-1").state is InstanceState.STOPPED
    finally:
        foreground.kill()
        foreground.wait()


# images -------------------------------------------------------------------------------------


def test_crash_after_image_exits(vim: LocalVim) -> None:
    assert vim.create_vm(spec(image="crash-after:0.5")).state is InstanceState.RUNNING
    pid = state_of(vim, "vm-1")["pid"]
    assert wait_until(lambda: vim.status("vm-1").state is InstanceState.STOPPED, timeout=3)
    assert gone(pid)
    assert not vm_is_up(vim.status("vm-1"))
    assert "crashing now" in (vim.instances_dir / "vm-1" / "console.log").read_text()
    assert vim.start_vm("vm-1").state is InstanceState.RUNNING  # a crashed VM can be restarted


def test_crash_after_zero_still_starts(vim: LocalVim) -> None:
    assert vim.create_vm(spec(image="crash-after:0")).state is InstanceState.RUNNING
    assert wait_until(lambda: vim.status("vm-1").state is InstanceState.STOPPED, timeout=3)


def test_unhealthy_after_image_fails_health_but_lives(vim: LocalVim) -> None:
    address = vim.create_vm(spec(image="unhealthy-after:0.5")).address
    assert vm_is_up(vim.status("vm-1"))
    assert wait_until(lambda: not vm_is_up(vim.status("vm-1")), timeout=3)
    health = httpx.get(f"{address}/health", timeout=2)
    assert health.status_code == 503 and health.json()["status"] == "unhealthy"
    assert vim.status("vm-1").state is InstanceState.RUNNING
    assert not gone(state_of(vim, "vm-1")["pid"])


def test_unhealthy_after_survives_a_reboot_but_not_a_redeploy(vim: LocalVim) -> None:
    """The image models a bad disk: the age counts from the instance's creation."""
    vim.create_vm(spec(image="unhealthy-after:0.5"))
    assert wait_until(lambda: not vm_is_up(vim.status("vm-1")), timeout=3)
    vim.reboot_vm("vm-1")
    assert not vm_is_up(vim.status("vm-1"))  # a new process, the same old instance
    vim.delete_vm("vm-1")
    vim.create_vm(spec(image="unhealthy-after:0.5"))
    assert vm_is_up(vim.status("vm-1"))  # a new instance is young again


def test_vnf_reports_the_load_it_is_told_over_one_kept_alive_connection(vim: LocalVim) -> None:
    address = vim.create_vm(spec()).address
    with httpx.Client(base_url=address, timeout=2) as client:
        assert client.get("/metrics").json() == {"load": 0.0, "vm_id": "vm-1", "name": "name-vm-1"}
        assert client.put("/load", json={"load": 87.5}).json()["load"] == 87.5
        assert client.get("/metrics").json()["load"] == 87.5
        for bad in ({"load": -1}, {"load": "high"}, {"load": True}, {"level": 3}):
            answer = client.put("/load", json=bad)
            assert answer.status_code == 400 and "load" in answer.json()["error"]
    # HTTP/1.1 keep-alive: the second request goes over the first one's socket.
    connection = http.client.HTTPConnection("127.0.0.1", int(address.rsplit(":", 1)[1]), timeout=2)
    try:
        sockets = []
        for _ in range(2):
            connection.request("GET", "/health")
            assert connection.getresponse().read() and connection.sock is not None
            sockets.append(connection.sock)
        assert sockets[0] is sockets[1]
    finally:
        connection.close()
    vim.reboot_vm("vm-1")
    address = vim.status("vm-1").address
    assert httpx.get(f"{address}/metrics", timeout=2).json()["load"] == 0.0


def test_slow_boot_image_becomes_alive(vim: LocalVim) -> None:
    vim.create_vm(spec(image="slow-boot:0.5"))
    assert not vm_is_up(vim.status("vm-1"))
    assert wait_until(lambda: vm_is_up(vim.status("vm-1")), timeout=3)


def test_unknown_image_and_flavor_name_the_accepted_values(vim: LocalVim) -> None:
    with pytest.raises(UnknownImage, match="healthy, crash-after:N, unhealthy-after:N"):
        vim.create_vm(spec(image="ubuntu-22.04"))
    with pytest.raises(UnknownFlavor, match=r"m1\.tiny, m1\.small, m1\.medium, m1\.large"):
        vim.create_vm(spec(flavor="x9.mega"))
    for bad in (
        "crash-after:-1",
        "crash-after:",
        "crash-after:soon",
        "unhealthy-after:nan",
        "unhealthy-after:inf",
        "crash-after:1e3",
        "crash-after: 1",
        "healthy:1",
        "Healthy",
    ):
        with pytest.raises(UnknownImage):
            vim.validate_image(bad)
    for good in (
        "healthy",
        "crash-after:0",
        "crash-after:2.5",
        "unhealthy-after:10",
        "slow-boot:.5",
    ):
        vim.validate_image(good)
    for flavor in ("m1.tiny", "m1.small", "m1.medium", "m1.large"):
        vim.validate_flavor(flavor)
    assert vim.list_instances() == []
    assert list(vim.instances_dir.iterdir()) == []


def test_a_vnf_that_fails_to_start_is_reported_with_its_console(vim: LocalVim) -> None:
    vim.create_vm(spec())
    vim.stop_vm("vm-1")
    spec_file = vim.instances_dir / "vm-1" / "spec.json"
    spec_file.write_text(json.dumps({**json.loads(spec_file.read_text()), "image": "bogus"}))
    with pytest.raises(PermanentVimError, match=r"failed to start.*unknown image 'bogus'"):
        vim.start_vm("vm-1")
    assert vim.status("vm-1").state is InstanceState.STOPPED


def test_a_launch_that_times_out_leaves_no_process(
    vim: LocalVim, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local, "LAUNCH_TIMEOUT", 0.005)
    with pytest.raises(TransientVimError, match="did not start within"):
        vim.create_vm(spec())
    # A VNF that was too late finds its launcher gone and does not run.
    time.sleep(1)
    assert vnfs_of(vim, "vm-1") == []
    assert vim.status("vm-1").state is InstanceState.STOPPED
    monkeypatch.setattr(local, "LAUNCH_TIMEOUT", 10.0)
    assert vim.create_vm(spec()).state is InstanceState.RUNNING


def test_a_vnf_whose_launcher_died_does_not_run(vim: LocalVim) -> None:
    vim.create_vm(spec())
    vim.stop_vm("vm-1")
    directory = vim.instances_dir / "vm-1"
    # Hold the instance lock so the VNF waits, and kill its launcher meanwhile.
    lock_fd = os.open(directory / "instance.lock", os.O_RDWR)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        launcher = subprocess.Popen(
            vnf_command(vim, "vm-1", "--detach"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # The launcher and the VNF it forked, waiting for the lock.
        assert wait_until(lambda: len(vnfs_of(vim, "vm-1")) == 2)
        launcher.kill()
        launcher.wait()
    finally:
        os.close(lock_fd)
    console = directory / "console.log"
    assert wait_until(lambda: "launcher is gone" in console.read_text())
    assert wait_until(lambda: vnfs_of(vim, "vm-1") == [])
    assert vim.status("vm-1").state is InstanceState.STOPPED


# identity -----------------------------------------------------------------------------------


def test_reused_pid_of_a_stopped_vm_is_never_signalled(
    vim: LocalVim, bystander: subprocess.Popen
) -> None:
    vim.create_vm(spec())
    vim.stop_vm("vm-1")
    # The VM's old pid now belongs to another process (as after a pid wrap-around).
    forge_state(vim, "vm-1", bystander.pid)
    assert vim.status("vm-1").state is InstanceState.STOPPED
    assert not vm_is_up(vim.status("vm-1"))
    vim.stop_vm("vm-1")
    vim.delete_vm("vm-1")
    assert bystander.poll() is None, "an unrelated process was signalled"


def test_forged_state_of_a_running_vm_is_never_signalled(
    vim: LocalVim, bystander: subprocess.Popen
) -> None:
    vim.create_vm(spec())
    real_pid = state_of(vim, "vm-1")["pid"]
    forge_state(vim, "vm-1", bystander.pid)
    status = vim.status("vm-1")
    # Running (the lock is held) but the record is not the holder's: no address is trusted.
    assert status.state is InstanceState.RUNNING
    assert status.address is None
    # Stop finds the real VNF by its command line, never by the forged pid.
    assert vim.stop_vm("vm-1").state is InstanceState.STOPPED
    assert gone(real_pid)
    assert bystander.poll() is None, "an unrelated process was signalled"


def test_own_pid_in_state_is_never_signalled(vim: LocalVim) -> None:
    vim.create_vm(spec())
    forge_state(vim, "vm-1", os.getpid())  # were it signalled, this test would die
    vim.delete_vm("vm-1")
    assert vim.find_vnf_processes() == []


def test_vms_outlive_a_killed_controller(vim: LocalVim) -> None:
    controller = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from esc.vim.base import VmSpec
                from esc.vim.local import LocalVim
                vim = LocalVim({str(vim.data_dir)!r})
                print(vim.create_vm(VmSpec("vm-1", "n", "healthy", "m1.tiny")).address, flush=True)
                time.sleep(60)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert controller.stdout is not None
        address = controller.stdout.readline().strip()
    finally:
        controller.kill()
        controller.wait()
    assert address.startswith("http://127.0.0.1:")
    assert vim.status("vm-1").address == address
    assert vm_is_up(vim.status("vm-1"))
    assert len(vnfs_of(vim, "vm-1")) == 1


# the VIM itself -----------------------------------------------------------------------------


def test_check_reports_an_unusable_directory(tmp_path: Path) -> None:
    usable = LocalVim(tmp_path / "ok")
    usable.check()
    assert (tmp_path / "ok" / "instances").is_dir()
    assert (tmp_path / "ok").stat().st_mode & 0o777 == 0o700
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    unusable = LocalVim(blocker / "vim")  # constructing does not fail: check() says why
    with pytest.raises(PermanentVimError, match="is not usable"):
        unusable.check()


def test_hostile_vm_ids_are_refused(vim: LocalVim) -> None:
    for bad in ("../escape", ".hidden", "", "a/b", "x" * 200):
        with pytest.raises(PermanentVimError, match="invalid VM id"):
            vim.status(bad)
    with pytest.raises(PermanentVimError, match="invalid VM id"):
        vim.create_vm(spec("../../etc"))


def test_unknown_driver_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(VimError, match="unknown VIM driver 'vcloud'"):
        load_driver("vcloud", tmp_path)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (errno.EAGAIN, TransientVimError),
        (errno.EBUSY, TransientVimError),
        (errno.EACCES, PermanentVimError),
        (errno.ENOSPC, PermanentVimError),
    ],
)
def test_file_system_errors_are_transient_only_when_they_pass_by_themselves(
    vim: LocalVim, monkeypatch: pytest.MonkeyPatch, error: int, kind: type
) -> None:
    def failing(*args: object, **kwargs: object) -> None:
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(local.vnf, "write_atomic", failing)
    with pytest.raises(kind, match="local VIM could not create VM vm-1"):
        vim.create_vm(spec())


@pytest.mark.parametrize("address", ["127.0.0.2", "::1"])
def test_a_vm_listens_on_the_address_its_driver_gives(tmp_path: Path, address: str) -> None:
    if ":" in address and not socket.has_ipv6:
        pytest.skip("no IPv6 on this host")
    vim = LocalVim(tmp_path / "vim", vm_address=address)
    try:
        status = vim.create_vm(spec())
        url = f"http://[{address}]" if ":" in address else f"http://{address}"
        assert status.address is not None and status.address.startswith(f"{url}:")
        assert vm_is_up(vim.status("vm-1"))
        port = int(status.address.rsplit(":", 1)[1])
        with socket.socket() as other, pytest.raises(ConnectionRefusedError):
            other.connect(("127.0.0.1", port))  # that address only, not every one
        # A driver with the default address reports where the VM really listens.
        assert LocalVim(tmp_path / "vim").status("vm-1") == status
    finally:
        vim.delete_vm("vm-1")
    assert vim.find_vnf_processes() == []


def test_a_driver_whose_sdk_is_missing_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from importlib.metadata import EntryPoint

    import esc.vim.base as base

    missing = EntryPoint("cloudx", "esc_no_such_sdk_module:Driver", base.ENTRY_POINT_GROUP)
    monkeypatch.setattr(base, "installed_drivers", lambda: {"cloudx": missing})
    with pytest.raises(VimError) as caught:
        load_driver("cloudx", tmp_path)
    assert "needs the Python package 'esc_no_such_sdk_module'" in str(caught.value)
    assert "pip install 'esc[cloudx]'" in str(caught.value)


def test_every_driver_is_installed_as_an_entry_point() -> None:
    from esc.vim.base import installed_drivers

    drivers = installed_drivers()
    assert {"local", "vimhost", "fake"} <= set(drivers)
    for name, entry in drivers.items():
        assert entry.load().name == name
