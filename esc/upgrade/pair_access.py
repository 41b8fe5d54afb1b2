"""The pair an upgrade acts on: its two nodes, its VIP, how to reach their API (the pair
access file; not the pair file of `escadm init --ha`, which carries the pair's secrets).

An upgrade is run from an operator's machine, which reaches the nodes only
through their REST API (as on real VMs it cannot read a node's files). The pair
is named either by a small TOML file:

    name = "esc-pair"            # names the upgrade's record; default: the file's name
    vip = "198.18.80.100"
    port = 8080                  # the nodes' API port (default 8080)
    scheme = "http"              # or "https"
    ca_file = ""                 # https: the CA that signed the nodes' certificates
    user = "admin"
    password_file = "admin.password"   # relative to this file; else $ESC_PASSWORD
    vim = "local"                # the VIM the nodes run on (the planner's --vim)

    [[node]]
    name = "esc-1"
    address = "198.18.80.11"

    [[node]]
    name = "esc-2"
    address = "198.18.80.12"

An upgrade by image replaces the nodes through their node provider, which the file
then names, with the pair file the nodes were made with (a redeployed node joins its
pair with it; a secret, mode 0600):

    ha_pair_file = "esc-pair.json"   # relative to this file
    [provider]
    name = "local"               # the lab's host agent, or a VIM's driver: openstack,
                                 # libvirt, vmware, csp
    agent = "http://198.18.80.1:7700"      # local: the agent's URL
    agent_token_file = "agent.token"        # local: the file holding its token
    [provider.openstack]         # a VIM's driver: its settings, as [vim.openstack] of
    auth_url = "..."             # esc.toml (relative files are beside this file)

The nodes' names are their names at the provider. A provider that keeps no record
of what a node was deployed with (a CSP) needs it in the file, as `escadm node
deploy --json` printed it:

    [[node]]
    name = "esc-1"
    address = "198.18.80.11"
    [node.parameters]
    image = "esc-1.2.0.1.qcow2"
    ip = "198.18.80.11/24"
    ...

or by the nodes' addresses on the command line (`--pair 198.18.80.11,198.18.80.12
--vip 198.18.80.100`), the credentials then from $ESC_USER/$ESC_PASSWORD.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from esc.release.catalog import VIMS

if TYPE_CHECKING:
    from esc.ha.provider import NodeProvider

USER_ENV = "ESC_USER"
PASSWORD_ENV = "ESC_PASSWORD"
DEFAULT_PORT = 8080


class PairAccessError(ValueError):
    """The pair cannot be used as given; the message names what and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _address(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None


class PairNode(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=63)]
    address: str
    # What the node was deployed with, as `escadm node deploy --json` printed its
    # "parameters": for a provider that keeps no record of it (a CSP).
    parameters: dict[str, Any] = Field(default_factory=dict)

    _check_address = field_validator("address")(_address)


LAB_PROVIDER = "local"
# Seconds one call to the lab's agent may take: removing a node's disk is not quick.
CALL_TIMEOUT = 30.0
NODE_VIMS = ("openstack", "libvirt", "vmware", "csp")


class ProviderAccess(BaseModel):
    """The node provider the pair's nodes run on (an upgrade by image replaces them)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: Literal["local", "openstack", "libvirt", "vmware", "csp"]
    agent: str = ""
    agent_token_file: str = ""

    @property
    def vim_section(self) -> dict[str, Any]:
        extra = self.model_extra or {}
        return dict(extra.get(self.name) or {})


class Pair(_Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")]
    vip: str
    port: Annotated[int, Field(ge=1, le=65535)] = DEFAULT_PORT
    scheme: Literal["http", "https"] = "http"
    ca_file: str = ""
    user: str = "admin"
    password_file: str = ""
    vim: str = "local"
    ha_pair_file: str = ""
    provider: ProviderAccess | None = None
    node: Annotated[list[PairNode], Field(min_length=2, max_length=2)]

    _check_vip = field_validator("vip")(_address)

    @field_validator("vim")
    @classmethod
    def _known_vim(cls, value: str) -> str:
        if value not in VIMS:
            raise ValueError(f"unknown VIM {value!r}: one of {', '.join(VIMS)}")
        return value

    @field_validator("node")
    @classmethod
    def _distinct(cls, nodes: list[PairNode]) -> list[PairNode]:
        if nodes[0].address == nodes[1].address or nodes[0].name == nodes[1].name:
            raise ValueError("the two nodes need distinct names and addresses")
        return nodes

    def url(self, address: str) -> str:
        host = f"[{address}]" if ":" in address else address
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def vip_url(self) -> str:
        return self.url(self.vip)

    def node_named(self, address: str) -> PairNode:
        return next(n for n in self.node if n.address == address)


class PairAccess:
    """A pair and the secret to reach it (kept out of the model, never shown)."""

    def __init__(self, pair: Pair, password: str, base: Path) -> None:
        self.pair = pair
        self.password = password
        self.base = base  # where relative paths of the pair file are, and its record

    @property
    def auth(self) -> tuple[str, str]:
        return self.pair.user, self.password

    @property
    def verify(self) -> str | bool:
        if self.pair.scheme == "http":
            return False
        if not self.pair.ca_file:
            return True
        return str(self._path(self.pair.ca_file))

    def _path(self, value: str) -> Path:
        path = Path(value)
        return path if path.is_absolute() else self.base / path

    def ha_pair_text(self) -> str:
        """The pair file a redeployed node joins its pair with."""
        if not self.pair.ha_pair_file:
            raise PairAccessError(
                f"pair {self.pair.name}: an upgrade by image redeploys its nodes, which join "
                "the pair with its pair file: name it in the pair access file (ha_pair_file)"
            )
        path = self._path(self.pair.ha_pair_file)
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PairAccessError(
                f"cannot read the pair file {path} (ha_pair_file): {exc}; give the pair file "
                "of escadm init --ha the nodes were made with"
            ) from None

    def node_provider(self, data_dir: Path) -> NodeProvider:
        """The pair's node provider, as [provider] of the pair access file names it;
        `data_dir` is where a VIM driver keeps what it needs between calls."""
        given = self.pair.provider
        if given is None:
            raise PairAccessError(
                f"pair {self.pair.name}: an upgrade by image replaces its nodes through their "
                "node provider: add a [provider] table to the pair access file (name = "
                f'"{LAB_PROVIDER}" or one of {", ".join(NODE_VIMS)})'
            )
        if given.name == LAB_PROVIDER:
            from esc.ha.providers.lab import LabProvider

            if not (given.agent and given.agent_token_file):
                raise PairAccessError(
                    '[provider] name = "local" is the lab\'s host agent: give its agent URL '
                    "and agent_token_file"
                )
            return LabProvider(given.agent, self._path(given.agent_token_file), CALL_TIMEOUT)
        from esc.config import VimSettings
        from esc.ha.providers.vim import VimNodeProvider, node_driver

        try:
            settings = VimSettings.model_validate(
                {"driver": given.name, given.name: given.vim_section}
            )
        except ValidationError as exc:
            problems = "; ".join(error["msg"] for error in exc.errors())
            raise PairAccessError(f"[provider.{given.name}]: {problems}") from None
        driver = node_driver(given.name, settings, self.base, data_dir)
        return VimNodeProvider(driver, f"the {given.name} VIM of the pair access file")


def _password(pair: Pair, base: Path, source: str) -> str:
    if pair.password_file:
        path = Path(pair.password_file)
        path = path if path.is_absolute() else base / path
        try:
            text = path.read_text().strip()
        except OSError as exc:
            raise PairAccessError(
                f"{source}: cannot read password_file {path} ({exc.strerror}); give the "
                "file holding the nodes' admin password"
            ) from None
        if not text:
            raise PairAccessError(f"{source}: password_file {path} is empty")
        return text
    password = os.environ.get(PASSWORD_ENV, "")
    if not password:
        raise PairAccessError(
            f"{source}: no password: set password_file in the pair file, or ${PASSWORD_ENV}"
        )
    return password


def _validated(data: dict, source: str) -> Pair:
    try:
        return Pair.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'file'}: {error['msg']}"
            for error in exc.errors()
        )
        raise PairAccessError(f"{source}: {problems}") from None


def load_pair(spec: str, vip: str = "", vim: str = "") -> PairAccess:
    """The pair named by `spec`: a pair file, or two node addresses "A,B" (then `vip`
    is needed). `vip` and `vim` given with a file override nothing: they are refused."""
    path = Path(spec)
    if path.is_file():
        if vip or vim:
            raise PairAccessError(
                f"--pair {spec} is a pair file: its vip and vim are in it, leave out --vip/--vim"
            )
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise PairAccessError(f"{spec}: not a readable TOML pair file ({exc})") from None
        data.setdefault("name", path.stem)
        pair = _validated(data, spec)
        base = path.absolute().parent
        return PairAccess(pair, _password(pair, base, spec), base)
    addresses = [a.strip() for a in spec.split(",") if a.strip()]
    if len(addresses) != 2:
        raise PairAccessError(
            f"--pair {spec!r}: give a pair file, or the two nodes' addresses as A,B"
        )
    if not vip:
        raise PairAccessError(f"--pair {spec}: give the pair's VIP with --vip")
    data = {
        "name": "pair-" + "-".join(a.replace(":", "_") for a in addresses),
        "vip": vip,
        "user": os.environ.get(USER_ENV, "admin"),
        "vim": vim or "local",
        "node": [{"name": a, "address": a} for a in addresses],
    }
    pair = _validated(data, f"--pair {spec}")
    return PairAccess(pair, _password(pair, Path.cwd(), f"--pair {spec}"), Path.cwd())
