"""The csp driver: each VM a service of a Cisco CSP 2100/5000, over its REST API.

Ownership. A CSP service holds no metadata to tag it with, so what marks it as
this controller's is its name, the one thing CSP keeps that the driver chooses:
`esc-<controller>-<VM id>`, where <controller> is the first 10 hex digits of the
SHA-256 of the controller's id. A digest of fixed length and alphabet keeps the
name short and decodes without doubt (ids may hold '-'); a service named any
other way is never listed, powered or deleted, because the driver only ever
addresses the names it makes.

Images are files of the CSP's repository (a service's iso_name); flavors are
[vim.csp] flavors (CSP has none). Day-0 files go on one ISO image (see
esc.vim.day0_iso) uploaded to the repository as `<service>-day0.iso` and named
by the service's day0_filename, so any number of files keep their names and a
cloud-init image finds its NoCloud data (day0_on_cd: the files are the CD's, the
driver writes no cloud-init of its own). The interfaces are the service's vNICs
(network_name, access VLAN, NIC model); the first one's fixed address, without
its prefix, is the service's `ip`, the one address CSP takes, and it is reported
whatever the service's power (CSP keeps it in the running configuration). CSP has
no floating IPs. Before a service is created the CSP resource of the placement
host (else [vim.csp] host) must have the free CPUs and memory the flavor asks
for, by CSP's own counts.

No metadata. A service's fields (name, iso_name, numcpu, memory, disk_size,
power, vNICs, serial ports, ip, the day-0 file) are what CSP runs; once it is
made only power, numcpu and serial_ports can be changed, none of them free text.
So the driver keeps no metadata on a VM (vm_metadata is not implemented), and
nothing is written into those fields to stand for it.

States: CSP keeps what was asked (the running configuration's power) and, in its
operational data, what the service does (deploying, deployed or error, and its
actual power). A service asked on is RUNNING once deployed and powered on,
BUILDING before, ERROR with CSP's reason when it failed; asked off, STOPPED once
powered off. A CSP that answers no operational data is taken at its running
power. CSP deletes only a powered-off service: delete powers it off, waits
([vim.csp] stop_timeout), then deletes it and its day-0 file.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from esc.config import ConfigError, CspFlavor, VimSettings, read_secret
from esc.vim.base import (
    VM_ID,
    InstanceState,
    InstanceStatus,
    Interface,
    PermanentVimError,
    TransientVimError,
    UnknownFlavor,
    UnknownImage,
    VimDriver,
    VmSpec,
    check_vm_id,
)
from esc.vim.csp_client import CspClient, CspRefusal, member
from esc.vim.day0_iso import Day0Error, day0_iso

log = logging.getLogger(__name__)

PREFIX = "esc"
CONTROLLER_DIGITS = 10
# CSP does not publish its limit on a service name; the driver's names stay within this.
SERVICE_NAME_MAX = 64
DAY0_SUFFIX = "-day0.iso"
# The driver's own services and their day-0 files: never offered as images.
_OWN_FILE = re.compile(rf"{PREFIX}-[0-9a-f]{{{CONTROLLER_DIGITS}}}-.+{re.escape(DAY0_SUFFIX)}\Z")
# How often a wait for a service's state asks the CSP: soon at first, then less.
POLL_FIRST = 0.05
POLL_MAX = 1.0
# Images named in an unknown-image error, at most (a repository may hold many files).
IMAGES_SHOWN = 20

SERVICES = "/api/running/services"


def controller_digest(controller_id: str) -> str:
    """The part of a service name that names its controller."""
    return hashlib.sha256(controller_id.encode()).hexdigest()[:CONTROLLER_DIGITS]


class CspVim(VimDriver):
    name = "csp"
    day0_on_cd = True

    def __init__(
        self,
        client: CspClient,
        *,
        host: str = "csp-2100",
        network: str = "",
        flavors: dict[str, CspFlavor] | None = None,
        boot_timeout: float = 300.0,
        stop_timeout: float = 120.0,
    ) -> None:
        self.client = client
        self.host, self.network = host, network
        self.flavors = dict(flavors if flavors is not None else VimSettings().csp.flavors)
        self.boot_timeout, self.stop_timeout = boot_timeout, stop_timeout

    @classmethod
    def from_settings(cls, data_dir: Path, settings: VimSettings, home: Path) -> CspVim:
        csp = settings.csp
        problem = csp.problem()
        if problem:
            raise PermanentVimError(problem)

        def password() -> str:
            try:
                return read_secret(
                    home,
                    csp.password_file,
                    csp.password_env,
                    "[vim.csp] password_file / password_env",
                )
            except ConfigError as exc:
                raise PermanentVimError(str(exc)) from None

        client = CspClient(
            csp.url,
            csp.username,
            password,
            cacert=home / csp.cacert if csp.cacert else None,
            insecure=csp.insecure,
            timeout=csp.timeout,
        )
        return cls(
            client,
            host=csp.host,
            network=csp.network,
            flavors=csp.flavors,
            boot_timeout=csp.boot_timeout,
            stop_timeout=csp.stop_timeout,
        )

    # names --------------------------------------------------------------------------------

    @property
    def _own_prefix(self) -> str:
        return f"{PREFIX}-{controller_digest(self.controller_id)}-"

    def service_name(self, vm_id: str) -> str:
        """The name of the CSP service of this controller's VM `vm_id`."""
        check_vm_id(vm_id)
        name = self._own_prefix + vm_id
        if len(name) > SERVICE_NAME_MAX:
            raise PermanentVimError(
                f"VM id {vm_id!r} is too long for the CSP: its service name {name} has "
                f"{len(name)} characters, CSP service names at most {SERVICE_NAME_MAX}"
            )
        return name

    @staticmethod
    def _path(name: str) -> str:
        return f"{SERVICES}/service/{quote(name, safe='')}"

    # images and flavors -------------------------------------------------------------------

    def repository_files(self) -> list[str]:
        """Every file of the CSP's repository, as CSP lists them."""
        answer = self.client.call(
            "POST",
            "/api/operational/repository/_operations/get_images",
            "list the files of its repository",
        )
        if answer is None:
            return []
        try:
            images = member(member(answer, "output"), "image")
            images = images if isinstance(images, list) else [images]
            return [str(image["name"]) for image in images]
        except (KeyError, TypeError):
            raise TransientVimError(f"the CSP sent a malformed file list: {answer!r}") from None

    def validate_image(self, image: str) -> None:
        files = self.repository_files()
        if image in files:
            return
        images = sorted(f for f in files if not _OWN_FILE.match(f))
        shown = ", ".join(images[:IMAGES_SHOWN]) or "none"
        if len(images) > IMAGES_SHOWN:
            shown += f" and {len(images) - IMAGES_SHOWN} more"
        raise UnknownImage(
            f"unknown image {image!r}; the CSP's images are {shown} (upload the image to "
            "the CSP's repository, or name one of these)"
        )

    def _flavor(self, flavor: str) -> CspFlavor:
        try:
            return self.flavors[flavor]
        except KeyError:
            raise UnknownFlavor(
                f"unknown flavor {flavor!r}; the CSP's flavors ([vim.csp] flavors) are "
                f"{', '.join(sorted(self.flavors))}"
            ) from None

    def validate_flavor(self, flavor: str) -> None:
        self._flavor(flavor)

    # life cycle ---------------------------------------------------------------------------

    def create_vm(self, spec: VmSpec) -> InstanceStatus:
        flavor = self._flavor(spec.flavor)
        name = self.service_name(spec.vm_id)
        running = self._running_config(name)
        if running is None:
            body = self._service_body(name, spec, flavor)
            self.validate_image(spec.image)
            self._check_capacity(spec.placement.host or self.host, name, flavor)
            if spec.day0_config:
                body["day0_filename"] = body["day0-dest-filename"] = self._upload_day0(
                    name, spec.day0_config
                )
            try:
                self.client.call("POST", SERVICES, f"create service {name}", {"service": body})
            except CspRefusal as exc:
                # Made meanwhile (another call for the same VM, or a read that missed it):
                # the same VM, not a duplicate.
                if "data-exists" not in exc.tags:
                    if spec.day0_config:
                        self._remove_day0(name)  # refused: nothing of it is left
                    raise
            log.info("CSP service %s created", name, extra={"tags": "create_vm"})
        elif running.get("power") == "off":
            self._power(name, "on")
        return self._wait_for(spec.vm_id, InstanceState.RUNNING)

    def start_vm(self, vm_id: str) -> InstanceStatus:
        name = self.service_name(vm_id)
        running = self._require(vm_id, name)
        if running.get("power") == "off":
            self._power(name, "on")
        return self._wait_for(vm_id, InstanceState.RUNNING)

    def stop_vm(self, vm_id: str) -> InstanceStatus:
        name = self.service_name(vm_id)
        running = self._running_config(name)
        if running is None:
            return InstanceStatus(vm_id, InstanceState.ABSENT)
        if running.get("power") != "off":
            self._power(name, "off")
        return self._wait_for(vm_id, InstanceState.STOPPED)

    def reboot_vm(self, vm_id: str) -> InstanceStatus:
        self._require(vm_id, self.service_name(vm_id))
        self.stop_vm(vm_id)
        return self.start_vm(vm_id)

    def delete_vm(self, vm_id: str) -> None:
        name = self.service_name(vm_id)
        running = self._running_config(name)
        if running is not None:
            if running.get("power") != "off":
                self._power(name, "off")
            self._wait_for(vm_id, InstanceState.STOPPED)
            self._delete_service(name)
            log.info("CSP service %s deleted", name, extra={"tags": "delete_vm"})
        if running is None or running.get("day0_filename") == name + DAY0_SUFFIX:
            self._remove_day0(name)

    def _delete_service(self, name: str) -> None:
        # A CSP that reports a service off before it lets go of it refuses it as in use
        # for a moment: ask again until stop_timeout, then pass on its words.
        deadline = time.monotonic() + self.stop_timeout
        delay = POLL_FIRST
        while True:
            try:
                self.client.call(
                    "DELETE", self._path(name), f"delete service {name}", missing_ok=True
                )
                return
            except CspRefusal as exc:
                if "in-use" not in exc.tags or time.monotonic() >= deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, POLL_MAX)

    # queries ------------------------------------------------------------------------------

    def status(self, vm_id: str) -> InstanceStatus:
        name = self.service_name(vm_id)
        running = self._running_config(name)
        if running is None:
            return InstanceStatus(vm_id, InstanceState.ABSENT)
        operational = self.client.call(
            "GET",
            f"/api/operational/services/service/{quote(name, safe='')}",
            f"tell the state of service {name}",
            missing_ok=True,
        )
        return self._status(vm_id, running, _service_of(operational))

    def list_instances(self) -> list[str]:
        answer = self.client.call("GET", SERVICES, "list its services")
        if answer is None:
            return []  # CSP answers no body when it has no service
        try:
            services = member(member(answer, "services"), "service")
            services = services if isinstance(services, list) else [services]
            names = [str(s["name"]) for s in services]
        except (KeyError, TypeError):
            raise TransientVimError(f"the CSP sent a malformed service list: {answer!r}") from None
        prefix = self._own_prefix
        return sorted(
            n[len(prefix) :]
            for n in names
            if n.startswith(prefix) and VM_ID.match(n[len(prefix) :])
        )

    def check(self) -> None:
        resource = self._resource(self.host)
        if "ram_total_mb" not in resource or "num_cpus_total" not in resource:
            raise PermanentVimError(
                f"{self.client.url} answers, but not as a CSP does: its resource {self.host} "
                "has no ram_total_mb or num_cpus_total; check [vim.csp] url"
            )

    # the service's state ------------------------------------------------------------------

    def _running_config(self, name: str) -> dict[str, Any] | None:
        answer = self.client.call("GET", self._path(name), f"read service {name}", missing_ok=True)
        return _service_of(answer)

    def _require(self, vm_id: str, name: str) -> dict[str, Any]:
        running = self._running_config(name)
        if running is None:
            raise PermanentVimError(
                f"VM {vm_id} does not exist on the CSP (no service {name}); create it again"
            )
        return running

    @staticmethod
    def _status(
        vm_id: str, running: dict[str, Any], operational: dict[str, Any] | None
    ) -> InstanceStatus:
        asked_on = running.get("power", "on") != "off"  # CSP powers a service on by default
        state = operational.get("state") if operational else None
        power = operational.get("power_state") if operational else None
        # The address is the running configuration's: known whatever the power.
        ips = (str(running["ip"]),) if running.get("ip") else ()
        if not asked_on:
            if power in (None, "off"):
                return InstanceStatus(vm_id, InstanceState.STOPPED, ips=ips)
            return InstanceStatus(
                vm_id, InstanceState.RUNNING, detail="the CSP is powering it off", ips=ips
            )
        if state == "error":
            reason = str(operational.get("error_message") or "") if operational else ""
            return InstanceStatus(
                vm_id,
                InstanceState.ERROR,
                detail=reason or "the CSP reports the service in error",
                ips=ips,
            )
        if state not in (None, "deployed") or power not in (None, "on"):
            detail = f"the CSP reports it {state or power}"
            return InstanceStatus(vm_id, InstanceState.BUILDING, detail=detail, ips=ips)
        return InstanceStatus(vm_id, InstanceState.RUNNING, ips[0] if ips else None, ips=ips)

    def _wait_for(self, vm_id: str, wanted: InstanceState) -> InstanceStatus:
        """The status once the CSP reports `wanted`; ERROR raises CSP's reason."""
        running = wanted is InstanceState.RUNNING
        timeout = self.boot_timeout if running else self.stop_timeout
        setting = "boot_timeout" if running else "stop_timeout"
        deadline = time.monotonic() + timeout
        delay = POLL_FIRST
        while True:
            status = self.status(vm_id)
            if status.state is wanted:
                return status
            name = self.service_name(vm_id)
            if status.state is InstanceState.ERROR:
                raise PermanentVimError(f"the CSP failed service {name}: {status.detail}")
            if status.state is InstanceState.ABSENT:
                raise PermanentVimError(
                    f"VM {vm_id} does not exist on the CSP any more (service {name} was "
                    "deleted meanwhile); create it again"
                )
            left = deadline - time.monotonic()
            if left <= 0:
                raise TransientVimError(
                    f"the CSP did not report service {name} {wanted.value.lower()} within "
                    f"{timeout:g} s ([vim.csp] {setting}); it is {status.state.value}: "
                    f"{status.detail}"
                )
            time.sleep(min(delay, left))
            delay = min(delay * 2, POLL_MAX)

    def _power(self, name: str, power: str) -> None:
        self.client.call(
            "PATCH",
            self._path(name),
            f"power service {name} {power}",
            {"service": {"power": power}},
        )

    # what a new service asks for ----------------------------------------------------------

    def _service_body(self, name: str, spec: VmSpec, flavor: CspFlavor) -> dict[str, Any]:
        """The service CSP is asked to create; refuses what a CSP service cannot have."""
        if spec.volumes:
            names = ", ".join(v.name for v in spec.volumes)
            raise PermanentVimError(
                f"VM {spec.vm_id} asks for data volumes ({names}): a CSP service has the one "
                "disk of its flavor (disk_gb), the csp driver makes no other"
            )
        placement = spec.placement
        if placement.zone or placement.datastore or placement.cluster:
            raise PermanentVimError(
                f"VM {spec.vm_id} asks for an availability zone, datastore or cluster: a CSP "
                "has none of them; its placement may name a CSP host only"
            )
        # One CSP is one host: its VMs are together whatever is asked, so only keeping
        # them apart by force cannot be done.
        if placement.group and placement.group_policy in ("", "anti-affinity"):
            raise PermanentVimError(
                f"VM {spec.vm_id} is in placement group {placement.group!r} with anti-affinity: "
                "a CSP is one host and cannot keep its VMs apart; use affinity or "
                "soft-anti-affinity, or no group"
            )
        body: dict[str, Any] = {
            "name": name,
            "iso_name": spec.image,
            "numcpu": flavor.numcpu,
            "memory": flavor.memory_mb,
            "disk_size": flavor.disk_gb,
            "power": "on",
        }
        interfaces = spec.interfaces or ((Interface(self.network),) if self.network else ())
        vnics = []
        for nic, interface in enumerate(interfaces):
            if interface.floating_ip:
                raise PermanentVimError(
                    f"VM {spec.vm_id} asks for floating IP {interface.floating_ip}: a CSP has "
                    "no floating IPs; a service is reached at its own address, the fixed ip "
                    "of its first interface: ask for no floating IP, and give that address"
                )
            if interface.ip and nic > 0:
                raise PermanentVimError(
                    f"VM {spec.vm_id} asks for a fixed address on interface {nic}: CSP takes one "
                    "address per service (its ip), on the first interface"
                )
            vnic: dict[str, Any] = {
                "nic": nic,
                "type": "access",
                "tagged": "false",
                "model": interface.model,
                "network_name": interface.network,
            }
            if interface.vlan is not None:
                vnic["vlan"] = str(interface.vlan)
            vnics.append(vnic)
        if vnics:
            body["vnics"] = {"vnic": vnics}
        if interfaces and interfaces[0].ip:
            body["ip"] = _plain_address(spec.vm_id, interfaces[0].ip)
        return body

    def _resource(self, host: str) -> dict[str, Any]:
        answer = self.client.call(
            "GET",
            f"/api/running/resources/resource/{quote(host, safe='')}",
            f"read its resource {host}",
            missing_ok=True,
        )
        try:
            resource = member(answer, "resource")
        except KeyError:
            resource = None
        if not isinstance(resource, dict):
            raise PermanentVimError(
                f"the CSP at {self.client.url} has no resource {host!r}: set [vim.csp] host "
                "(or the VM's placement host) to its resource, csp-2100 on a CSP 2100"
            )
        return resource

    def _check_capacity(self, host: str, name: str, flavor: CspFlavor) -> None:
        resource = self._resource(host)
        try:
            cpus_total, cpus_used = int(resource["num_cpus_total"]), int(resource["num_cpus_used"])
            ram_total, ram_used = int(resource["ram_total_mb"]), int(resource["ram_used_mb"])
        except (KeyError, TypeError, ValueError):
            # Without its counts the CSP is left to refuse what it cannot hold.
            log.warning("CSP resource %s gives no CPU and memory counts: %s", host, resource)
            return
        cpus_free, ram_free = cpus_total - cpus_used, ram_total - ram_used
        if flavor.numcpu > cpus_free or flavor.memory_mb > ram_free:
            raise PermanentVimError(
                f"the CSP host {host} has no room for service {name}: it needs "
                f"{flavor.numcpu} CPUs and {flavor.memory_mb} MiB, and the CSP counts "
                f"{cpus_free} of {cpus_total} CPUs free (num_cpus_used {cpus_used}) and "
                f"{ram_free} of {ram_total} MiB free (ram_used_mb {ram_used}); delete "
                "services there or use a smaller flavor"
            )

    # day-0 files --------------------------------------------------------------------------

    def _upload_day0(self, name: str, files: dict[str, Any]) -> str:
        file_name = name + DAY0_SUFFIX
        try:
            data = day0_iso({str(k): str(v) for k, v in files.items()})
        except Day0Error as exc:
            raise PermanentVimError(str(exc)) from None
        self.client.upload(file_name, data, f"upload {file_name} to its repository")
        return file_name

    def _remove_day0(self, name: str) -> None:
        file_name = name + DAY0_SUFFIX
        try:
            self.client.call(
                "POST",
                "/api/operational/repository/_operations/delete_image",
                f"remove {file_name} from its repository",
                {"input": {"name": file_name}},
                missing_ok=True,
            )
        except (PermanentVimError, TransientVimError) as exc:
            # The service is gone; only a file is left, named for an operator to find.
            log.warning("the day-0 file %s stays in the CSP's repository: %s", file_name, exc)


def _plain_address(vm_id: str, ip: str) -> str:
    """The address of `ip` (IP or IP/PREFIX): the service's ip holds no prefix."""
    try:
        return str(ipaddress.ip_interface(ip).ip)
    except ValueError:
        raise PermanentVimError(f"VM {vm_id}: fixed ip {ip!r} is no IP address") from None


def _service_of(answer: Any) -> dict[str, Any] | None:
    """The `service` of a CSP answer, None for no answer."""
    if answer is None:
        return None
    try:
        service = member(answer, "service")
    except KeyError:
        raise TransientVimError(f"the CSP sent a malformed service: {answer!r}") from None
    if not isinstance(service, dict):
        raise TransientVimError(f"the CSP sent a malformed service: {answer!r}")
    return service
