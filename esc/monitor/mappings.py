"""dynamic_mappings.xml: the metrics MONA collects and the actions rules name.

Parsed with lxml with entities, DTDs and the network off, so a hostile file
(billion laughs, external entities) is refused rather than expanded. Every
error names the line and the element. The mappings in force are rows in the
database (ARCHITECTURE principle 1); the XML file is a view of them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from lxml import etree
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from esc.db.models import DynamicMapping
from esc.descriptor import VmGroupSpec
from esc.errors import InvalidRequest

log = logging.getLogger(__name__)  # tagged cl=DYNAMIC_MAPPING (esc.logtags)

DEFAULTS = Path(__file__).with_name("dynamic_mappings.xml")
MAX_BYTES = 1_048_576
ACTION_TYPES = ("SCRIPT", "ESC_POST_EVENT", "LOG")
METRIC_TYPES = ("MONITOR_SUCCESS_FAILURE", "MONITOR_THRESHOLD")


class MappingError(InvalidRequest):
    """A dynamic_mappings.xml that cannot be used; names the line and element."""


@dataclass(frozen=True)
class Mapping:
    kind: str  # "action" or "metric"
    name: str
    type: str
    meta_type: str
    user_label: str = ""
    properties: dict[str, str] = field(default_factory=dict)


def _fail(element: etree._Element | None, problem: str) -> MappingError:
    if element is None:
        return MappingError(f"dynamic_mappings.xml: {problem}")
    return MappingError(
        f"dynamic_mappings.xml line {element.sourceline}, <{element.tag}>: {problem}"
    )


def _child(element: etree._Element, tag: str, *, required: bool = True) -> etree._Element | None:
    found = element.findall(tag)
    if len(found) > 1:
        raise _fail(found[1], f"<{tag}> given twice in <{element.tag}>")
    if not found and required:
        raise _fail(element, f"missing <{tag}>")
    return found[0] if found else None


def _text(element: etree._Element, tag: str, *, required: bool = True) -> str:
    child = _child(element, tag, required=required)
    text = (child.text or "").strip() if child is not None else ""
    if required and not text:
        raise _fail(child if child is not None else element, f"<{tag}> is empty")
    return text


def _entry(element: etree._Element, kind: str, allowed_types: tuple[str, ...]) -> Mapping:
    name = _text(element, "name")
    type_ = _text(element, "type")
    if type_ not in allowed_types:
        raise _fail(
            _child(element, "type"),
            f"{kind} type {type_!r} is not one of {', '.join(allowed_types)}",
        )
    meta = _child(element, "metaData")
    properties: dict[str, str] = {}
    props = _child(meta, "properties", required=False)
    for prop in props.findall("property") if props is not None else []:
        key = _text(prop, "name")
        if key in properties:
            raise _fail(prop, f"property {key!r} given twice")
        properties[key] = _text(prop, "value", required=False)
    return Mapping(
        kind,
        name,
        type_,
        _text(meta, "type"),
        _text(element, "userLabel", required=False),
        properties,
    )


def parse_mappings(data: bytes) -> list[Mapping]:
    """Parse and validate a dynamic_mappings.xml document, or raise MappingError."""
    if len(data) > MAX_BYTES:
        raise _fail(None, f"larger than {MAX_BYTES} bytes")
    parser = etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        huge_tree=False,
        remove_comments=True,
    )
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        raise MappingError(
            f"dynamic_mappings.xml line {exc.lineno}: not well-formed XML: {exc.msg}"
        ) from None
    if root.getroottree().docinfo.doctype:
        raise _fail(root, "a DOCTYPE is not allowed (entities are refused)")
    if root.tag != "dynamic_mappings":
        raise _fail(root, "the root element must be <dynamic_mappings>")
    for child in root:
        if child.tag not in ("actions", "metrics"):
            raise _fail(child, "unknown element; <dynamic_mappings> holds <actions> and <metrics>")
    mappings: list[Mapping] = []
    for section, kind, types in (
        ("actions", "action", ACTION_TYPES),
        ("metrics", "metric", METRIC_TYPES),
    ):
        holder = _child(root, section)
        seen: set[str] = set()
        for element in holder:
            if element.tag != kind:
                raise _fail(element, f"unknown element in <{section}>; expected <{kind}>")
            mapping = _entry(element, kind, types)
            if mapping.name in seen:
                raise _fail(element, f"{kind} {mapping.name!r} defined twice")
            seen.add(mapping.name)
            mappings.append(mapping)
    return mappings


def render_mappings(mappings: list[Mapping]) -> bytes:
    """The XML view of the mappings in force (what export writes)."""
    root = etree.Element("dynamic_mappings")
    for section, kind in (("actions", "action"), ("metrics", "metric")):
        holder = etree.SubElement(root, section)
        for mapping in (m for m in mappings if m.kind == kind):
            element = etree.SubElement(holder, kind)
            etree.SubElement(element, "name").text = mapping.name
            if mapping.user_label:
                etree.SubElement(element, "userLabel").text = mapping.user_label
            etree.SubElement(element, "type").text = mapping.type
            meta = etree.SubElement(element, "metaData")
            etree.SubElement(meta, "type").text = mapping.meta_type
            props = etree.SubElement(meta, "properties")
            for key, value in mapping.properties.items():
                prop = etree.SubElement(props, "property")
                etree.SubElement(prop, "name").text = key
                etree.SubElement(prop, "value").text = value
    return etree.tostring(root, pretty_print=True, xml_declaration=True, encoding="UTF-8")


def mappings_in_force(session: Session) -> list[Mapping]:
    rows = session.scalars(select(DynamicMapping).order_by(DynamicMapping.position))
    return [
        Mapping(r.kind, r.name, r.type, r.meta_type, r.user_label, dict(r.properties)) for r in rows
    ]


def replace_mappings(session: Session, mappings: list[Mapping]) -> None:
    """Put `mappings` in force, in the caller's transaction: all of them or none."""
    session.execute(delete(DynamicMapping))
    for position, m in enumerate(mappings):
        session.add(
            DynamicMapping(
                kind=m.kind,
                name=m.name,
                position=position,
                type=m.type,
                meta_type=m.meta_type,
                user_label=m.user_label,
                properties=dict(m.properties),
            )
        )
    actions = sum(1 for m in mappings if m.kind == "action")
    log.info("dynamic mappings replaced: %d actions, %d metrics", actions, len(mappings) - actions)


def install_defaults_if_empty(session: Session) -> bool:
    if session.scalar(select(DynamicMapping.name).limit(1)) is not None:
        return False
    replace_mappings(session, parse_mappings(DEFAULTS.read_bytes()))
    return True


def check_references(session: Session, groups: Iterable[VmGroupSpec]) -> None:
    """Refuse KPIs and rules that name a metric or action the mappings in force lack."""
    known = {(m.kind, m.name) for m in mappings_in_force(session)}
    problems = []
    for group in groups:
        for kpi in group.kpis:
            metric = kpi.metric_collector.type
            if ("metric", metric) not in known:
                problems.append(
                    f"vm_group {group.name}: KPI {kpi.event_name} uses metric {metric!r}"
                )
        for rule in group.rules:
            problems += [
                f"vm_group {group.name}: rule {rule.event_name} names action {action!r}"
                for action in rule.actions
                if ("action", action) not in known
            ]
    if problems:
        raise InvalidRequest(
            "; ".join(problems)
            + ": not in the dynamic mappings in force (escadm dynamic_mapping show); "
            "add it there first (escadm dynamic_mapping import FILE) or fix the descriptor"
        )
