"""The local VIM with real processes: idempotent, identity-checked, leak-free."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from esc.vim.base import InstanceState, UnknownFlavor, UnknownImage, VimError, VmSpec, load_driver
from esc.vim.local import LocalVim


@pytest.fixture
def vim(tmp_path: Path) -> Iterator[LocalVim]:
    driver = load_driver("local", tmp_path)
    assert isinstance(driver, LocalVim)
    yield driver
    for proc in driver.find_vnf_processes():
        proc.kill()


def spec(vm_id: str = "vm-1", image: str = "healthy") -> VmSpec:
    return VmSpec(
        vm_id=vm_id,
        name=f"name-{vm_id}",
        image=image,
        flavor="m1.tiny",
        day0_config={"app.conf": "x = 1\n"},
    )


def pid_of(vim: LocalVim, vm_id: str) -> int:
    return json.loads((vim.instances_dir / vm_id / "state.json").read_text())["pid"]


def wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_create_runs_a_detached_process_answering_health(vim: LocalVim) -> None:
    status = vim.create_vm(spec())
    assert status.state is InstanceState.RUNNING
    health = httpx.get(f"{status.address}/health", timeout=2).json()
    assert health == {"status": "alive", "vm_id": "vm-1", "name": "name-vm-1"}
    assert httpx.get(f"{status.address}/day0", timeout=2).json() == {"app.conf": "x = 1\n"}
    proc = psutil.Process(pid_of(vim, "vm-1"))
    assert proc.ppid() != os.getpid(), "a VM must not be a child of the controller"
    assert proc.memory_info().rss < 20 * 2**20
    assert vim.is_alive("vm-1")


def test_create_is_idempotent_even_when_racing(vim: LocalVim) -> None:
    first = vim.create_vm(spec())
    again = vim.create_vm(spec())
    assert again == first
    threads = [threading.Thread(target=vim.create_vm, args=(spec("vm-2"),)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(vim.find_vnf_processes()) == 2


def test_second_process_for_one_instance_cannot_run(vim: LocalVim) -> None:
    vim.create_vm(spec())
    from esc.vim.local import VNF_PROGRAM

    result = subprocess.run(
        [
            "python3",
            "-I",
            "-S",
            str(VNF_PROGRAM),
            "--instance-dir",
            str(vim.instances_dir / "vm-1"),
            "--detach",
        ],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 3 and "already running" in result.stderr
    assert len(vim.find_vnf_processes()) == 1


def test_stop_start_reboot_delete(vim: LocalVim) -> None:
    address = vim.create_vm(spec()).address
    first_pid = pid_of(vim, "vm-1")
    assert vim.stop_vm("vm-1").state is InstanceState.STOPPED
    assert vim.stop_vm("vm-1").state is InstanceState.STOPPED  # idempotent
    assert (
        not psutil.pid_exists(first_pid)
        or psutil.Process(first_pid).status() == psutil.STATUS_ZOMBIE
    )
    assert vim.start_vm("vm-1").address == address  # same port when free
    rebooted = vim.reboot_vm("vm-1")
    assert rebooted.state is InstanceState.RUNNING and vim.is_alive("vm-1")
    assert pid_of(vim, "vm-1") != first_pid
    vim.delete_vm("vm-1")
    vim.delete_vm("vm-1")  # idempotent
    assert vim.status("vm-1").state is InstanceState.ABSENT
    assert vim.find_vnf_processes() == []
    assert vim.list_instances() == []


def test_crash_after_image_exits(vim: LocalVim) -> None:
    vim.create_vm(spec(image="crash-after:0.3"))
    assert wait_until(lambda: vim.status("vm-1").state is InstanceState.STOPPED)
    assert not vim.is_alive("vm-1")
    assert "crashing now" in (vim.instances_dir / "vm-1" / "console.log").read_text()


def test_unhealthy_after_image_fails_health_but_lives(vim: LocalVim) -> None:
    vim.create_vm(spec(image="unhealthy-after:0.3"))
    assert wait_until(lambda: not vim.is_alive("vm-1"))
    assert vim.status("vm-1").state is InstanceState.RUNNING


def test_forged_pid_is_never_signalled(vim: LocalVim, tmp_path: Path) -> None:
    vim.create_vm(spec())
    real_pid = pid_of(vim, "vm-1")
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        state_file = vim.instances_dir / "vm-1" / "state.json"
        state = json.loads(state_file.read_text())
        state_file.write_text(json.dumps({**state, "pid": bystander.pid}))
        with pytest.raises(VimError, match="cannot be identified"):
            vim.stop_vm("vm-1")
        assert bystander.poll() is None, "an unrelated process was signalled"
    finally:
        bystander.kill()
        bystander.wait()
        psutil.Process(real_pid).kill()


def test_unknown_image_and_flavor_name_the_accepted_values(vim: LocalVim) -> None:
    with pytest.raises(UnknownImage, match="healthy, crash-after:N, unhealthy-after:N"):
        vim.create_vm(spec(image="ubuntu-22.04"))
    with pytest.raises(UnknownImage):
        vim.validate_image("crash-after:-1")
    with pytest.raises(UnknownFlavor, match=r"m1\.tiny, m1\.small"):
        vim.validate_flavor("x9.mega")
    assert vim.list_instances() == []


def test_hostile_vm_ids_are_refused(vim: LocalVim) -> None:
    for bad in ("../escape", ".hidden", ""):
        with pytest.raises(VimError, match="invalid VM id"):
            vim.status(bad)


def test_unknown_driver_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(VimError, match="unknown VIM driver 'vcloud'"):
        load_driver("vcloud", tmp_path)
