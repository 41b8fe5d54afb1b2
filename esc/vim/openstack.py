"""The openstack driver: each VM a nova server in one OpenStack project.

Through openstacksdk on a keystoneauth session ([vim.openstack]): a keystone v3
password login scoped to the project, re-authenticated by keystoneauth when the
token expires (a 401 is retried once with a new token, never reported).

Whose a server is: its nova metadata carries this controller's tags
(`esc-controller`, `esc-vm-id`). Nova lets only admins filter servers by
metadata (it drops an unknown filter silently for others), so the driver lists
the project's servers and matches their metadata itself; a server without both
tags, or with another controller's, is never listed, stopped or deleted. What
set_vm_metadata records (a node VM's parameters, the pair's witness record) is
kept in the same metadata under keys of its own (esc.vim.openstack_metadata).

How a VmSpec becomes a server: the image and flavor by name or id; each
interface a port nova makes on the named network (with the fixed IP asked
for), its floating IP an existing one of the project associated with that port
once the server is ACTIVE (taken over from wherever it was: an upgraded VM
keeps its predecessor's); each volume a blank cinder volume nova creates with
the server and deletes with it, tagged with the volume's name (the guest finds
it by that tag in the config drive's device metadata); the placement's zone as
the availability zone, its host in nova's `zone:host` form (which nova's
default policy leaves to admins), its group a nova server group of the
group's policy; the day-0 files as cloud-init user data
(`#cloud-config` write_files under [vim.openstack] day0_dir) on a config drive.

What reaches the engine: quota exceeded, a refusal (4xx), an unknown image,
flavor or network, a server nova put in ERROR (with nova's fault message) are
PermanentVimErrors carrying the cloud's own words; 5xx, 429, timeouts,
connection refused or reset are TransientVimErrors.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from keystoneauth1 import exceptions as ksa
from keystoneauth1 import session as ksa_session
from keystoneauth1.identity import v3
from openstack import connection
from openstack import exceptions as sdk

from esc.config import ConfigError, OpenStackSettings, VimSettings, read_secret
from esc.vim.base import (
    TAG_CONTROLLER,
    TAG_VM,
    InstanceState,
    InstanceStatus,
    Interface,
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
from esc.vim.openstack_metadata import decode, plan

# Nova's server statuses by what they mean here; any other (BUILD, REBOOT,
# HARD_REBOOT, RESIZE, MIGRATING, ...) is a change nova is still making.
RUNNING = frozenset({"ACTIVE"})
STOPPED = frozenset({"SHUTOFF", "STOPPED", "PAUSED", "SUSPENDED", "SHELVED", "SHELVED_OFFLOADED"})
FAILED = frozenset({"ERROR", "UNKNOWN"})
GONE = frozenset({"DELETED", "SOFT_DELETED"})
# How a stopped server of each status is started again.
RESUME = {
    "SHUTOFF": "start_server",
    "STOPPED": "start_server",
    "PAUSED": "unpause_server",
    "SUSPENDED": "resume_server",
    "SHELVED": "unshelve_server",
    "SHELVED_OFFLOADED": "unshelve_server",
}
# A day-0 file name is a plain name: it becomes a path under day0_dir in the VM.
DAY0_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}\Z")
# Nova's server group policies (the soft ones prefer, the others insist).
GROUP_POLICIES = ("anti-affinity", "affinity", "soft-anti-affinity", "soft-affinity")
# Longest list of a project's images, flavors or networks put into an error message.
NAMES_SHOWN = 40
# What the secret is read by, named in its errors.
PASSWORD_SETTINGS = "[vim.openstack] password_file / password_env"


def state_of(server: Any) -> InstanceState:
    status = (server.status or "").upper()
    if status in GONE:
        return InstanceState.ABSENT
    if status in FAILED:
        return InstanceState.ERROR
    if server.task_state:
        return InstanceState.BUILDING
    if status in RUNNING:
        return InstanceState.RUNNING
    if status in STOPPED:
        return InstanceState.STOPPED
    return InstanceState.BUILDING


def fault_of(server: Any) -> str:
    fault = server.fault or {}
    message = fault.get("message") if isinstance(fault, dict) else str(fault)
    if (server.status or "").upper() == "UNKNOWN":
        return message or "nova cannot reach the server's compute host (status UNKNOWN)"
    return message or f"nova put the server in {server.status} without a fault message"


def cloud_config(files: dict[str, Any], directory: str) -> str:
    """The day-0 files as cloud-init user data: one write_files entry each, root's
    only, since day-0 files often hold credentials or licences."""
    entries = []
    for name, content in sorted(files.items()):
        if not isinstance(name, str) or not DAY0_NAME.match(name):
            raise PermanentVimError(
                f"day0_config file name {name!r} is not a plain file name (letters, digits, "
                "'.', '_', '-'): it is written under [vim.openstack] day0_dir in the VM"
            )
        text = content if isinstance(content, str) else json.dumps(content)
        entries.append(
            {
                "path": f"{directory.rstrip('/')}/{name}",
                "content": text,
                "owner": "root:root",
                "permissions": "0600",
            }
        )
    return "#cloud-config\n" + yaml.safe_dump({"write_files": entries}, sort_keys=False)


def fixed_ip(interface: Interface) -> str | None:
    """The interface's fixed IP as neutron takes it: the address alone (a node's comes
    with its prefix, which is the subnet's on OpenStack)."""
    if not interface.ip:
        return None
    try:
        return str(ipaddress.ip_interface(interface.ip).ip)
    except ValueError:
        raise PermanentVimError(
            f"interface on network {interface.network!r}: fixed IP {interface.ip!r} is no IP "
            "address"
        ) from None


def names(items: list[str]) -> str:
    shown = sorted(set(items))
    if not shown:
        return "none"
    more = len(shown) - NAMES_SHOWN
    listed = ", ".join(shown[:NAMES_SHOWN])
    return f"{listed} and {more} more" if more > 0 else listed


def is_quota(status: int | None, message: str) -> bool:
    return status in (403, 413) and "quota" in message.lower()


def conflict_passes(message: str) -> bool:
    """Nova's 409 for a server busy with another change ("while it is in task_state
    powering-off"): asking again once it is done works."""
    return "task_state" in message or "vm_state" in message


def http_message(exc: sdk.HttpException) -> str:
    """The service's own words from an SDK error (nova's "Quota exceeded for ...")."""
    return str(exc.details or exc.message or exc).strip()


class OpenStackVim(VimDriver):
    name = "openstack"

    def __init__(self, settings: OpenStackSettings, home: Path) -> None:
        missing = settings.missing()
        if missing:
            raise PermanentVimError(
                f"the openstack driver needs [vim.openstack] {', '.join(missing)} in esc.toml"
            )
        self.settings = settings
        self.home = home
        self.cacert = home / settings.cacert if settings.cacert else None
        self._connection: connection.Connection | None = None
        self._guard = threading.Lock()
        # vm id -> server id, as found last: a GET by id instead of listing the project.
        self._server_ids: dict[str, str] = {}

    @classmethod
    def from_settings(cls, data_dir: Path, settings: VimSettings, home: Path) -> OpenStackVim:
        return cls(settings.openstack, home)

    # the connection and its errors ------------------------------------------------------

    @property
    def conn(self) -> connection.Connection:
        with self._guard:
            if self._connection is None:
                self._connection = self._connect()
            return self._connection

    def _connect(self) -> connection.Connection:
        s = self.settings
        try:
            password = read_secret(self.home, s.password_file, s.password_env, PASSWORD_SETTINGS)
        except ConfigError as exc:
            raise PermanentVimError(str(exc)) from None
        auth = v3.Password(
            auth_url=s.auth_url,
            username=s.username,
            password=password,
            project_name=s.project_name,
            user_domain_name=s.user_domain_name,
            project_domain_name=s.project_domain_name,
        )
        verify: bool | str = str(self.cacert) if self.cacert else s.verify
        session = ksa_session.Session(auth=auth, verify=verify, timeout=s.timeout)
        # No retries inside the SDK: a transient failure reaches the engine, which retries
        # with its own backoff and counts the attempts ([engine] vim_attempts).
        return connection.Connection(
            session=session,
            region_name=s.region_name or None,
            interface=s.interface,
            connect_retries=0,
            status_code_retries=0,
            image_status_code_retries=0,
        )

    def close(self) -> None:
        with self._guard:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def _auth_failed(self, message: str) -> PermanentVimError:
        # The next call logs in anew, reading the password again: an operator who fixes
        # the password file needs no restart.
        self._connection = None
        s = self.settings
        return PermanentVimError(
            f"OpenStack authentication failed at {s.auth_url} for user {s.username!r} in "
            f"project {s.project_name!r}: {message}; check [vim.openstack] username, "
            "password_file / password_env, project_name, user_domain_name and "
            "project_domain_name"
        )

    def _tls_failed(self, what: str, exc: Exception) -> PermanentVimError:
        if self.cacert:
            fix = (
                f"[vim.openstack] cacert ({self.cacert}) must hold the CA that signed the "
                "cloud's certificate"
            )
        else:
            fix = "set [vim.openstack] cacert to the CA bundle that signed the cloud's certificate"
        return PermanentVimError(f"TLS verification failed to {what}: {exc}; {fix}")

    @contextlib.contextmanager
    def _calling(self, what: str) -> Iterator[None]:
        """Map what the SDK raises while doing `what` onto the engine's two kinds."""
        try:
            yield
        except VimError:
            raise
        except ksa.Unauthorized as exc:
            raise self._auth_failed(exc.message or str(exc)) from None
        except ksa.SSLError as exc:
            raise self._tls_failed(what, exc) from None
        except (ksa.ConnectTimeout, ksa.RequestTimeout) as exc:
            raise TransientVimError(
                f"OpenStack did not answer within {self.settings.timeout:g} s "
                f"([vim.openstack] timeout) to {what}: {exc}"
            ) from None
        except ksa.ConnectFailure as exc:
            raise TransientVimError(f"cannot reach OpenStack to {what}: {exc}") from None
        except (ksa.EndpointNotFound, sdk.EndpointNotFound, sdk.ServiceDisabledException) as exc:
            s = self.settings
            raise PermanentVimError(
                f"the OpenStack catalog has no endpoint to {what} (interface {s.interface}, "
                f"region {s.region_name or 'any'}): {exc}; check [vim.openstack] interface "
                "and region_name"
            ) from None
        except ksa.NotFound as exc:  # keystone's answers come only while authenticating
            raise PermanentVimError(
                f"no keystone v3 answers at {self.settings.auth_url} ([vim.openstack] "
                f"auth_url): {exc}"
            ) from None
        except ksa.HttpError as exc:
            status = exc.http_status or 0
            kind = TransientVimError if status >= 500 or status == 429 else PermanentVimError
            raise kind(f"keystone at {self.settings.auth_url} refused to {what}: {exc}") from None
        except ksa.DiscoveryFailure as exc:
            raise PermanentVimError(
                f"no keystone v3 answers at {self.settings.auth_url} ([vim.openstack] "
                f"auth_url): {exc}"
            ) from None
        except ksa.ConnectionError as exc:
            raise TransientVimError(f"the connection to OpenStack broke to {what}: {exc}") from None
        except ksa.ClientException as exc:
            raise PermanentVimError(f"OpenStack refused to {what}: {exc}") from None
        except sdk.HttpException as exc:
            raise self._http_error(what, exc) from None
        except sdk.ResourceTimeout as exc:
            raise TransientVimError(f"OpenStack did not finish in time to {what}: {exc}") from None
        except sdk.SDKException as exc:
            raise PermanentVimError(f"OpenStack refused to {what}: {exc}") from None

    def _http_error(self, what: str, exc: sdk.HttpException) -> VimError:
        status = exc.status_code
        message = http_message(exc)
        if status == 401:
            return self._auth_failed(message)
        if is_quota(status, message):
            return PermanentVimError(f"OpenStack quota exceeded to {what}: {message}")
        if status is None or status >= 500 or status == 429:
            return TransientVimError(f"OpenStack failed to {what} (HTTP {status}): {message}")
        if status == 409 and conflict_passes(message):
            return TransientVimError(f"OpenStack is busy with the server to {what}: {message}")
        return PermanentVimError(f"OpenStack refused to {what} (HTTP {status}): {message}")

    # images, flavors, networks ----------------------------------------------------------

    def validate_image(self, image: str) -> None:
        with self._calling(f"look up image {image!r}"):
            self._image(image)

    def validate_flavor(self, flavor: str) -> None:
        with self._calling(f"look up flavor {flavor!r}"):
            self._flavor(flavor)

    def _image(self, image: str) -> Any:
        try:
            found = self.conn.image.find_image(image, ignore_missing=False)
        except sdk.NotFoundException:
            found = None
        except sdk.DuplicateResource:
            same = [i.id for i in self.conn.image.images(name=image)]
            raise PermanentVimError(
                f"image {image!r} is ambiguous: the OpenStack project has {len(same)} images "
                f"of that name ({', '.join(sorted(same))}); name it by id"
            ) from None
        if found is None:
            known = [i.name or i.id for i in self.conn.image.images()]
            raise UnknownImage(
                f"unknown image {image!r}; the OpenStack project's images are {names(known)}"
            )
        return found

    def _flavor(self, flavor: str) -> Any:
        try:
            found = self.conn.compute.find_flavor(flavor, ignore_missing=False)
        except sdk.NotFoundException:
            found = None
        except sdk.DuplicateResource:
            raise PermanentVimError(
                f"flavor {flavor!r} is ambiguous: OpenStack has several of that name; name it by id"
            ) from None
        if found is None:
            known = [f.name for f in self.conn.compute.flavors()]
            raise UnknownFlavor(
                f"unknown flavor {flavor!r}; the OpenStack project's flavors are {names(known)}"
            )
        return found

    def _network(self, network: str) -> Any:
        try:
            found = self.conn.network.find_network(network, ignore_missing=False)
        except sdk.NotFoundException:
            found = None
        except sdk.DuplicateResource:
            raise PermanentVimError(
                f"network {network!r} is ambiguous: the OpenStack project has several of "
                "that name; name it by id"
            ) from None
        if found is None:
            known = [n.name or n.id for n in self.conn.network.networks()]
            raise PermanentVimError(
                f"unknown network {network!r}; the OpenStack project's networks are {names(known)}"
            )
        return found

    # servers ----------------------------------------------------------------------------

    def _is_ours(self, server: Any, vm_id: str | None = None) -> bool:
        metadata = server.metadata or {}
        if metadata.get(TAG_CONTROLLER) != self.controller_id or TAG_VM not in metadata:
            return False
        return vm_id is None or metadata[TAG_VM] == vm_id

    def _ours(self) -> list[Any]:
        """This controller's servers in the project, oldest first."""
        servers = [
            s
            for s in self.conn.compute.servers(details=True)
            if self._is_ours(s) and (s.status or "").upper() not in GONE
        ]
        return sorted(servers, key=lambda s: (s.created_at or "", s.id))

    def _servers_of(self, vm_id: str) -> list[Any]:
        return [s for s in self._ours() if s.metadata[TAG_VM] == vm_id]

    def _server(self, vm_id: str) -> Any | None:
        """The server of `vm_id`, or None; the oldest if a lost answer made two."""
        check_vm_id(vm_id)
        known = self._server_ids.get(vm_id)
        if known:
            server = self._get(known)
            if server is not None and self._is_ours(server, vm_id):
                return server
            self._server_ids.pop(vm_id, None)
        found = self._servers_of(vm_id)
        if not found:
            return None
        self._server_ids[vm_id] = found[0].id
        return found[0]

    def _get(self, server_id: str) -> Any | None:
        try:
            server = self.conn.compute.get_server(server_id)
        except sdk.NotFoundException:
            return None
        if (server.status or "").upper() in GONE:
            return None
        return server

    def _refresh(self, vm_id: str, server: Any) -> Any:
        fresh = self._get(server.id)
        if fresh is None:
            raise PermanentVimError(
                f"VM {vm_id} (server {server.id}) was deleted from OpenStack meanwhile; "
                "create it again"
            )
        return fresh

    def _settle(
        self, vm_id: str, server: Any, what: str, done: Callable[[Any], bool] | None = None
    ) -> Any:
        """Wait, bounded by boot_timeout, until nova has finished changing the server (and
        `done` holds); an ERROR on the way is nova's refusal, in its words."""
        done = done or (lambda s: state_of(s) is not InstanceState.BUILDING)
        deadline = time.monotonic() + self.settings.boot_timeout
        while True:
            state = state_of(server)
            if state is InstanceState.ERROR:
                raise PermanentVimError(
                    f"OpenStack failed VM {vm_id} (server {server.id}) to {what}: "
                    f"{fault_of(server)}"
                )
            if done(server):
                return server
            if time.monotonic() >= deadline:
                task = f", task {server.task_state}" if server.task_state else ""
                raise TransientVimError(
                    f"VM {vm_id} (server {server.id}) is still {server.status}{task} after "
                    f"{self.settings.boot_timeout:g} s ([vim.openstack] boot_timeout) to {what}"
                )
            time.sleep(self.settings.poll_interval)
            server = self._refresh(vm_id, server)

    def _running(self, server: Any) -> bool:
        return state_of(server) is InstanceState.RUNNING

    def _stopped(self, server: Any) -> bool:
        return state_of(server) is InstanceState.STOPPED

    def _status(self, vm_id: str, server: Any | None) -> InstanceStatus:
        if server is None:
            return InstanceStatus(vm_id, InstanceState.ABSENT)
        state = state_of(server)
        fixed, floating = self._addresses(server)
        detail = ""
        if state is InstanceState.ERROR:
            detail = fault_of(server)
        elif state is InstanceState.BUILDING:
            detail = f"nova: {server.status}" + (
                f", {server.task_state}" if server.task_state else ""
            )
        address = next((ip for ip in fixed if ":" not in ip), fixed[0] if fixed else None)
        return InstanceStatus(
            vm_id,
            state,
            address if state is InstanceState.RUNNING else None,
            detail,
            tuple(fixed + [ip for ip in floating if ip not in fixed]),
        )

    def _addresses(self, server: Any) -> tuple[list[str], list[str]]:
        """The server's fixed IPs in nova's order (its first interface first), and the
        floating IPs on its ports as neutron has them (nova's copy lags behind)."""
        fixed: list[str] = []
        floating: list[str] = []
        for entries in (server.addresses or {}).values():
            for entry in entries:
                kind = entry.get("OS-EXT-IPS:type", "fixed")
                (floating if kind == "floating" else fixed).append(entry["addr"])
        if fixed:
            ports = [p.id for p in self.conn.network.ports(device_id=server.id)]
            if ports:
                for fip in self.conn.network.ips(port_id=ports):
                    if fip.floating_ip_address not in floating:
                        floating.append(fip.floating_ip_address)
        return fixed, floating

    # life cycle -------------------------------------------------------------------------

    def create_vm(self, spec: VmSpec) -> InstanceStatus:
        check_vm_id(spec.vm_id)
        what = f"create VM {spec.vm_id}"
        with self._calling(what):
            server = self._server(spec.vm_id)
            if server is None:
                server = self._create_server(spec)
            server = self._settle(spec.vm_id, server, what)
            if self._stopped(server):
                server = self._resume(spec.vm_id, server, what)
            self._associate_floating_ips(spec, server)
            return self._status(spec.vm_id, server)

    def _create_server(self, spec: VmSpec) -> Any:
        image = self._image(spec.image)
        flavor = self._flavor(spec.flavor)
        attrs: dict[str, Any] = {
            "name": spec.name,
            "image_id": image.id,
            "flavor_id": flavor.id,
            "networks": self._networks(spec.interfaces),
            "metadata": self.tags(spec.vm_id),
            "config_drive": True,
            "user_data": base64.b64encode(
                cloud_config(spec.day0_config, self.settings.day0_dir).encode()
            ).decode(),
        }
        zone = self._zone(spec.placement)
        if zone:
            attrs["availability_zone"] = zone
        group = self._server_group(spec.placement)
        if group is not None:
            attrs["scheduler_hints"] = {"group": group.id}
        if spec.volumes:
            attrs["block_device_mapping"] = [
                # The image stays the boot disk; each volume is a blank one beside it.
                {
                    "boot_index": 0,
                    "uuid": image.id,
                    "source_type": "image",
                    "destination_type": "local",
                    "delete_on_termination": True,
                },
                *(
                    {
                        "boot_index": -1,
                        "source_type": "blank",
                        "destination_type": "volume",
                        "volume_size": volume.size_gb,
                        "delete_on_termination": True,
                        "tag": volume.name,
                    }
                    for volume in spec.volumes
                ),
            ]
        if self.settings.key_name:
            attrs["key_name"] = self.settings.key_name
        server = self.conn.compute.create_server(**attrs)
        self._server_ids[spec.vm_id] = server.id
        return self._refresh(spec.vm_id, server)

    def _networks(self, interfaces: tuple[Interface, ...]) -> list[dict[str, str]] | str:
        if not interfaces:
            if not self.settings.network:
                return "none"
            return [{"uuid": self._network(self.settings.network).id}]
        networks = []
        for interface in interfaces:
            network = self._network(interface.network)
            entry = {"uuid": network.id}
            address = fixed_ip(interface)
            if address:
                self._check_prefix(interface, network)
                entry["fixed_ip"] = address
            networks.append(entry)
        return networks

    def _check_prefix(self, interface: Interface, network: Any) -> None:
        """A fixed IP given with a prefix (as a node's is, for its guest) is on a subnet of
        its network with that prefix: neutron's subnet sets the port's prefix, and a
        different one would be silently another."""
        if not interface.ip or "/" not in interface.ip:
            return
        wanted = ipaddress.ip_interface(interface.ip).network
        subnets = [
            ipaddress.ip_network(s.cidr, strict=False)
            for s in self.conn.network.subnets(network_id=network.id)
        ]
        if wanted not in subnets:
            raise PermanentVimError(
                f"interface on network {interface.network!r}: {interface.ip} is on none of "
                f"its subnets ({names([str(n) for n in subnets])}); give the address alone "
                "or with its subnet's prefix"
            )

    @staticmethod
    def _zone(placement: Placement) -> str:
        unsupported = [k for k in ("datastore", "cluster") if getattr(placement, k)]
        if unsupported:
            raise PermanentVimError(
                f"OpenStack has no {' or '.join(unsupported)} placement (VMware's); place by "
                "availability zone and host"
            )
        if placement.host:
            # Nova's forced host; its default policy allows it to admins only.
            return f"{placement.zone}:{placement.host}"
        return placement.zone

    def _group_name(self, group: str) -> str:
        # The controller's id in the name: another controller's group of the same name
        # (server groups carry no metadata) is another group, never touched.
        return f"esc-{self.controller_id}-{group}"

    def _server_group(self, placement: Placement) -> Any | None:
        """The project's server group of `placement.group`, made on first use."""
        if not placement.group:
            return None
        policy = placement.group_policy or "anti-affinity"
        if policy not in GROUP_POLICIES:
            raise PermanentVimError(
                f"placement group policy {policy!r} is not one of nova's: "
                f"{', '.join(GROUP_POLICIES)}"
            )
        name = self._group_name(placement.group)
        for group in self.conn.compute.server_groups():
            if group.name == name:
                if group.policy != policy:
                    raise PermanentVimError(
                        f"server group {name} exists with policy {group.policy}, not "
                        f"{policy}: a group's VMs share one policy"
                    )
                return group
        return self.conn.compute.create_server_group(name=name, policy=policy)

    def _groups_of(self, server_ids: set[str]) -> list[Any]:
        prefix = self._group_name("")
        return [
            g
            for g in self.conn.compute.server_groups()
            if (g.name or "").startswith(prefix) and server_ids & set(g.member_ids or [])
        ]

    def _associate_floating_ips(self, spec: VmSpec, server: Any) -> None:
        wanted = [i for i in spec.interfaces if i.floating_ip]
        if not wanted:
            return
        ports = list(self.conn.network.ports(device_id=server.id))
        used: set[str] = set()
        for interface in wanted:
            port = self._port_of(spec.vm_id, interface, ports, used)
            used.add(port.id)
            found = list(self.conn.network.ips(floating_ip_address=interface.floating_ip))
            if not found:
                raise PermanentVimError(
                    f"floating IP {interface.floating_ip} of VM {spec.vm_id} does not exist in "
                    "the OpenStack project: allocate it there first"
                )
            fip = found[0]
            if fip.port_id == port.id:
                continue
            if fip.port_id:
                # Taken from the port it is on (a replaced VM's): neutron moves a floating
                # IP only from no port to a port.
                self.conn.network.update_ip(fip, port_id=None)
            self.conn.network.update_ip(fip, port_id=port.id)

    def _port_of(self, vm_id: str, interface: Interface, ports: list[Any], used: set[str]) -> Any:
        network = self._network(interface.network)
        candidates = [p for p in ports if p.network_id == network.id and p.id not in used]
        address = fixed_ip(interface)
        if address:
            candidates = [
                p for p in candidates if any(f["ip_address"] == address for f in p.fixed_ips)
            ]
        if not candidates:
            raise PermanentVimError(
                f"VM {vm_id} has no port on network {interface.network!r} for floating IP "
                f"{interface.floating_ip}"
            )
        return candidates[0]

    def _resume(self, vm_id: str, server: Any, what: str) -> Any:
        action = RESUME.get((server.status or "").upper(), "start_server")
        getattr(self.conn.compute, action)(server)
        return self._settle(vm_id, self._refresh(vm_id, server), what, self._running)

    def start_vm(self, vm_id: str) -> InstanceStatus:
        what = f"start VM {vm_id}"
        with self._calling(what):
            server = self._require(vm_id)
            server = self._settle(vm_id, server, what)
            if self._stopped(server):
                server = self._resume(vm_id, server, what)
            return self._status(vm_id, server)

    def stop_vm(self, vm_id: str) -> InstanceStatus:
        what = f"stop VM {vm_id}"
        with self._calling(what):
            server = self._server(vm_id)
            if server is None:
                return self._status(vm_id, None)
            if state_of(server) is InstanceState.ERROR:
                return self._status(vm_id, server)  # not running; nothing to stop
            server = self._settle(vm_id, server, what)
            if self._running(server):
                self.conn.compute.stop_server(server)
                server = self._settle(vm_id, self._refresh(vm_id, server), what, self._stopped)
            return self._status(vm_id, server)

    def power_off(self, vm_id: str) -> InstanceStatus:
        """Nova's stop: its API has no hard power-off. Every stop (`os-stop`) is a clean
        shutdown: nova asks the guest (ACPI) and waits up to the image's
        `os_shutdown_timeout` property, else the compute host's `[DEFAULT]
        shutdown_timeout` (60 s by default), then destroys the domain; only nova's own
        internals power off without asking. Pause would freeze the guest at once, but
        not power it off: unpaused, it goes on from where it was, which a fenced node
        must never do. So a fence returns once nova reports the server SHUTOFF, at most
        that timeout later; an image with `os_shutdown_timeout=0` makes every stop of
        its servers cut the power at once."""
        return self.stop_vm(vm_id)

    def reboot_vm(self, vm_id: str) -> InstanceStatus:
        what = f"reboot VM {vm_id}"
        with self._calling(what):
            server = self._settle(vm_id, self._require(vm_id), what)
            if self._stopped(server):
                server = self._resume(vm_id, server, what)
            else:
                self.conn.compute.reboot_server(server, "HARD")
                server = self._settle(vm_id, self._refresh(vm_id, server), what, self._running)
            return self._status(vm_id, server)

    def delete_vm(self, vm_id: str) -> None:
        check_vm_id(vm_id)
        what = f"delete VM {vm_id}"
        with self._calling(what):
            servers = self._servers_of(vm_id)
            groups = self._groups_of({s.id for s in servers}) if servers else []
            for server in servers:
                self.conn.compute.delete_server(server, ignore_missing=True)
            deadline = time.monotonic() + self.settings.boot_timeout
            for server in servers:
                while self._get(server.id) is not None:
                    if time.monotonic() >= deadline:
                        raise TransientVimError(
                            f"VM {vm_id} (server {server.id}) is still being deleted after "
                            f"{self.settings.boot_timeout:g} s ([vim.openstack] boot_timeout)"
                        )
                    time.sleep(self.settings.poll_interval)
            self._server_ids.pop(vm_id, None)
            # A group made for the VMs goes with its last one (a project has few).
            for group in groups:
                fresh = self.conn.compute.get_server_group(group.id)
                if not fresh.member_ids:
                    self.conn.compute.delete_server_group(group, ignore_missing=True)

    def _require(self, vm_id: str) -> Any:
        server = self._server(vm_id)
        if server is None:
            raise PermanentVimError(
                f"VM {vm_id} does not exist on OpenStack (project "
                f"{self.settings.project_name}); create it again"
            )
        return server

    # queries ----------------------------------------------------------------------------

    def status(self, vm_id: str) -> InstanceStatus:
        check_vm_id(vm_id)
        with self._calling(f"look up VM {vm_id}"):
            return self._status(vm_id, self._server(vm_id))

    def list_instances(self) -> list[str]:
        with self._calling("list the project's servers"):
            return sorted({s.metadata[TAG_VM] for s in self._ours()})

    # the VM's metadata -----------------------------------------------------------------

    def vm_metadata(self, vm_id: str) -> dict[str, str]:
        """What set_vm_metadata recorded, from the server's nova metadata (read fresh:
        any driver object, on any host, reads the same)."""
        check_vm_id(vm_id)
        with self._calling(f"read the metadata of VM {vm_id}"):
            return decode(self._require(vm_id).metadata or {})

    def set_vm_metadata(self, vm_id: str, changes: Mapping[str, str | None]) -> None:
        """Into the server's nova metadata, under keys of ESC's own (openstack_metadata):
        the driver's tags and anyone else's keys are never changed. Nova refuses it while
        the server is busy with a task (a 409, transient)."""
        check_vm_id(vm_id)
        changes = dict(changes)
        for key in changes:
            check_metadata_key(key)
        with self._calling(f"write the metadata of VM {vm_id}"):
            server = self._require(vm_id)
            writes, deletes = plan(server.metadata or {}, changes)
            # By id: the SDK's bookkeeping of a Server object's metadata fails deleting
            # a key its copy lacks (a KeyError after nova's answer).
            if writes:
                self.conn.compute.set_server_metadata(server.id, **writes)
            for key in deletes:
                # Gone already (another writer's delete): what was wanted.
                with contextlib.suppress(sdk.NotFoundException):
                    self.conn.compute.delete_server_metadata(server.id, [key])

    def check(self) -> None:
        """Log in, then ask each service the driver uses for one item, so that a wrong
        password, a missing or unreachable endpoint and an untrusted certificate are
        each named."""
        with self._calling("log in to keystone"):
            # The session's own call: the SDK's authorize() would flatten keystoneauth's
            # errors (401, TLS, refused) into one kind.
            self.conn.session.get_token()
        probes = (
            ("compute", lambda: next(iter(self.conn.compute.flavors(details=False)), None)),
            ("image", lambda: next(iter(self.conn.image.images(limit=1)), None)),
            ("network", lambda: next(iter(self.conn.network.networks(limit=1)), None)),
        )
        for service, probe in probes:
            with self._calling(f"reach the {service} endpoint"):
                try:
                    probe()
                except (ksa.ConnectFailure, ksa.ConnectTimeout) as exc:
                    if isinstance(exc, ksa.SSLError):
                        raise
                    endpoint = self._endpoint(service)
                    raise TransientVimError(
                        f"cannot reach OpenStack's {service} endpoint {endpoint} (from the "
                        f"catalog, interface {self.settings.interface}): {exc}"
                    ) from None

    def _endpoint(self, service: str) -> str:
        try:
            return str(
                self.conn.session.get_endpoint(
                    service_type=service,
                    interface=self.settings.interface,
                    region_name=self.settings.region_name or None,
                )
            )
        except ksa.ClientException:
            return "(unknown)"
