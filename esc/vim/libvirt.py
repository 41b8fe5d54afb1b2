"""The libvirt driver: each VM a libvirt domain of one KVM/QEMU host ([vim.libvirt]).

A VM is a persistent domain named `esc-<vm id>` (with a suffix when another domain
has that name), with a UUID derived from the controller id and the VM id (so it is
looked up by UUID, and a retried create finds the domain it made); it is this
controller's only when its metadata holds
the ESC record with this controller's tags (esc.vim.libvirt_domain). A domain
without that record is never stopped, deleted or listed.

Its disk is a qcow2 overlay on the image's qcow2 file, its data volumes are qcow2
files made with it, and its day-0 configuration reaches the guest as a cloud-init
NoCloud seed on a CD-ROM (esc.vim.nocloud); the driver makes these files itself
(esc.vim.libvirt_storage), in the VM's own directory, with the serial console log.
Flavors are declared in the settings: libvirt has none.

Life cycle: define and start; a stop asks the guest to power off (ACPI) and
waits a bounded time, then powers it off by force; a power-off (a fence) destroys
the domain at once, asking the guest nothing; a reboot is a stop and a start; a
delete destroys and undefines the domain and removes the VM's own files (never the
image it was made from). State is polled: no libvirt event loop.

What reaches the engine: a connection that fails or breaks, a timeout, a system
error or a busy host is a TransientVimError (the connection is made anew at the
next call); anything else libvirt refuses (a bad argument, XML it rejects, a
storage or network it does not have) is a PermanentVimError, always in libvirt's
own words.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import libvirt
from lxml import etree

from esc.config import ConfigError, LibvirtFlavor, LibvirtSettings, VimSettings, read_secret
from esc.vim import nocloud
from esc.vim.base import (
    TAG_CONTROLLER,
    TAG_VM,
    InstanceState,
    InstanceStatus,
    PermanentVimError,
    Placement,
    TransientVimError,
    UnknownFlavor,
    UnknownImage,
    VimDriver,
    VimError,
    VmSpec,
    check_metadata_key,
    check_vm_id,
)
from esc.vim.libvirt_domain import (
    NAMESPACE,
    PREFIX,
    Disk,
    Domain,
    Nic,
    Record,
    domain_xml,
    parse_record,
    record_xml,
)
from esc.vim.libvirt_storage import (
    CONSOLE,
    OVERLAY,
    SEED,
    Image,
    ImageDirectory,
    InstanceFiles,
    check_volumes,
    os_errors,
    volume_file,
)
from esc.vim.local import _VmLocks

log = logging.getLogger(__name__)

DOMAIN_PREFIX = "esc-"
BRIDGE_PREFIX = "bridge:"
# The UUIDs of this driver's domains: uuid5 of this namespace and "<controller>/<vm id>".
UUID_NAMESPACE = uuid.UUID("5d4c6a8e-2b1f-5e0a-9c3d-7f6e8a9b0c1d")
POLL_INTERVAL = 0.1

# Failures that pass by themselves: the connection (refused, reset, closed), a timeout,
# a system call's error, a busy host or guest agent. The connection is made anew.
TRANSIENT_ERRORS = frozenset(
    {
        libvirt.VIR_ERR_SYSTEM_ERROR,
        libvirt.VIR_ERR_RPC,
        libvirt.VIR_ERR_INVALID_CONN,
        libvirt.VIR_ERR_OPERATION_TIMEOUT,
        libvirt.VIR_ERR_AGENT_UNRESPONSIVE,
        libvirt.VIR_ERR_RESOURCE_BUSY,
        libvirt.VIR_ERR_NO_CONNECT,
    }
)
# Besides, whatever libvirt's RPC layer reports (e.g. "client socket is closed", seen by
# a call that raced the one which found the connection broken) is the connection's.
AUTH_ERRORS = frozenset(
    {libvirt.VIR_ERR_AUTH_FAILED, libvirt.VIR_ERR_AUTH_CANCELLED, libvirt.VIR_ERR_AUTH_UNAVAILABLE}
)


def _silence_libvirt(_context: object, _error: object) -> None:
    """libvirt prints every error on stderr by default; this driver reports them itself."""


libvirt.registerErrorHandler(_silence_libvirt, None)


def _code(exc: libvirt.libvirtError) -> int | None:
    return exc.get_error_code()


def _message(exc: libvirt.libvirtError) -> str:
    return exc.get_error_message() or str(exc)


def _transient(exc: libvirt.libvirtError) -> bool:
    return _code(exc) in TRANSIENT_ERRORS or exc.get_error_domain() == libvirt.VIR_FROM_RPC


def _mac(domain_uuid: str, index: int) -> str:
    """A stable MAC address for NIC `index` (QEMU's 52:54:00 prefix), known before the
    domain exists: cloud-init's network config matches NICs by it."""
    digest = hashlib.sha256(f"{domain_uuid}/{index}".encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def _classify(state: int, reason: int, record: Record) -> tuple[InstanceState, str]:
    """The instance state, and libvirt's words on it, of a domain state and reason."""
    if state in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED):
        return InstanceState.RUNNING, ""
    if state == libvirt.VIR_DOMAIN_SHUTDOWN:
        return InstanceState.RUNNING, "shutting down"
    if state == libvirt.VIR_DOMAIN_PAUSED:
        if reason == libvirt.VIR_DOMAIN_PAUSED_STARTING_UP:
            return InstanceState.BUILDING, "starting up"
        if reason == libvirt.VIR_DOMAIN_PAUSED_IOERROR:
            return InstanceState.ERROR, "paused by libvirt: a disk I/O error"
        if reason == libvirt.VIR_DOMAIN_PAUSED_CRASHED:
            return InstanceState.ERROR, "paused by libvirt: the guest crashed"
        return InstanceState.STOPPED, "paused"
    if state == libvirt.VIR_DOMAIN_SHUTOFF:
        if record.failure:
            return InstanceState.ERROR, record.failure
        if reason == libvirt.VIR_DOMAIN_SHUTOFF_CRASHED:
            return InstanceState.ERROR, "shut off: the guest crashed"
        if reason == libvirt.VIR_DOMAIN_SHUTOFF_FAILED:
            return InstanceState.ERROR, "shut off: libvirt failed to start it"
        return InstanceState.STOPPED, ""
    if state == libvirt.VIR_DOMAIN_CRASHED:
        return InstanceState.ERROR, "the guest crashed"
    if state == libvirt.VIR_DOMAIN_PMSUSPENDED:
        return InstanceState.STOPPED, "suspended by the guest"
    return InstanceState.BUILDING, ""


class LibvirtVim(VimDriver):
    name = "libvirt"

    def __init__(
        self, data_dir: Path, settings: LibvirtSettings | None = None, home: Path | None = None
    ) -> None:
        self.settings = settings or LibvirtSettings()
        self.data_dir = Path(data_dir).absolute()
        self.home = Path(home or data_dir).absolute()
        self.uri = self.settings.uri
        self.images = ImageDirectory(self.home / self.settings.image_dir)
        instances = (
            self.home / self.settings.instance_dir
            if self.settings.instance_dir
            else self.data_dir / "instances"
        )
        self.files = InstanceFiles(instances)
        self._vm_locks = _VmLocks()
        self._connection_lock = threading.Lock()
        self._connection: libvirt.virConnect | None = None

    @classmethod
    def from_settings(cls, data_dir: Path, settings: VimSettings, home: Path) -> LibvirtVim:
        return cls(data_dir, settings.libvirt, home)

    def close(self) -> None:
        with self._connection_lock:
            self._drop_connection()

    # the connection ---------------------------------------------------------------------

    def _credentials(self) -> list[Any] | None:
        """libvirt's auth argument when credentials are configured, None when not."""
        s = self.settings
        if not (s.username or s.password_file or s.password_env):
            return None
        try:
            password = read_secret(
                self.home,
                s.password_file,
                s.password_env,
                "[vim.libvirt] password_file / password_env",
            )
        except ConfigError as exc:
            raise PermanentVimError(str(exc)) from None

        def answer(credentials: list[list[Any]], _data: object) -> int:
            for credential in credentials:
                if credential[0] == libvirt.VIR_CRED_AUTHNAME:
                    credential[4] = s.username
                elif credential[0] == libvirt.VIR_CRED_PASSPHRASE:
                    credential[4] = password
                else:
                    return -1
            return 0

        return [[libvirt.VIR_CRED_AUTHNAME, libvirt.VIR_CRED_PASSPHRASE], answer, None]

    def _conn(self) -> libvirt.virConnect:
        with self._connection_lock:
            if self._connection is not None:
                try:
                    if self._connection.isAlive():
                        return self._connection
                except libvirt.libvirtError:
                    pass
                self._drop_connection()
            credentials = self._credentials()
            try:
                if credentials is None:
                    self._connection = libvirt.open(self.uri)
                else:
                    self._connection = libvirt.openAuth(self.uri, credentials, 0)
            except libvirt.libvirtError as exc:
                # A daemon asking for credentials none were configured for says so in
                # words only (an invalid argument): an authentication failure all the same.
                if _code(exc) in AUTH_ERRORS or "authentication" in _message(exc).lower():
                    raise self._auth_error(_message(exc)) from None
                raise
            return self._connection

    def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(libvirt.libvirtError):
                connection.close()

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """libvirt's errors as VimErrors of their kind, in libvirt's own words."""
        try:
            yield
        except libvirt.libvirtError as exc:
            raise self._vim_error(exc, action) from None

    def _auth_error(self, message: str) -> PermanentVimError:
        return PermanentVimError(
            f"libvirt at {self.uri} refused the authentication ({message}): check "
            "[vim.libvirt] username and password_file / password_env"
        )

    def _vim_error(self, exc: libvirt.libvirtError, action: str) -> VimError:
        code, message = _code(exc), _message(exc)
        if code in AUTH_ERRORS:
            return self._auth_error(message)
        if _transient(exc):
            with self._connection_lock:
                self._drop_connection()
            return TransientVimError(f"libvirt at {self.uri} could not {action}: {message}")
        return PermanentVimError(f"libvirt could not {action}: {message}")

    # images and flavors -----------------------------------------------------------------

    def _image(self, name: str) -> Image:
        images = self.images.images()
        if name not in images:
            known = ", ".join(sorted(images)) or (
                f"none (put NAME.qcow2, or NAME.kernel with NAME.initrd, in "
                f"{self.images.directory})"
            )
            raise UnknownImage(f"unknown image {name!r}; the libvirt host's images are {known}")
        return images[name]

    def _flavor(self, name: str) -> LibvirtFlavor:
        flavors = self.settings.flavors
        if name not in flavors:
            raise UnknownFlavor(
                f"unknown flavor {name!r}; the libvirt host's flavors are "
                f"{', '.join(sorted(flavors))} ([vim.libvirt] flavors)"
            )
        return flavors[name]

    def validate_image(self, image: str) -> None:
        self._image(image)

    def validate_flavor(self, flavor: str) -> None:
        self._flavor(flavor)

    # instances --------------------------------------------------------------------------

    def domain_uuid(self, vm_id: str) -> str:
        return str(uuid.uuid5(UUID_NAMESPACE, f"{self.controller_id}/{vm_id}"))

    @staticmethod
    def domain_name(vm_id: str) -> str:
        return DOMAIN_PREFIX + vm_id

    @staticmethod
    def record_of(dom: libvirt.virDomain) -> Record | None:
        """The ESC record in the domain's metadata; None when it has none (not ESC's)."""
        try:
            return parse_record(dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NAMESPACE))
        except libvirt.libvirtError as exc:
            if _code(exc) in (libvirt.VIR_ERR_NO_DOMAIN_METADATA, libvirt.VIR_ERR_NO_DOMAIN):
                return None
            raise

    def _owns(self, record: Record | None, vm_id: str) -> bool:
        return record is not None and record.tags == self.tags(vm_id)

    def _lookup(
        self, conn: libvirt.virConnect, vm_id: str
    ) -> tuple[libvirt.virDomain | None, Record | None]:
        """The domain with this VM's UUID, and its record when it is this controller's."""
        try:
            dom = conn.lookupByUUIDString(self.domain_uuid(vm_id))
        except libvirt.libvirtError as exc:
            if _code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
                return None, None
            raise
        record = self.record_of(dom)
        return dom, record if self._owns(record, vm_id) else None

    def _own(self, conn: libvirt.virConnect, vm_id: str) -> tuple[libvirt.virDomain, Record] | None:
        dom, record = self._lookup(conn, vm_id)
        return (dom, record) if dom is not None and record is not None else None

    def _require(self, conn: libvirt.virConnect, vm_id: str) -> tuple[libvirt.virDomain, Record]:
        found = self._own(conn, vm_id)
        if found is None:
            raise PermanentVimError(
                f"VM {vm_id} does not exist on the libvirt host; create it again"
            )
        return found

    def _set_record(self, dom: libvirt.virDomain, record: Record) -> None:
        flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG
        if dom.isActive():
            flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
        dom.setMetadata(
            libvirt.VIR_DOMAIN_METADATA_ELEMENT, record_xml(record), PREFIX, NAMESPACE, flags
        )

    # life cycle -------------------------------------------------------------------------

    def create_vm(self, spec: VmSpec) -> InstanceStatus:
        check_vm_id(spec.vm_id)
        image = self._image(spec.image)
        flavor = self._flavor(spec.flavor)
        self._check_placement(spec.placement)
        check_volumes(spec.volumes)
        vm_id = spec.vm_id
        with self._vm_locks.hold(vm_id), self._errors(f"create VM {vm_id}"):
            conn = self._conn()
            dom, record = self._lookup(conn, vm_id)
            if dom is not None and record is None:
                raise PermanentVimError(
                    f"VM {vm_id}: libvirt has a domain with its UUID {dom.UUIDString()} that "
                    "is not this controller's; it is left alone"
                )
            if dom is None or record is None:
                dom, record = self._define(conn, spec, image, flavor)
            return self._start(vm_id, dom, record)

    def _define(
        self, conn: libvirt.virConnect, spec: VmSpec, image: Image, flavor: LibvirtFlavor
    ) -> tuple[libvirt.virDomain, Record]:
        vm_id = spec.vm_id
        domain_uuid = self.domain_uuid(vm_id)
        name = self.domain_name(vm_id)
        try:
            conn.lookupByName(name)
        except libvirt.libvirtError as exc:
            if _code(exc) != libvirt.VIR_ERR_NO_DOMAIN:
                raise
        else:
            # Another's domain has the name (domains are found by UUID and record, so
            # the name is only for people): this one's gets the UUID's first part too.
            name = f"{name}-{domain_uuid[:8]}"
        nics, seed_nics, ips = self._nics(conn, spec, domain_uuid)
        seed = nocloud.seed_files(
            vm_id, spec.name, spec.day0_config, self.settings.day0_dir, seed_nics
        )
        directory = self.files.build(vm_id, image, spec.volumes, seed)
        record = Record(self.tags(vm_id), str(directory), ips)
        domain = Domain(
            name=name,
            uuid=domain_uuid,
            domain_type=self.settings.domain_type,
            title=spec.name,
            vcpus=flavor.vcpus,
            memory_mib=flavor.memory_mib,
            seed=directory / SEED,
            console=directory / CONSOLE,
            record=record,
            disk=Disk(directory / OVERLAY) if image.disk is not None else None,
            volumes=tuple(Disk(directory / volume_file(v), v.name[:20]) for v in spec.volumes),
            kernel=image.kernel,
            initrd=image.initrd,
            cmdline=image.cmdline if image.cmdline is not None else self.settings.kernel_cmdline,
            nics=tuple(nics),
        )
        try:
            dom = conn.defineXML(domain_xml(domain))
        except BaseException:
            self.files.remove(vm_id)
            raise
        log.info("VM %s defined as domain %s", vm_id, name, extra={"tags": "create_vm"})
        return dom, record

    def _check_placement(self, placement: Placement) -> None:
        asked = {k: v for k, v in vars(placement).items() if v}
        if asked:
            named = ", ".join(f"{k}={v!r}" for k, v in sorted(asked.items()))
            raise PermanentVimError(
                f"placement {named}: the libvirt driver runs every VM on the one host of "
                f"[vim.libvirt] uri ({self.uri}); leave the placement empty"
            )

    def _nics(
        self, conn: libvirt.virConnect, spec: VmSpec, domain_uuid: str
    ) -> tuple[list[Nic], list[nocloud.SeedNic], tuple[str, ...]]:
        nics, seed_nics, ips = [], [], []
        for index, interface in enumerate(spec.interfaces):
            if interface.floating_ip:
                raise PermanentVimError(
                    f"interface {index}: libvirt has no floating IPs "
                    f"({interface.floating_ip!r}); give a fixed ip instead"
                )
            mac = _mac(domain_uuid, index)
            if interface.network.startswith(BRIDGE_PREFIX):
                kind, source = "bridge", interface.network.removeprefix(BRIDGE_PREFIX)
                network_ip = None
                if not source:
                    raise PermanentVimError(f"interface {index}: name the bridge: bridge:NAME")
            else:
                kind, source = "network", interface.network
                network_ip = self._network_address(conn, source)
            address, gateway = None, None
            if interface.ip:
                address, gateway = self._fixed_address(index, interface.ip, network_ip)
            nics.append(Nic(kind, source, mac, interface.model, interface.vlan))
            seed_nics.append(nocloud.SeedNic(mac, address, gateway if index == 0 else None))
            ips.append(str(address.ip) if address else "")
        return nics, seed_nics, tuple(ips)

    @staticmethod
    def _network_address(
        conn: libvirt.virConnect, name: str
    ) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface | None:
        """The host's address on libvirt network `name` (with its prefix), if it has one."""
        try:
            network = conn.networkLookupByName(name)
        except libvirt.libvirtError as exc:
            if _code(exc) != libvirt.VIR_ERR_NO_NETWORK:
                raise
            known = ", ".join(sorted(conn.listNetworks() + conn.listDefinedNetworks()))
            raise PermanentVimError(
                f"unknown network {name!r}; the libvirt host's networks are {known or 'none'} "
                f"(a host bridge is written {BRIDGE_PREFIX}NAME)"
            ) from None
        root = etree.fromstring(network.XMLDesc(0).encode())
        for ip in root.findall("ip"):
            address = ip.get("address")
            prefix = ip.get("prefix") or ip.get("netmask")
            if address and prefix:
                return ipaddress.ip_interface(f"{address}/{prefix}")
        return None

    @staticmethod
    def _fixed_address(
        index: int, text: str, network: ipaddress.IPv4Interface | ipaddress.IPv6Interface | None
    ) -> tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, str | None]:
        try:
            address = ipaddress.ip_interface(text)
        except ValueError:
            raise PermanentVimError(f"interface {index}: {text!r} is no IP address") from None
        if "/" not in text:
            if network is None:
                raise PermanentVimError(
                    f"interface {index}: give the prefix of {text} (e.g. {text}/24): its "
                    "network does not say it"
                )
            address = ipaddress.ip_interface(f"{text}/{network.network.prefixlen}")
        if network is not None:
            if address.ip not in network.network:
                raise PermanentVimError(
                    f"interface {index}: {address.ip} is not in its network {network.network}"
                )
            return address, str(network.ip)
        return address, None

    def _start(self, vm_id: str, dom: libvirt.virDomain, record: Record) -> InstanceStatus:
        state, reason = dom.state()
        if state == libvirt.VIR_DOMAIN_PAUSED and reason != libvirt.VIR_DOMAIN_PAUSED_STARTING_UP:
            dom.resume()
        elif not dom.isActive():
            try:
                dom.create()
            except libvirt.libvirtError as exc:
                if _transient(exc):
                    raise
                failure = f"libvirt failed to start it: {_message(exc)}"
                self._set_record(dom, replace(record, failure=failure))
                raise PermanentVimError(f"VM {vm_id}: {failure}") from None
            log.info("VM %s started", vm_id, extra={"tags": "start_vm"})
        status = self._wait_running(vm_id, dom, record)
        if record.failure:
            self._set_record(dom, replace(record, failure=""))
            status = self._status(vm_id, dom, self.record_of(dom) or record)
        return status

    def _wait_running(self, vm_id: str, dom: libvirt.virDomain, record: Record) -> InstanceStatus:
        deadline = time.monotonic() + self.settings.create_timeout
        while True:
            status = self._status(vm_id, dom, replace(record, failure=""))
            if status.state is InstanceState.RUNNING:
                return status
            if status.state in (InstanceState.ERROR, InstanceState.STOPPED):
                failure = f"it stopped as it started: {status.detail or 'shut off'}"
                self._set_record(dom, replace(record, failure=failure))
                raise PermanentVimError(f"VM {vm_id}: {failure}; console: {self._console(record)}")
            if time.monotonic() >= deadline:
                raise TransientVimError(
                    f"VM {vm_id} was not running within {self.settings.create_timeout:g} s "
                    f"([vim.libvirt] create_timeout): {status.detail or status.state.value}"
                )
            time.sleep(POLL_INTERVAL)

    @staticmethod
    def _console(record: Record) -> str:
        if not record.storage:
            return "(none)"
        try:
            text = (Path(record.storage) / CONSOLE).read_text(errors="replace")
        except OSError:
            return "(none)"
        return text[-500:].strip() or "(empty)"

    def _stop(self, vm_id: str, dom: libvirt.virDomain) -> None:
        if not dom.isActive():
            return
        timeout = self.settings.shutdown_timeout
        if dom.state()[0] != libvirt.VIR_DOMAIN_PAUSED and timeout > 0:
            try:
                dom.shutdown()
            except libvirt.libvirtError as exc:
                if _code(exc) != libvirt.VIR_ERR_OPERATION_INVALID:  # it stopped meanwhile
                    raise
            if self._wait(lambda: not dom.isActive(), timeout):
                log.info("VM %s shut down", vm_id, extra={"tags": "stop_vm"})
                return
            log.warning(
                "VM %s did not power off within %g s of the shutdown request: forced off",
                vm_id,
                timeout,
                extra={"tags": "stop_vm"},
            )
        self._destroy(dom)

    @staticmethod
    def _destroy(dom: libvirt.virDomain) -> None:
        try:
            dom.destroy()
        except libvirt.libvirtError as exc:
            if _code(exc) != libvirt.VIR_ERR_OPERATION_INVALID:  # already off
                raise

    @staticmethod
    def _wait(condition: Callable[[], bool], seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while not condition():
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_INTERVAL)
        return True

    def start_vm(self, vm_id: str) -> InstanceStatus:
        check_vm_id(vm_id)
        with self._vm_locks.hold(vm_id), self._errors(f"start VM {vm_id}"):
            dom, record = self._require(self._conn(), vm_id)
            return self._start(vm_id, dom, record)

    def stop_vm(self, vm_id: str) -> InstanceStatus:
        check_vm_id(vm_id)
        with self._vm_locks.hold(vm_id), self._errors(f"stop VM {vm_id}"):
            found = self._own(self._conn(), vm_id)
            if found is None:
                return InstanceStatus(vm_id, InstanceState.ABSENT)
            dom, record = found
            self._stop(vm_id, dom)
            return self._status(vm_id, dom, record)

    def power_off(self, vm_id: str) -> InstanceStatus:
        check_vm_id(vm_id)
        # Without the VM's lock: a fence must not wait for a graceful stop (up to
        # shutdown_timeout) another call is in, and destroying the domain under it only
        # ends that wait early.
        with self._errors(f"power off VM {vm_id}"):
            found = self._own(self._conn(), vm_id)
            if found is None:
                return InstanceStatus(vm_id, InstanceState.ABSENT)
            dom, record = found
            if dom.isActive():
                self._destroy(dom)
                log.info("VM %s powered off (destroyed)", vm_id, extra={"tags": "power_off"})
            return self._status(vm_id, dom, record)

    def reboot_vm(self, vm_id: str) -> InstanceStatus:
        check_vm_id(vm_id)
        with self._vm_locks.hold(vm_id), self._errors(f"reboot VM {vm_id}"):
            dom, record = self._require(self._conn(), vm_id)
            self._stop(vm_id, dom)
            return self._start(vm_id, dom, record)

    def delete_vm(self, vm_id: str) -> None:
        check_vm_id(vm_id)
        with self._vm_locks.hold(vm_id), self._errors(f"delete VM {vm_id}"):
            dom, record = self._lookup(self._conn(), vm_id)
            if dom is None:
                self.files.remove(vm_id)  # what a creation interrupted before its define left
                return
            if record is None:
                return  # another's domain: never touched
            if dom.isActive():
                self._destroy(dom)
            dom.undefineFlags(
                libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
            )
            self.files.remove(vm_id, Path(record.storage) if record.storage else None)
            log.info("VM %s deleted", vm_id, extra={"tags": "delete_vm"})

    # queries ----------------------------------------------------------------------------

    def status(self, vm_id: str) -> InstanceStatus:
        check_vm_id(vm_id)
        with self._errors(f"read the status of VM {vm_id}"):
            found = self._own(self._conn(), vm_id)
            if found is None:
                return InstanceStatus(vm_id, InstanceState.ABSENT)
            return self._status(vm_id, *found)

    def _status(self, vm_id: str, dom: libvirt.virDomain, record: Record) -> InstanceStatus:
        try:
            state, reason = dom.state()
        except libvirt.libvirtError as exc:
            if _code(exc) == libvirt.VIR_ERR_NO_DOMAIN:  # deleted meanwhile
                return InstanceStatus(vm_id, InstanceState.ABSENT)
            raise
        kind, detail = _classify(state, reason, record)
        if kind is not InstanceState.RUNNING:
            return InstanceStatus(vm_id, kind, None, detail)
        ips = self._addresses(dom, record)
        first = ips[0] if ips and ips[0] else None
        return InstanceStatus(vm_id, kind, first, detail, tuple(ip for ip in ips if ip))

    def _addresses(self, dom: libvirt.virDomain, record: Record) -> list[str]:
        """Each NIC's address: its fixed one, else what libvirt's DHCP leased it ("")."""
        ips = list(record.ips)
        if "" not in ips:
            return ips
        try:
            leases = dom.interfaceAddresses(libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE)
        except libvirt.libvirtError:
            return ips  # no lease known (a bridge, or a host without libvirt's DHCP)
        by_mac = {
            (lease.get("hwaddr") or "").lower(): [a["addr"] for a in lease.get("addrs") or []]
            for lease in leases.values()
        }
        uuid_text = dom.UUIDString()
        for index, ip in enumerate(ips):
            if not ip and by_mac.get(_mac(uuid_text, index)):
                ips[index] = by_mac[_mac(uuid_text, index)][0]
        return ips

    def vm_metadata(self, vm_id: str) -> dict[str, str]:
        check_vm_id(vm_id)
        with self._errors(f"read the metadata of VM {vm_id}"):
            _, record = self._require(self._conn(), vm_id)
            return dict(record.metadata)

    def set_vm_metadata(self, vm_id: str, changes: Mapping[str, str | None]) -> None:
        check_vm_id(vm_id)
        for key in changes:
            check_metadata_key(key)
        with self._vm_locks.hold(vm_id), self._errors(f"write the metadata of VM {vm_id}"):
            dom, record = self._require(self._conn(), vm_id)
            metadata = dict(record.metadata)
            for key, value in changes.items():
                if value is None:
                    metadata.pop(key, None)
                else:
                    metadata[key] = str(value)
            # Into the persistent definition too: it outlives the domain's runs and the host's
            # reboots.
            self._set_record(dom, replace(record, metadata=metadata))

    def list_instances(self) -> list[str]:
        with self._errors("list the domains"):
            found = []
            for dom in self._conn().listAllDomains(0):
                record = self.record_of(dom)
                if record is None or record.tags.get(TAG_CONTROLLER) != self.controller_id:
                    continue
                vm_id = record.tags.get(TAG_VM, "")
                if self._owns(record, vm_id):
                    found.append(vm_id)
            return sorted(found)

    def check(self) -> None:
        with self._errors(f"be reached ([vim.libvirt] uri = {self.uri!r})"):
            conn = self._conn()
            conn.getLibVersion()
            if conn.getType() == "QEMU":
                self._check_domain_type(conn)
        try:
            self.images.images()
        except VimError as exc:
            raise PermanentVimError(f"{exc} ([vim.libvirt] image_dir)") from None
        # A real write, not os.access() (which says yes to root whatever the modes), where
        # the VMs' directories are or, until the first VM makes it, will be made.
        where = self.files.directory
        while not where.exists() and where != where.parent:
            where = where.parent
        with os_errors(
            f"write in {where} for {self.files.directory} ([vim.libvirt] instance_dir): "
            "make it writable by the user ESC runs as"
        ):
            fd, probe = tempfile.mkstemp(prefix=".check-", dir=where)
            os.close(fd)
            os.unlink(probe)
        if shutil.which("qemu-img") is None:
            raise PermanentVimError(
                "qemu-img is not installed on the controller's host; the libvirt driver makes "
                "the VMs' qcow2 files with it (Debian: apt-get install qemu-utils)"
            )

    def _check_domain_type(self, conn: libvirt.virConnect) -> None:
        """The QEMU host can run guests of [vim.libvirt] domain_type (kvm needs /dev/kvm)."""
        capabilities = etree.fromstring(conn.getCapabilities().encode())
        types = sorted(set(capabilities.xpath("/capabilities/guest/arch/domain/@type")))
        wanted = self.settings.domain_type
        if wanted not in types:
            raise PermanentVimError(
                f"libvirt at {self.uri} cannot run {wanted} guests (it can run: "
                f"{', '.join(types) or 'none'}); set [vim.libvirt] domain_type to one of those"
            )

    def recover(self) -> None:
        """Remove what creations interrupted by a crash left half-built."""
        self.files.sweep()
