"""The local VIM served by a VIM host process (the vimhost driver) as a contract target."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from target_local import kill_leftovers, spec_tags
from vim_host_process import VimHostProcess
from vim_target import Target


def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    # One host for the module (test_driver_contract's fixture): a host per test would
    # cost more than the tests.
    host: VimHostProcess = request.getfixturevalue("shared_host")
    yield Target(
        make=host.driver,
        image="healthy",
        flavor="m1.tiny",
        http_address=True,
        tags_of=lambda vm_id: spec_tags(host.vms.instances_dir, vm_id),
    )
    cleaner = host.driver()
    for vm_id in cleaner.list_instances():
        cleaner.delete_vm(vm_id)
    kill_leftovers(host.vms)
