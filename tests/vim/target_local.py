"""The local VIM as a contract target: VMs are processes of this host."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from vim_host_process import wait_until
from vim_target import Target

from esc.vim.local import LocalVim


def kill_leftovers(observer: LocalVim) -> None:
    """Whatever a test did, its VM processes go: the next test starts on an empty VIM."""
    for proc in observer.find_vnf_processes():
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    assert wait_until(lambda: not observer.find_vnf_processes(), 5)


def spec_tags(instances_dir: Path, vm_id: str) -> dict[str, str]:
    try:
        return json.loads((instances_dir / vm_id / "spec.json").read_text()).get("tags", {})
    except FileNotFoundError:
        return {}


def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    observer = LocalVim(tmp_path / "vim")
    yield Target(
        make=lambda: LocalVim(tmp_path / "vim"),
        image="healthy",
        flavor="m1.tiny",
        http_address=True,
        tags_of=lambda vm_id: spec_tags(observer.instances_dir, vm_id),
    )
    for vm_id in observer.list_instances():
        observer.delete_vm(vm_id)
    kill_leftovers(observer)
