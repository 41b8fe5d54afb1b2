"""The deployment descriptor (YAML or JSON), modelled on ESC's esc_datamodel.

    tenant: demo
    deployment:
      name: web
      vm_groups:
        - name: lb
          image: healthy
          flavor: m1.small
          scaling: {min_active: 1, max_active: 2, elastic: true}
          recovery_policy: {action_on_recovery: REBOOT_THEN_REDEPLOY, max_retries: 3}
          ...

Also home of the data model version and the gate that refuses a newer
data model's feature on a deployment created with an older one.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from esc.db.models import RecoveryPolicy
from esc.errors import InvalidRequest, MalformedRequest
from esc.nesting import TooDeep, check_json_depth, check_yaml_depth

# Bumped when the descriptor gains a feature that older deployments lack.
DATA_MODEL_VERSION = 2

Name = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Letters, digits, '_', '.', '-'; starts with a letter or digit.",
    ),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Scaling(_Strict):
    min_active: Annotated[int, Field(ge=0, le=1000)] = 1
    max_active: Annotated[int, Field(ge=1, le=1000)] = 1
    elastic: bool = False

    @model_validator(mode="after")
    def _min_not_above_max(self) -> Scaling:
        if self.min_active > self.max_active:
            raise ValueError(
                f"min_active ({self.min_active}) must not exceed max_active ({self.max_active})"
            )
        return self


class Recovery(_Strict):
    action_on_recovery: RecoveryPolicy = RecoveryPolicy.REBOOT_THEN_REDEPLOY
    max_retries: Annotated[int, Field(ge=1, le=100)] = 3


def _addresses(values: list[str], what: str) -> list[str]:
    for value in values:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"{what}: {value!r} is not an IP address") from None
    if len(set(values)) != len(values):
        raise ValueError(f"{what}: an address is listed twice")
    return values


class InterfaceSpec(_Strict):
    """A NIC of each VM of the group. `ips` and `floating_ips` are pools: the group's VM
    number N (counting from 0) has the Nth address, and keeps it when redeployed."""

    network: Annotated[str, Field(min_length=1, max_length=256)]
    ips: Annotated[list[str], Field(max_length=1000)] = Field(default_factory=list)
    floating_ips: Annotated[list[str], Field(max_length=1000)] = Field(default_factory=list)
    model: Annotated[str, Field(pattern=r"^[a-z0-9]{1,16}$")] = "virtio"
    vlan: Annotated[int, Field(ge=1, le=4094)] | None = None

    @model_validator(mode="after")
    def _pools_are_addresses(self) -> InterfaceSpec:
        _addresses(self.ips, f"interface on {self.network}: ips")
        _addresses(self.floating_ips, f"interface on {self.network}: floating_ips")
        return self


class VolumeSpec(_Strict):
    name: Name
    size_gb: Annotated[int, Field(ge=1, le=65536)]


class PlacementSpec(_Strict):
    zone: Annotated[str, Field(max_length=256)] = ""
    host: Annotated[str, Field(max_length=256)] = ""
    datastore: Annotated[str, Field(max_length=256)] = ""
    cluster: Annotated[str, Field(max_length=256)] = ""
    # VMs naming one group are placed together (affinity) or apart (anti-affinity, the
    # default for a group); the soft policies prefer rather than insist.
    group: Annotated[str, Field(pattern=r"^([A-Za-z0-9][A-Za-z0-9._-]{0,62})?$")] = ""
    group_policy: Literal[
        "", "anti-affinity", "affinity", "soft-anti-affinity", "soft-affinity"
    ] = ""


class MetricCollector(_Strict):
    type: Annotated[str, Field(min_length=1, max_length=64)] = "ICMPPing"
    poll_frequency: Annotated[float, Field(gt=0, le=3600)] = 3.0


class Kpi(_Strict):
    event_name: Name
    metric_value: float = 1
    metric_cond: Annotated[str, Field(pattern=r"^(GT|GE|LT|LE|EQ)$")] = "GT"
    metric_occurrences_true: Annotated[int, Field(ge=1, le=1000)] = 1
    metric_occurrences_false: Annotated[int, Field(ge=1, le=1000)] = 3
    metric_collector: MetricCollector = Field(default_factory=MetricCollector)


RULE_WHEN = ("TRUE", "FALSE", "ALWAYS")


def rule_when(action: str) -> str:
    """TRUE, FALSE or ALWAYS: the first word of a rule action ("FALSE recover autohealing")."""
    words = action.split(None, 1)
    return words[0] if words else ""


class Rule(_Strict):
    event_name: Name
    actions: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=256)]],
        Field(min_length=1, max_length=32),
    ]

    @model_validator(mode="after")
    def _actions_say_when(self) -> Rule:
        for action in self.actions:
            if rule_when(action) not in RULE_WHEN:
                raise ValueError(
                    f"rule action {action!r} must start with TRUE, FALSE or ALWAYS (when the "
                    "KPI turns true, turns false, or either), e.g. 'FALSE recover autohealing'"
                )
        return self


class VmGroupSpec(_Strict):
    name: Name
    image: Annotated[str, Field(min_length=1, max_length=256)]
    flavor: Annotated[str, Field(min_length=1, max_length=128)]
    scaling: Scaling = Field(default_factory=Scaling)
    recovery_policy: Recovery = Field(default_factory=Recovery)
    bootup_time: Annotated[float, Field(gt=0, le=3600)] = 60.0
    recovery_wait_time: Annotated[float, Field(gt=0, le=3600)] = 30.0
    kpis: Annotated[list[Kpi], Field(max_length=32)] = Field(default_factory=list)
    rules: Annotated[list[Rule], Field(max_length=32)] = Field(default_factory=list)
    day0_config: Annotated[dict[str, str], Field(max_length=32)] = Field(default_factory=dict)
    interfaces: Annotated[list[InterfaceSpec], Field(max_length=16)] = Field(default_factory=list)
    volumes: Annotated[list[VolumeSpec], Field(max_length=16)] = Field(default_factory=list)
    placement: PlacementSpec = Field(default_factory=PlacementSpec)

    @model_validator(mode="after")
    def _pools_cover_the_group(self) -> VmGroupSpec:
        for interface in self.interfaces:
            for pool, addresses in (
                ("ips", interface.ips),
                ("floating_ips", interface.floating_ips),
            ):
                if addresses and len(addresses) < self.scaling.max_active:
                    raise ValueError(
                        f"vm_group {self.name}: the interface on {interface.network} lists "
                        f"{len(addresses)} {pool} for up to {self.scaling.max_active} VMs "
                        "(max_active): list one per VM, or none for addresses the VIM assigns"
                    )
        names = [v.name for v in self.volumes]
        if len(set(names)) != len(names):
            raise ValueError(f"vm_group {self.name}: duplicate volume name")
        return self

    @model_validator(mode="after")
    def _rules_name_kpis(self) -> VmGroupSpec:
        known = {k.event_name for k in self.kpis}
        if len(known) != len(self.kpis):
            raise ValueError(f"vm_group {self.name}: duplicate KPI event_name")
        for rule in self.rules:
            if rule.event_name not in known:
                raise ValueError(
                    f"vm_group {self.name}: rule refers to KPI {rule.event_name!r}, which is not "
                    f"defined; known KPIs: {sorted(known) or 'none'}"
                )
        return self


class DeploymentSpec(_Strict):
    name: Name
    # The VIM connection the VMs go on (`escadm vim list`); absent: the node's own [vim].
    vim: Name | None = None
    vm_groups: Annotated[list[VmGroupSpec], Field(min_length=1, max_length=64)]

    @model_validator(mode="after")
    def _unique_group_names(self) -> DeploymentSpec:
        seen: set[str] = set()
        for group in self.vm_groups:
            if group.name in seen:
                raise ValueError(f"duplicate vm_group name {group.name!r}")
            seen.add(group.name)
        return self


class Descriptor(_Strict):
    tenant: Name
    deployment: DeploymentSpec

    def initial_vm_count(self) -> int:
        return sum(g.scaling.min_active for g in self.deployment.vm_groups)


def _location(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "descriptor"


def describe_validation_error(error: ValidationError) -> str:
    messages = []
    for item in error.errors():
        msg = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            msg = "unknown field; remove it or check its spelling"
        messages.append(f"{_location(item['loc'])}: {msg}")
    return "; ".join(messages)


def parse_descriptor(text: str | bytes, content_type: str = "") -> Descriptor:
    """Parse YAML or JSON text into a validated Descriptor, or raise InvalidRequest."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedRequest("descriptor is not UTF-8 text") from exc
    try:
        # JSON is YAML too, so YAML is the reader unless JSON is declared. The
        # depth is measured first: both parsers recurse once per level.
        if "json" in content_type:
            check_json_depth(text.encode(), "the descriptor")
            data = json.loads(text)
        else:
            check_yaml_depth(text, "the descriptor")
            data = yaml.safe_load(text)
    except TooDeep as exc:
        raise MalformedRequest(str(exc)) from None
    except json.JSONDecodeError as exc:
        raise MalformedRequest(
            f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise MalformedRequest(f"malformed YAML{where}: {problem}") from exc
    return validate_descriptor(data)


def validate_descriptor(data: Any) -> Descriptor:
    if not isinstance(data, dict):
        raise InvalidRequest(
            "descriptor must be a mapping with 'tenant' and 'deployment' "
            "(see examples/deployment.yaml)"
        )
    try:
        return Descriptor.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequest(describe_validation_error(exc)) from exc


@dataclass(frozen=True)
class Feature:
    """A descriptor feature and the data model version that introduced it."""

    name: str
    since: int
    used_by: Callable[[Descriptor], bool]


def _groups_use(attribute: str) -> Callable[[Descriptor], bool]:
    default = getattr(VmGroupSpec.model_fields[attribute], "default_factory", None)
    empty = default() if default else None
    return lambda d: any(getattr(g, attribute) != empty for g in d.deployment.vm_groups)


# Features newer than data model version 1 are listed here when they are
# added; version 1 is the baseline every deployment has.
FEATURES: list[Feature] = [
    Feature("deployment.vim", 2, lambda d: d.deployment.vim is not None),
    Feature("vm_groups[].interfaces", 2, _groups_use("interfaces")),
    Feature("vm_groups[].volumes", 2, _groups_use("volumes")),
    Feature("vm_groups[].placement", 2, _groups_use("placement")),
]


def check_data_model(descriptor: Descriptor, deployment: str, created_with: int) -> None:
    """Refuse a newer data model's feature on a deployment made with an older one."""
    newer = [f for f in FEATURES if f.since > created_with and f.used_by(descriptor)]
    if newer:
        names = ", ".join(f"{f.name} (data model {f.since})" for f in newer)
        raise InvalidRequest(
            f"deployment {deployment} was created with data model version {created_with}; "
            f"{names} needs a newer data model: undeploy and redeploy to use it"
        )
