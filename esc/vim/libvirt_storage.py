"""The files of the libvirt driver: the images it boots from and each VM's own files.

Images are files of one directory: `NAME.qcow2` is a disk image; `NAME.kernel`
with `NAME.initrd` is booted directly (with `NAME.qcow2` as its disk when there is
one, and `NAME.cmdline` as its kernel command line when there is one). An image
file is only ever read: each VM gets its own qcow2 overlay on it.

A VM's files live in one directory named after its VM id: the overlay, its data
volumes (qcow2, created empty with the VM), its cloud-init seed ISO and its serial
console log. The directory is built under a temporary name and renamed into place
once whole, so a half-built one is never taken for a VM's, and it is removed with
the VM (base images are elsewhere, and never removed).
"""

from __future__ import annotations

import contextlib
import errno
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from esc.vim import nocloud
from esc.vim.base import PermanentVimError, TransientVimError, Volume

DISK_SUFFIX = ".qcow2"
KERNEL_SUFFIX = ".kernel"
INITRD_SUFFIX = ".initrd"
CMDLINE_SUFFIX = ".cmdline"
OVERLAY = "disk.qcow2"
SEED = "seed.iso"
CONSOLE = "console.log"
VOLUME_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
PARTIAL_PREFIX = ".partial-"
QEMU_IMG_TIMEOUT = 60.0
TRANSIENT_ERRNOS = frozenset({errno.EAGAIN, errno.EBUSY, errno.EINTR, errno.ETIMEDOUT})


@dataclass(frozen=True)
class Image:
    name: str
    disk: Path | None = None
    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str | None = None  # None: the driver's default


@contextlib.contextmanager
def os_errors(action: str) -> Iterator[None]:
    """A file-system failure as a VimError saying what failed: transient for a busy host,
    permanent for what a person must fix (permissions, a full disk)."""
    try:
        yield
    except OSError as exc:
        kind = TransientVimError if exc.errno in TRANSIENT_ERRNOS else PermanentVimError
        raise kind(f"libvirt driver could not {action}: {exc}") from exc


class ImageDirectory:
    """The images of one directory, read anew at each look (an operator adds files)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def images(self) -> dict[str, Image]:
        with os_errors(f"list the images in {self.directory}"):
            files = {p.name: p for p in self.directory.iterdir() if p.is_file()}
        found: dict[str, Image] = {}
        for file_name, path in files.items():
            if file_name.endswith(DISK_SUFFIX):
                name = file_name.removesuffix(DISK_SUFFIX)
                found[name] = Image(name, disk=path)
        for file_name, path in files.items():
            if not file_name.endswith(KERNEL_SUFFIX):
                continue
            name = file_name.removesuffix(KERNEL_SUFFIX)
            initrd = files.get(name + INITRD_SUFFIX)
            if initrd is None:
                continue  # a kernel without its initramfs is no image
            cmdline = None
            if name + CMDLINE_SUFFIX in files:
                with os_errors(f"read {files[name + CMDLINE_SUFFIX]}"):
                    cmdline = files[name + CMDLINE_SUFFIX].read_text().strip()
            disk = found[name].disk if name in found else None
            found[name] = Image(name, disk=disk, kernel=path, initrd=initrd, cmdline=cmdline)
        return found


def check_volumes(volumes: tuple[Volume, ...]) -> None:
    names = [v.name for v in volumes]
    for volume in volumes:
        if not isinstance(volume.name, str) or not VOLUME_NAME.match(volume.name):
            raise PermanentVimError(
                f"invalid volume name {volume.name!r}: use letters, digits, '.', '_' and '-'"
            )
        if volume.size_gb < 1:
            raise PermanentVimError(f"volume {volume.name}: size_gb must be at least 1")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise PermanentVimError(f"volume names must be unique: {', '.join(duplicates)}")


def volume_file(volume: Volume) -> str:
    return f"volume-{volume.name}{DISK_SUFFIX}"


def qemu_img(*args: str) -> None:
    """Run qemu-img, its refusal a PermanentVimError in its own words."""
    program = shutil.which("qemu-img")
    if program is None:
        raise PermanentVimError(
            "qemu-img is not installed on the controller's host; the libvirt driver makes "
            "the VMs' qcow2 files with it (Debian: apt-get install qemu-utils)"
        )
    try:
        result = subprocess.run(
            [program, *args], capture_output=True, text=True, timeout=QEMU_IMG_TIMEOUT
        )
    except subprocess.TimeoutExpired:
        raise TransientVimError(
            f"qemu-img {args[0]} did not finish within {QEMU_IMG_TIMEOUT:g} s"
        ) from None
    if result.returncode != 0:
        raise PermanentVimError(f"qemu-img {args[0]} failed: {result.stderr.strip()[-500:]}")


class InstanceFiles:
    """The directories of the VMs' own files, one per VM id."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def of(self, vm_id: str) -> Path:
        return self.directory / vm_id

    def build(
        self, vm_id: str, image: Image, volumes: tuple[Volume, ...], seed: dict[str, str]
    ) -> Path:
        """Make the VM's directory anew (a leftover of an interrupted creation is replaced)."""
        final = self.of(vm_id)
        partial = self.directory / f"{PARTIAL_PREFIX}{vm_id}-{uuid.uuid4().hex[:8]}"
        with os_errors(f"make the files of VM {vm_id} in {self.directory}"):
            # Searchable, not listable, by QEMU's user (whatever the umask): libvirt gives
            # it the files themselves. A directory the operator made keeps its mode.
            if not self.directory.exists():
                self.directory.mkdir(parents=True)
                self.directory.chmod(0o711)
            partial.mkdir()
            partial.chmod(0o711)
        try:
            if image.disk is not None:
                qemu_img(
                    "create", "-q", "-f", "qcow2", "-F", "qcow2",
                    "-b", str(image.disk.absolute()), str(partial / OVERLAY),
                )  # fmt: skip
            for volume in volumes:
                qemu_img(
                    "create", "-q", "-f", "qcow2",
                    str(partial / volume_file(volume)), f"{volume.size_gb}G",
                )  # fmt: skip
            with os_errors(f"write the seed ISO of VM {vm_id}"):
                nocloud.write_seed(partial / SEED, seed)
                self.remove(vm_id)
                partial.rename(final)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        return final

    def remove(self, vm_id: str, directory: Path | None = None) -> None:
        """Remove the VM's directory (`directory`: where its domain says it is)."""
        target = directory or self.of(vm_id)
        # A recorded path is trusted only as far as it names this VM's own directory.
        if target.name != vm_id or not target.is_absolute():
            raise PermanentVimError(
                f"VM {vm_id}: its recorded files {target} are not a directory of its own; "
                "remove them by hand"
            )
        with os_errors(f"remove the files of VM {vm_id} ({target})"):
            if target.exists():
                shutil.rmtree(target)

    def sweep(self) -> None:
        """Remove what interrupted creations left half-built."""
        if self.directory.is_dir():
            for entry in self.directory.glob(f"{PARTIAL_PREFIX}*"):
                shutil.rmtree(entry, ignore_errors=True)
