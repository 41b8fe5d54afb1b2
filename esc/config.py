"""The node's home directory and its `esc.toml` (ARCHITECTURE principle 4).

One node = one home: `esc.toml`, `data/`, `log/`, `run/`. Nothing global,
so two nodes or two versions can sit side by side on one host.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

import tomli_w
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

HOME_ENV = "ESC_HOME"
CONFIG_FILE = "esc.toml"
_HOST_NAME = re.compile(
    r"(?=.{1,253}\.?\Z)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*\.?\Z",
    re.I,
)


class ConfigError(Exception):
    """esc.toml is missing or invalid; the message names the key and the fix."""


class _Section(BaseModel):
    # An unknown key is an operator's typo: refuse it by name rather than ignore it.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ApiSettings(_Section):
    host: str = Field("127.0.0.1", description="Address the northbound REST API listens on.")
    port: Annotated[int, Field(ge=1, le=65535)] = Field(
        8080, description="TCP port of the northbound REST API."
    )
    max_body_bytes: Annotated[int, Field(ge=1024)] = Field(
        1_048_576, description="Largest request body accepted; larger ones get 413."
    )
    max_header_bytes: Annotated[int, Field(ge=1024, le=1_048_576)] = Field(
        32_768,
        description="Largest request line plus headers accepted; larger ones get 431 "
        "while still arriving, so the server never buffers more.",
    )
    max_headers: Annotated[int, Field(ge=8, le=1000)] = Field(
        100, description="Most header fields one request may have; more get 431."
    )
    max_auth_failures: Annotated[int, Field(ge=1, le=10_000)] = Field(
        10,
        description="Failed logins one client address may make within auth_failure_window; "
        "past it the client gets 429 with Retry-After, before any password is checked.",
    )
    auth_failure_window: Annotated[float, Field(gt=0, le=86_400)] = Field(
        60.0, description="Seconds over which a client's failed logins are counted."
    )
    idempotency_ttl: Annotated[float, Field(ge=60, le=30 * 86_400)] = Field(
        86_400.0,
        description="Seconds an Idempotency-Key and the answer its write got are kept: "
        "a retry with the key within them gets that answer again, a later one is a new "
        "request. The active node forgets older keys.",
    )
    tls_cert: str = Field(
        "",
        description="PEM certificate (its chain after it) the API serves HTTPS with; a "
        "relative path is in the node home. Empty: plain HTTP. Set with tls_key.",
    )
    tls_key: str = Field(
        "",
        description="The unencrypted PEM private key of tls_cert (keep it mode 0600); a "
        "relative path is in the node home.",
    )

    @model_validator(mode="after")
    def _tls_pair(self) -> ApiSettings:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("set both tls_cert and tls_key for HTTPS, or neither for HTTP")
        return self

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"


class DatabaseSettings(_Section):
    url: str = Field(
        "",
        description="SQLAlchemy URL. Empty means SQLite at data/esc.db in the node home. "
        "PostgreSQL: postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB.",
    )

    @field_validator("url")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if value and not value.startswith(("sqlite", "postgresql")):
            raise ValueError("only sqlite:/// and postgresql+psycopg:// URLs are supported")
        return value


class OpenStackSettings(_Section):
    """[vim.openstack]: the OpenStack cloud and project the openstack driver runs VMs in."""

    auth_url: str = Field(
        "",
        description="The cloud's keystone v3 URL, e.g. https://keystone.example.com:5000/v3 "
        "(the OS_AUTH_URL of the project's openrc).",
    )
    username: str = Field("", description="The OpenStack user ESC authenticates as.")
    password_file: str = Field(
        "",
        description="File holding that user's password (mode 0600; relative: in the node "
        "home). Never put the password in esc.toml.",
    )
    password_env: str = Field(
        "",
        description="Instead of password_file: the environment variable holding the password.",
    )
    project_name: str = Field(
        "", description="The project (tenant) the VMs are created in and counted against."
    )
    user_domain_name: str = Field("Default", description="The keystone domain of the user.")
    project_domain_name: str = Field("Default", description="The keystone domain of the project.")
    region_name: str = Field(
        "", description="The region whose endpoints are used; empty: the catalog's only one."
    )
    interface: Literal["public", "internal", "admin"] = Field(
        "public", description="Which endpoints of the catalog to call: public, internal or admin."
    )
    cacert: str = Field(
        "",
        description="PEM file of the CA(s) that signed the cloud's TLS certificates "
        "(relative: in the node home); empty: the system's trusted CAs.",
    )
    verify: bool = Field(
        True,
        description="Check the cloud's TLS certificates. false accepts any certificate: for "
        "a lab only, never with cacert set.",
    )
    timeout: Annotated[float, Field(gt=0, le=600)] = Field(
        30.0,
        description="Seconds one API request may take before it counts as a transient "
        "failure and the VIM call is retried.",
    )
    boot_timeout: Annotated[float, Field(gt=0, le=3600)] = Field(
        600.0,
        description="Seconds a create, start, reboot, stop or delete waits for nova to finish "
        "it (a server to become ACTIVE, SHUTOFF or gone) before it counts as a transient "
        "failure; the retry finds the server where it got to.",
    )
    poll_interval: Annotated[float, Field(gt=0, le=60)] = Field(
        2.0, description="Seconds between two looks at a server that nova is still changing."
    )
    network: str = Field(
        "",
        description="The network (name or id) of a VM whose descriptor names no interface; "
        "empty: such a VM gets no network.",
    )
    key_name: str = Field(
        "",
        description="An existing nova keypair put on every VM (its public key reaches the "
        "VM through cloud-init); empty: none.",
    )
    day0_dir: str = Field(
        "/etc/esc/day0",
        description="The directory in the VM where cloud-init writes each day0_config file.",
    )

    @field_validator("auth_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if value and (parts.scheme not in ("http", "https") or not parts.hostname):
            raise ValueError(
                f"auth_url must be the keystone v3 URL, http(s)://HOST[:PORT]/v3, not {value!r}"
            )
        return value

    @field_validator("day0_dir")
    @classmethod
    def _absolute_dir(cls, value: str) -> str:
        if not value.startswith("/") or "\n" in value:
            raise ValueError(f"day0_dir must be an absolute path in the VM, not {value!r}")
        return value.rstrip("/") or "/"

    @model_validator(mode="after")
    def _one_way_to_trust(self) -> OpenStackSettings:
        if self.cacert and not self.verify:
            raise ValueError(
                "cacert is set but verify = false ignores it: keep cacert and verify = true"
            )
        if self.password_file and self.password_env:
            raise ValueError("set password_file or password_env, not both")
        return self

    def missing(self) -> list[str]:
        """The keys the driver cannot do without that are not set."""
        missing = [k for k in ("auth_url", "username", "project_name") if not getattr(self, k)]
        if not (self.password_file or self.password_env):
            missing.append("password_file or password_env")
        return missing


class VmwareFlavor(_Section):
    """What a flavor name means on vCenter, which has no flavors of its own."""

    vcpus: Annotated[int, Field(ge=1, le=768)] = Field(
        description="Virtual CPUs of a VM of this flavor."
    )
    memory_mb: Annotated[int, Field(ge=4, le=24 * 2**20)] = Field(
        description="Memory of a VM of this flavor, in MiB."
    )


# The flavors a vCenter driver knows unless [vim.vmware.flavors] says otherwise: OpenStack's
# classic sizes, so that a descriptor written for another VIM deploys unchanged.
VMWARE_FLAVORS = {
    "m1.tiny": VmwareFlavor(vcpus=1, memory_mb=512),
    "m1.small": VmwareFlavor(vcpus=1, memory_mb=2048),
    "m1.medium": VmwareFlavor(vcpus=2, memory_mb=4096),
    "m1.large": VmwareFlavor(vcpus=4, memory_mb=8192),
}


class VmwareSettings(_Section):
    """[vim.vmware]: the vCenter the vmware driver creates VMs on."""

    host: str = Field("", description="vCenter's host name or address.")
    port: Annotated[int, Field(ge=1, le=65535)] = Field(
        443, description="The TCP port of vCenter's API (its /sdk endpoint)."
    )
    protocol: Literal["https", "http"] = Field(
        "https",
        description="https, or http for a vCenter simulator or a proxy on this host only: "
        "over http the password travels in clear.",
    )
    cacert: str = Field(
        "",
        description="PEM file of the CA certificates vCenter's certificate is checked "
        "against (a relative path is in the node home); empty: the system's CAs.",
    )
    insecure: bool = Field(
        False,
        description="Do not check vCenter's certificate at all. Only for a lab: anyone on "
        "the path can then pose as vCenter and read the password.",
    )
    user: str = Field("", description="The vCenter user the driver logs in as.")
    password_file: str = Field(
        "",
        description="File holding that user's password (a relative path is in the node "
        "home; mode 0600).",
    )
    password_env: str = Field(
        "",
        description="Environment variable holding the password, when password_file is empty.",
    )
    datacenter: str = Field(
        "", description="The datacenter the VMs go to; empty: vCenter's only datacenter."
    )
    cluster: str = Field(
        "",
        description="The cluster (or standalone host's compute resource) the VMs run on "
        "unless a VM's placement names one; empty: the template's.",
    )
    resource_pool: str = Field(
        "",
        description="The resource pool below that cluster's root pool (a name, or a path "
        "such as esc/vnfs) the VMs are put in; empty: the root pool.",
    )
    datastore: str = Field(
        "",
        description="The datastore a VM's disks go to unless its placement names one; "
        "empty: the template's.",
    )
    vm_folder: str = Field(
        "",
        description="The VM folder (a path below the datacenter's VM folder, e.g. esc/vnfs) "
        "the VMs are created in; it must exist. Empty: the datacenter's VM folder.",
    )
    templates_folder: str = Field(
        "",
        description="The folder whose VMs are the images (a path like vm_folder's); empty: "
        "the images are the datacenter's templates, wherever they are.",
    )
    flavors: dict[str, VmwareFlavor] = Field(
        default_factory=lambda: dict(VMWARE_FLAVORS),
        description="The flavors descriptors may name, each {vcpus, memory_mb}; vCenter has "
        "none of its own. Setting it replaces the defaults m1.tiny, m1.small, m1.medium, "
        "m1.large (1/512, 1/2048, 2/4096, 4/8192).",
    )
    nic_model: Literal["vmxnet3", "e1000", "e1000e"] = Field(
        "vmxnet3",
        description="The virtual NIC model of a VM's interfaces: vmxnet3 needs VMware Tools' "
        "driver in the guest, e1000 and e1000e work in any guest.",
    )
    day0_dir: str = Field(
        "/etc/esc/day0",
        description="The directory of the guest where cloud-init writes a VM's day-0 files.",
    )
    timeout: Annotated[float, Field(gt=0, le=7200)] = Field(
        600.0,
        description="Seconds a VM's creation (clone, reconfiguration, power-on) or another "
        "vCenter task may take; past it the call fails as transient and is asked again (the "
        "VM is found again by its tags, never made twice).",
    )
    request_timeout: Annotated[float, Field(gt=0, le=600)] = Field(
        60.0,
        description="Seconds one request to vCenter may take before it counts as a "
        "transient failure.",
    )
    shutdown_timeout: Annotated[float, Field(ge=0, le=3600)] = Field(
        120.0,
        description="Seconds a stop waits for the guest to shut down (asked through VMware "
        "Tools when they run) before the VM is powered off.",
    )

    def problems(self) -> list[str]:
        """What keeps the vmware driver from using these settings."""
        found = [
            f"[vim.vmware] {key} is required by the vmware driver"
            for key, value in (("host", self.host), ("user", self.user))
            if not value
        ]
        if not self.password_file and not self.password_env:
            found.append(
                "[vim.vmware] needs password_file (a file holding the password) or password_env"
            )
        if self.cacert and self.insecure:
            found.append("[vim.vmware] cacert and insecure = true contradict: keep one")
        if not self.flavors:
            found.append("[vim.vmware] flavors is empty: name at least one")
        return found


class LibvirtFlavor(_Section):
    vcpus: Annotated[int, Field(ge=1, le=288)] = Field(description="Virtual CPUs of the VM.")
    memory_mib: Annotated[int, Field(ge=64, le=4_194_304)] = Field(
        description="Memory of the VM, in MiB."
    )


def _default_libvirt_flavors() -> dict[str, LibvirtFlavor]:
    return {
        "m1.tiny": LibvirtFlavor(vcpus=1, memory_mib=512),
        "m1.small": LibvirtFlavor(vcpus=1, memory_mib=2048),
        "m1.medium": LibvirtFlavor(vcpus=2, memory_mib=4096),
        "m1.large": LibvirtFlavor(vcpus=4, memory_mib=8192),
    }


class LibvirtSettings(_Section):
    uri: str = Field(
        "qemu:///system",
        description="libvirt connection URI of the host the VMs run on. The driver writes "
        "each VM's disk overlay, data volumes and seed ISO itself, so the URI names a "
        "libvirt on this machine (qemu:///system), or on a host that sees image_dir and "
        "instance_dir at the same paths (shared storage).",
    )
    username: str = Field(
        "",
        description="The user name a libvirt daemon asking for credentials (SASL, e.g. "
        "qemu+tcp://) is given; empty: none (a local socket, ssh keys or TLS certificates "
        "need none).",
    )
    password_file: str = Field(
        "",
        description="File holding that user's password (relative: in the node home; mode "
        "0600); never logged.",
    )
    password_env: str = Field(
        "",
        description="Environment variable holding that user's password, when no "
        "password_file is given.",
    )
    domain_type: Literal["kvm", "qemu"] = Field(
        "kvm",
        description="kvm (hardware acceleration) or qemu (software emulation, where KVM is "
        "not usable: much slower).",
    )
    image_dir: str = Field(
        "/var/lib/libvirt/images",
        description="Directory of the images, on the libvirt host: NAME.qcow2 is image NAME "
        "booted from its disk (each VM gets a qcow2 overlay on it; the file is never "
        "written); NAME.kernel with NAME.initrd is image NAME booted directly from that "
        "kernel and initramfs (with NAME.qcow2 as its disk when there is one; "
        "NAME.cmdline, if present, holds its kernel command line).",
    )
    instance_dir: str = Field(
        "",
        description="Where each VM's own files are kept (its overlay, data volumes, seed "
        "ISO and serial console log, in a directory named after the VM id, removed with "
        "it); empty: data/vim/libvirt/instances in the node home. QEMU's user "
        "(libvirt-qemu) must be able to reach it.",
    )
    kernel_cmdline: str = Field(
        "console=ttyS0",
        description="Kernel command line of an image booted from NAME.kernel that has no "
        "NAME.cmdline.",
    )
    day0_dir: str = Field(
        "/etc/esc/day0",
        description="Directory, inside the VM, where cloud-init writes the day-0 "
        "configuration files (one per day0_config entry).",
    )
    flavors: dict[str, LibvirtFlavor] = Field(
        default_factory=_default_libvirt_flavors,
        description="The flavors VMs may ask for (libvirt has none of its own): name -> "
        "{vcpus, memory_mib}. Default: m1.tiny (1, 512), m1.small (1, 2048), m1.medium "
        "(2, 4096), m1.large (4, 8192).",
    )
    create_timeout: Annotated[float, Field(gt=0, le=3600)] = Field(
        60.0,
        description="Seconds a create or start waits for libvirt to report the VM "
        "running before the attempt counts as a transient failure.",
    )
    shutdown_timeout: Annotated[float, Field(ge=0, le=3600)] = Field(
        30.0,
        description="Seconds a stop waits for the guest to power off after the ACPI "
        "shutdown request before the VM is powered off (destroyed) by force.",
    )

    @field_validator("flavors")
    @classmethod
    def _some_flavors(cls, flavors: dict[str, LibvirtFlavor]) -> dict[str, LibvirtFlavor]:
        if not flavors:
            raise ValueError(
                'declare at least one flavor, e.g. "m1.tiny" = {vcpus = 1, memory_mib = 512}'
            )
        return flavors


class CspFlavor(_Section):
    """What a Cisco CSP service of this flavor gets: CSP itself has no flavors."""

    numcpu: Annotated[int, Field(ge=1, le=256)] = Field(
        description="CPU cores of the service (its numcpu)."
    )
    memory_mb: Annotated[int, Field(ge=64, le=4_194_304)] = Field(
        description="Memory of the service in MiB (its memory)."
    )
    disk_gb: Annotated[int, Field(ge=1, le=65_536)] = Field(
        description="Size of the service's disk in GB (its disk_size)."
    )


def _default_csp_flavors() -> dict[str, CspFlavor]:
    return {
        "m1.tiny": CspFlavor(numcpu=1, memory_mb=512, disk_gb=1),
        "m1.small": CspFlavor(numcpu=1, memory_mb=2048, disk_gb=20),
        "m1.medium": CspFlavor(numcpu=2, memory_mb=4096, disk_gb=40),
        "m1.large": CspFlavor(numcpu=4, memory_mb=8192, disk_gb=80),
    }


class CspSettings(_Section):
    """[vim.csp]: a Cisco Cloud Services Platform (CSP 2100/5000) over its REST API."""

    url: str = Field(
        "",
        description="csp: the CSP's REST API, https://HOST or https://HOST:PORT (the "
        "address its web UI answers on).",
    )
    username: str = Field(
        "admin",
        description="csp: the CSP user the controller logs in as; it needs the admin "
        "role to create, power and delete services and upload day-0 files.",
    )
    password_file: str = Field(
        "",
        description="csp: the file holding that user's password (mode 0600); a relative "
        "path is in the node home. Or set password_env.",
    )
    password_env: str = Field(
        "",
        description="csp: the environment variable holding that user's password, when "
        "password_file is not set.",
    )
    cacert: str = Field(
        "",
        description="csp: the PEM certificate the CSP's HTTPS is checked against (its "
        "self-signed certificate, or the CA that issued it); a relative path is in the "
        "node home. Empty: the system's trusted CAs.",
    )
    insecure: bool = Field(
        False,
        description="csp: true skips checking the CSP's certificate (anyone on the path "
        "can then read the password): only when the operator accepts that.",
    )
    host: str = Field(
        "csp-2100",
        description="csp: the CSP resource whose free CPUs and memory are checked before "
        "a service is created (/api/running/resources/resource/HOST), when the VM's "
        "placement names none.",
    )
    network: str = Field(
        "",
        description="csp: the CSP network (a physical NIC such as enp1s0f0, or a CSP "
        "network) that a VM asking for no interface gets one vNIC on; empty: none.",
    )
    flavors: dict[str, CspFlavor] = Field(
        default_factory=_default_csp_flavors,
        description="csp: the flavors by name, each {numcpu, memory_mb, disk_gb}; CSP "
        "has none of its own. Default: m1.tiny, m1.small, m1.medium, m1.large.",
    )
    timeout: Annotated[float, Field(gt=0, le=600)] = Field(
        30.0,
        description="csp: seconds one REST call may take before it counts as a "
        "transient failure and is retried.",
    )
    boot_timeout: Annotated[float, Field(gt=0, le=3600)] = Field(
        300.0,
        description="csp: seconds a created or started service has to be reported "
        "running by the CSP before the call counts as a transient failure.",
    )
    stop_timeout: Annotated[float, Field(gt=0, le=3600)] = Field(
        120.0,
        description="csp: seconds a service has to be reported powered off (before a "
        "stop returns, and before it is deleted).",
    )

    @field_validator("flavors")
    @classmethod
    def _some_flavor(cls, flavors: dict[str, CspFlavor]) -> dict[str, CspFlavor]:
        if not flavors:
            raise ValueError("name at least one flavor, e.g. m1.small = {numcpu = 1, ...}")
        return flavors

    def problem(self) -> str | None:
        """Why the csp driver cannot use these settings, or None."""
        parts = urlsplit(self.url)
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            return f'[vim.csp] url must be "https://HOST[:PORT]", not {self.url!r}'
        if parts.scheme != "https" or not parts.hostname or parts.path.strip("/"):
            return (
                f'the csp driver needs [vim.csp] url = "https://HOST[:PORT]" (the CSP\'s '
                f"REST API, HTTPS only), not {self.url!r}"
            )
        if not self.password_file and not self.password_env:
            return (
                "the csp driver needs [vim.csp] password_file or password_env: where the "
                f"password of {self.username!r} is"
            )
        if self.insecure and self.cacert:
            return "[vim.csp] sets both cacert and insecure = true: keep one"
        return None


class VimSettings(_Section):
    driver: str = Field(
        "local",
        description="VIM driver: local (each VM an OS process of this node), vimhost "
        "(the local VIM served by a VIM host, so VMs outlive this node: an HA pair's VIM), "
        "openstack, libvirt, vmware or csp (a real VIM, set up by its own section "
        "[vim.NAME]), or fake (VMs kept in the controller's memory, for tests: gone when "
        "it exits).",
    )
    local_dir: str = Field(
        "",
        description="Where the local VIM keeps its instances; empty: data/vim in the node "
        "home. Set it to another node's directory to take over its VMs (a restore on a new "
        "node), since that is where the VMs are.",
    )
    url: str = Field(
        "",
        description="vimhost: the VIM host's address, http://HOST:PORT (the --listen of "
        "python -m esc.vim.host). Both nodes of a pair name the same host.",
    )
    token_file: str = Field(
        "",
        description="vimhost: the file holding the VIM host's token (the same as the "
        "host's --token-file; mode 0600); a relative path is in the node home.",
    )
    timeout: Annotated[float, Field(gt=0, le=300)] = Field(
        30.0,
        description="vimhost: seconds one VIM host call may take (a VM's start or stop "
        "included) before it counts as a transient failure and is retried.",
    )
    libvirt: LibvirtSettings = Field(default_factory=LibvirtSettings)

    vmware: VmwareSettings = Field(default_factory=VmwareSettings)

    @model_validator(mode="after")
    def _vcenter_is_named(self) -> VimSettings:
        if self.driver == "vmware" and (problems := self.vmware.problems()):
            raise ValueError("; ".join(problems))
        return self

    openstack: OpenStackSettings = Field(default_factory=OpenStackSettings)

    @model_validator(mode="after")
    def _openstack_is_named(self) -> VimSettings:
        if self.driver == "openstack" and self.openstack.missing():
            raise ValueError(
                "the openstack driver needs [vim.openstack] " + ", ".join(self.openstack.missing())
            )
        return self

    csp: CspSettings = Field(default_factory=CspSettings)

    @model_validator(mode="after")
    def _csp_is_reachable(self) -> VimSettings:
        if self.driver == "csp" and (problem := self.csp.problem()):
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _vim_host_is_named(self) -> VimSettings:
        if self.driver != "vimhost":
            return self
        parts = urlsplit(self.url)
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.scheme != "http" or not parts.hostname or not port or parts.path.strip("/"):
            raise ValueError(
                f'the vimhost driver needs url = "http://HOST:PORT" (the VIM host\'s '
                f"--listen), not {self.url!r}"
            )
        if not self.token_file:
            raise ValueError(
                "the vimhost driver needs token_file: the file holding the VIM host's token"
            )
        return self


class EngineSettings(_Section):
    workers: Annotated[int, Field(ge=1, le=64)] = Field(
        4, description="Transactions executed in parallel (one per deployment at most)."
    )
    max_resumes: Annotated[int, Field(ge=0, le=100)] = Field(
        3,
        description="How many controller restarts a transaction is resumed across before it "
        "is closed FAILED, so a transaction that crashes the controller cannot loop.",
    )
    vim_attempts: Annotated[int, Field(ge=1, le=20)] = Field(
        5,
        description="How many times a VIM call that fails transiently (timeout, 5xx, "
        "connection refused) is made before its transaction ends FAILED; 1: no retry.",
    )
    vim_backoff: Annotated[float, Field(gt=0, le=60)] = Field(
        1.0,
        description="Seconds before the first retry of a transient VIM error; doubled at "
        "each further retry.",
    )


class LimitSettings(_Section):
    max_vms_per_deployment: Annotated[int, Field(ge=1, le=100_000)] = Field(
        200, description="Most VMs one deployment may ask for at deploy or update time."
    )


class NotificationSettings(_Section):
    timeout: Annotated[float, Field(gt=0, le=60)] = Field(
        5.0, description="Seconds to wait for a callback URL to answer."
    )
    initial_backoff: Annotated[float, Field(gt=0, le=60)] = Field(
        0.5, description="Seconds before the first retry of a failed delivery."
    )
    max_backoff: Annotated[float, Field(gt=0, le=3600)] = Field(
        30.0, description="Upper bound of the exponential retry delay."
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Where subscriptions may send events: host names and CIDR networks "
        '(e.g. ["receiver.example.com", "10.0.0.0/8"]). Empty: any host. Link-local '
        "and cloud metadata addresses and names are refused either way.",
    )

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts_or_networks(cls, entries: list[str]) -> list[str]:
        for entry in entries:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                if not _HOST_NAME.match(entry):
                    raise ValueError(
                        f"{entry!r} is neither a host name nor a CIDR network (10.0.0.0/8)"
                    ) from None
        return entries


class MonitorSettings(_Section):
    refresh_interval: Annotated[float, Field(gt=0, le=60)] = Field(
        1.0,
        description="Seconds between MONA's readings of what to watch (new VMs, paused "
        "deployments, op_mode, dynamic mappings): how soon a change takes effect.",
    )
    probe_timeout: Annotated[float, Field(gt=0, le=60)] = Field(
        2.0,
        description="Seconds a VM has to answer one poll before the poll counts as failed "
        "(capped at 90% of the KPI's poll_frequency).",
    )


class BackupSettings(_Section):
    max_spool_bytes: Annotated[int, Field(ge=1_048_576)] = Field(
        16 * 2**30,
        description="Largest table a restore accepts from an archive: each table is copied "
        "to a spool file in data/ and checked against its sha256 before it is loaded, so an "
        "altered archive never fills the database; the free space there bounds it too.",
    )


class HaSettings(_Section):
    """An active/standby pair: `escadm init --ha` writes this section; the same values
    redeploy a node identically (what an image upgrade relies on)."""

    enabled: bool = Field(False, description="This node is one of an active/standby pair.")
    node_list: list[ipaddress.IPv4Address] = Field(
        default_factory=list,
        description="The addresses of the pair's two nodes (ESC's ha_node_list), this "
        "node's own among them.",
    )
    address: ipaddress.IPv4Address | None = Field(
        None,
        description="This node's address: the one of node_list found on kad_vif at init.",
    )
    kad_vip: ipaddress.IPv4Interface | None = Field(
        None,
        description="The pair's virtual IP with its prefix (ESC's kad_vip), held by the "
        "active node; clients use it.",
    )
    kad_vif: str = Field(
        "eth0", description="The interface keepalived holds the VIP on (ESC's kad_vif)."
    )
    gateway_ip: ipaddress.IPv4Address | None = Field(
        None,
        description="The gateway keepalived tracks: a node that cannot reach it gives up "
        "the active role.",
    )
    kad_vri: Annotated[int, Field(ge=1, le=255)] = Field(
        50, description="keepalived's virtual_router_id, unique among the pairs on a LAN."
    )
    advert_int: Annotated[float, Field(ge=0.05, le=10)] = Field(
        0.1,
        description="Seconds between VRRP adverts; the standby takes over after about "
        "three missed ones.",
    )
    pg_port: Annotated[int, Field(ge=1, le=65535)] = Field(
        5432, description="Port the node's PostgreSQL listens on, on its own address."
    )
    pg_clients: list[ipaddress.IPv4Network] = Field(
        default_factory=list,
        description="Networks (CIDR, e.g. 10.1.2.0/24 or 10.1.2.7/32) whose clients may "
        "log in to the node's PostgreSQL over TCP besides the pair's two nodes, with a "
        "password (scram-sha-256) as the peer does; never for replication. Empty: only "
        "the pair.",
    )

    provider: str = Field(
        "",
        description="The node provider that fences a node and keeps the pair's witness "
        "record (which node is outdated): lab (nodes as network namespaces of one host), "
        "a VIM driver's name (libvirt, vmware, ...: the node VMs' VIM, configured by its "
        "[vim.NAME] section), or empty for none (a standby then never takes over from a "
        "peer it cannot fence).",
    )
    provider_url: str = Field(
        "", description="Where the node provider's API answers, e.g. http://198.18.0.1:7700."
    )
    provider_token_file: str = Field(
        "",
        description="File holding the node provider's token (relative: to the node home); "
        "never logged.",
    )
    provider_timeout: Annotated[float, Field(ge=0.5, le=120)] = Field(
        5.0,
        description="Seconds one node provider call (a fence included) may take before it "
        "counts as a transient failure; a fence is on the failover's critical path.",
    )

    @field_validator("pg_clients", mode="before")
    @classmethod
    def _client_networks(cls, entries: object) -> object:
        if not isinstance(entries, list):
            return entries
        networks = []
        for entry in entries:
            try:
                network = ipaddress.IPv4Network(str(entry))
            except ValueError:
                raise ValueError(
                    f"pg_clients entry {entry!r} is not an IPv4 network: write it as "
                    "10.1.2.0/24 (host bits zero), or 10.1.2.7/32 for one host"
                ) from None
            # Every address would then be one password away from the database: name
            # the clients' networks instead.
            if network.prefixlen == 0:
                raise ValueError(
                    f"pg_clients entry {entry!r} admits every address: name the "
                    "clients' own networks"
                )
            networks.append(network)
        return networks

    @model_validator(mode="after")
    def _a_consistent_pair(self) -> HaSettings:
        if not self.enabled:
            return self
        if len(self.node_list) != 2 or self.node_list[0] == self.node_list[1]:
            raise ValueError("ha_node_list names the pair's two nodes: two different addresses")
        if self.address not in self.node_list:
            raise ValueError(
                f"this node's address {self.address} is not in ha_node_list "
                f"{', '.join(map(str, self.node_list))}"
            )
        if self.kad_vip is None or self.gateway_ip is None:
            raise ValueError("an HA node needs kad_vip and gateway_ip")
        network = self.kad_vip.network
        for address in [*self.node_list, self.gateway_ip]:
            if address not in network:
                raise ValueError(f"{address} is not in the VIP's subnet {network}")
        if self.kad_vip.ip in [*self.node_list, self.gateway_ip]:
            raise ValueError(f"the VIP {self.kad_vip.ip} is a node's or the gateway's address")
        return self

    @property
    def peer(self) -> ipaddress.IPv4Address:
        """The other node of the pair."""
        return next(a for a in self.node_list if a != self.address)


class CliSettings(_Section):
    """escadm, the node's own client of its API."""

    retry_seconds: Annotated[float, Field(ge=0, le=3600)] = Field(
        30.0,
        description="Seconds escadm keeps sending a write again, with the same "
        "Idempotency-Key and a doubling pause, while the node does not answer or answers "
        "503 (a switchover, a restart, MAINTENANCE); a 4xx is never sent again. 0: sent "
        "once.",
    )


class NodeSettings(_Section):
    name: str = Field(default_factory=socket.gethostname, description="This node's name.")


class Settings(_Section):
    node: NodeSettings = Field(default_factory=NodeSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    vim: VimSettings = Field(default_factory=VimSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    notifications: NotificationSettings = Field(default_factory=NotificationSettings)
    monitor: MonitorSettings = Field(default_factory=MonitorSettings)
    backup: BackupSettings = Field(default_factory=BackupSettings)
    ha: HaSettings = Field(default_factory=HaSettings)
    cli: CliSettings = Field(default_factory=CliSettings)


def describe_validation(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"])
        if item["type"] == "extra_forbidden":
            lines.append(f"unknown key '{key}': remove it or check its spelling")
        else:
            lines.append(f"invalid value for '{key}': {item['msg']}")
    return "; ".join(lines)


@dataclass(frozen=True)
class NodeHome:
    """The paths of one node's home directory."""

    root: Path

    @classmethod
    def resolve(cls, home: str | os.PathLike[str] | None) -> NodeHome:
        """`--home`, else $ESC_HOME, else ~/.esc."""
        chosen = home or os.environ.get(HOME_ENV) or Path.home() / ".esc"
        return cls(Path(chosen).expanduser().absolute())

    @property
    def config_file(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "log"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def local_credential_file(self) -> Path:
        """Secret of the node-local `escadm` account, readable by root only."""
        return self.data / "escadm.credential"

    @property
    def backup_key_file(self) -> Path:
        """The key that signs and verifies this node's backups (mode 0600)."""
        return self.data / "backup.key"

    @property
    def vim_dir(self) -> Path:
        return self.data / "vim"

    @property
    def vims_dir(self) -> Path:
        """Where the drivers of the VIM connections (escadm vim add) keep their state, a
        directory per connection."""
        return self.data / "vims"

    @property
    def vim_state(self) -> tuple[Path, ...]:
        """Every directory of the home where VIM drivers keep state (the local VIM's
        instances among them): what moves with the node when its home is replaced."""
        return (self.vim_dir, self.vims_dir)

    def vim_location(self, settings: Settings) -> Path:
        """Where the VIM driver keeps its state: [vim] local_dir (relative: to the home),
        else data/vim."""
        return self.root / settings.vim.local_dir if settings.vim.local_dir else self.vim_dir

    @property
    def packages(self) -> Path:
        """The release wheels uploaded for the package installer (PUT /esc/node/packages)."""
        return self.root / "packages"

    @property
    def backups(self) -> Path:
        """The backups of this node's database the node API keeps (/esc/node/backups)."""
        return self.root / "backups"

    @property
    def install_dir(self) -> Path:
        """The package installer's state, log and the release it saved to go back to."""
        return self.root / "install"

    @property
    def tls_dir(self) -> Path:
        """Where `escadm init --tls` puts the self-signed certificate and its key."""
        return self.root / "tls"

    def tls_files(self, settings: Settings) -> tuple[Path, Path] | None:
        """([api] tls_cert, tls_key) as paths (relative: to the home), None without TLS."""
        if not settings.api.tls_cert:
            return None
        return self.root / settings.api.tls_cert, self.root / settings.api.tls_key

    def exists(self) -> bool:
        return self.config_file.is_file()

    def load(self) -> Settings:
        if not self.exists():
            raise ConfigError(
                f"no node at {self.root}: {CONFIG_FILE} is missing. "
                f"Create one with: escadm init --home {self.root}"
            )
        try:
            raw = tomllib.loads(self.config_file.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{self.config_file} is not valid TOML: {exc}") from exc
        try:
            return Settings.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(f"{self.config_file}: {describe_validation(exc)}") from exc

    def save(self, settings: Settings) -> None:
        data = toml_data(settings)
        tmp = self.config_file.with_suffix(".toml.tmp")
        tmp.write_text(tomli_w.dumps(data))
        tmp.chmod(0o600)
        tmp.replace(self.config_file)

    def database_url(self, settings: Settings) -> str:
        return settings.database.url or f"sqlite:///{self.data / 'esc.db'}"


def toml_data(settings: Settings) -> dict:
    """The settings as esc.toml holds them: TOML has no null, so unset keys are left out."""
    return settings.model_dump(mode="json", exclude_none=True)


def api_base_url(settings: Settings) -> str:
    """Where clients on this host reach the API: a wildcard listen address is
    reached on loopback."""
    host = settings.api.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"{settings.api.scheme}://{host}:{settings.api.port}"


def read_secret(home: Path, file: str, env: str, what: str) -> str:
    """A secret (a VIM's password, say) from the file `file` (relative: in the node home;
    it must not be readable by others) or else the environment variable `env`.

    Never from esc.toml itself: esc.toml is put in backups and shown by `escadm`, a file
    or variable name is all it holds. `what` names the settings in the error, e.g.
    "[vim.vmware] password_file / password_env".
    """
    if file:
        path = home / file
        try:
            mode = path.stat().st_mode
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{what}: cannot read {path}: {exc.strerror}") from None
        if mode & 0o077:
            raise ConfigError(
                f"{what}: {path} is readable by others (mode {mode & 0o777:o}); chmod 600 {path}"
            )
        secret = text.strip()
        if not secret:
            raise ConfigError(f"{what}: {path} is empty; write the secret into it")
        return secret
    if env:
        secret = os.environ.get(env, "")
        if not secret:
            raise ConfigError(f"{what}: the environment variable {env} is not set or empty")
        return secret
    raise ConfigError(f"{what}: set one, to a file holding the secret or a variable's name")
