"""libvirt's test driver (test:///default, in this process) as a contract target.

The test driver keeps its domains in memory for as long as one connection to it is
open: the target holds one for the whole test, so every driver object it makes
(another controller, or the same one restarted) sees the same domains, and the next
test starts from the driver's pristine state. Its domains only pretend to run, but
the driver's own files (qcow2 overlays, seed ISOs) are real, on a real qcow2 image.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import need
from libvirt_testbed import make_disk_image, sdk_missing, untagged_domain_xml
from vim_target import Target

URI = "test:///default"


def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    need(sdk_missing())
    import libvirt

    from esc.config import LibvirtSettings
    from esc.vim.libvirt import LibvirtVim
    from esc.vim.libvirt_domain import NAMESPACE, parse_record

    observer = libvirt.open(URI)
    images = tmp_path / "images"
    images.mkdir()
    make_disk_image(images / "tiny.qcow2")
    settings = LibvirtSettings(uri=URI, image_dir=str(images), shutdown_timeout=1)
    # Unique to this test: whatever an earlier test left is another controller's.
    controller = f"contract-{uuid.uuid4().hex[:8]}"
    made: list[LibvirtVim] = []

    def make() -> LibvirtVim:
        driver = LibvirtVim(tmp_path / "vim", settings, tmp_path)
        driver.controller_id = controller
        made.append(driver)
        return driver

    def put_foreign(name: str) -> None:
        # The very name the driver would give its own VM of that id: only the missing
        # record tells them apart.
        observer.defineXML(untagged_domain_xml(LibvirtVim.domain_name(name))).create()

    def foreign_running(name: str) -> bool:
        dom = observer.lookupByName(LibvirtVim.domain_name(name))
        return bool(dom.isActive()) and LibvirtVim.record_of(dom) is None

    def tags_of(vm_id: str) -> dict[str, str]:
        dom = observer.lookupByName(LibvirtVim.domain_name(vm_id))
        record = parse_record(dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NAMESPACE))
        return dict(record.tags) if record else {}

    yield Target(
        make=make,
        image="tiny",
        flavor="m1.tiny",
        put_foreign=put_foreign,
        foreign_running=foreign_running,
        tags_of=tags_of,
    )
    for driver in made:
        driver.close()
    observer.close()  # the last connection: the test driver drops what it held
