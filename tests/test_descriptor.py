"""The deployment descriptor: parsing, validation messages, the data-model gate."""

from __future__ import annotations

from pathlib import Path

import pytest

from esc import descriptor as dm
from esc.errors import InvalidRequest, MalformedRequest

EXAMPLE = Path(__file__).parents[1] / "examples" / "deployment.yaml"

MINIMAL = """
tenant: t1
deployment:
  name: d1
  vm_groups:
    - {name: g1, image: healthy, flavor: m1.tiny}
"""


def test_example_has_two_vm_groups_and_three_vms() -> None:
    parsed = dm.parse_descriptor(EXAMPLE.read_text())
    assert [g.name for g in parsed.deployment.vm_groups] == ["lb", "app"]
    assert parsed.initial_vm_count() == 3


def test_defaults_follow_esc() -> None:
    group = dm.parse_descriptor(MINIMAL).deployment.vm_groups[0]
    assert group.recovery_policy.action_on_recovery == "REBOOT_THEN_REDEPLOY"
    assert (group.scaling.min_active, group.scaling.max_active) == (1, 1)


def test_json_is_accepted() -> None:
    text = (
        '{"tenant": "t", "deployment": {"name": "d", "vm_groups": [{"name": "g", '
        '"image": "healthy", "flavor": "m1.tiny"}]}}'
    )
    assert dm.parse_descriptor(text, "application/json").deployment.name == "d"


@pytest.mark.parametrize(
    ("text", "content_type", "expected"),
    [
        ("tenant: [a\n", "application/yaml", "malformed YAML at line 2"),
        ('{"tenant": ', "application/json", "malformed JSON at line 1"),
        (b"\xff\xfe", "application/yaml", "not UTF-8"),
    ],
)
def test_malformed_text_names_the_place(text: str, content_type: str, expected: str) -> None:
    with pytest.raises(MalformedRequest, match=expected):
        dm.parse_descriptor(text, content_type)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("scaling: {min_active: 3, max_active: 2}", r"min_active \(3\) must not exceed max_active"),
        ("colour: blue", "vm_groups\\[0\\].colour: unknown field"),
        ("recovery_policy: {action_on_recovery: PRAY}", "action_on_recovery"),
        ("rules: [{event_name: NOPE, actions: [ALWAYS log]}]", "rule refers to KPI 'NOPE'"),
        ("rules: [{event_name: VM_ALIVE, actions: [log]}]", "must start with TRUE, FALSE"),
        ("bootup_time: -1", "bootup_time"),
    ],
)
def test_invalid_vm_group_names_field(change: str, expected: str) -> None:
    text = MINIMAL.replace("flavor: m1.tiny}", f"flavor: m1.tiny, {change}}}")
    with pytest.raises(InvalidRequest, match=expected):
        dm.parse_descriptor(text)


def test_duplicate_vm_group_names_refused() -> None:
    text = MINIMAL + "    - {name: g1, image: healthy, flavor: m1.tiny}\n"
    with pytest.raises(InvalidRequest, match="duplicate vm_group name 'g1'"):
        dm.parse_descriptor(text)


def test_not_a_mapping() -> None:
    with pytest.raises(InvalidRequest, match="must be a mapping"):
        dm.parse_descriptor("- just\n- a list\n")


def test_data_model_gate_refuses_newer_feature(monkeypatch: pytest.MonkeyPatch) -> None:
    # A feature of a data model version 2, used by any descriptor with day0_config.
    feature = dm.Feature(
        "day0 templates", 2, lambda d: any(g.day0_config for g in d.deployment.vm_groups)
    )
    monkeypatch.setattr(dm, "FEATURES", [feature])
    with_feature = dm.parse_descriptor(EXAMPLE.read_text())
    with pytest.raises(InvalidRequest, match="undeploy and redeploy to use it"):
        dm.check_data_model(with_feature, "demo/web", created_with=1)
    dm.check_data_model(with_feature, "demo/web", created_with=2)  # new enough
    dm.check_data_model(dm.parse_descriptor(MINIMAL), "t1/d1", created_with=1)  # not used
