"""The upgrade policy, checked on the seed's own examples and by properties."""

from __future__ import annotations

import itertools
from collections import deque
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from esc.release.catalog import CatalogError, load_catalog
from esc.release.numbers import Change, ReleaseNumber, ReleaseNumberError, classify
from esc.release.planner import _image_methods, plan_upgrade, shortest_path
from esc.release.procedures import Method

SEED = load_catalog(Path(__file__).with_name("seed_catalog.toml"))
R = ReleaseNumber.parse


def plan(source: str, target: str, vim: str = "openstack", ha: bool = False):
    return plan_upgrade(SEED, R(source), R(target), vim, ha)


# The seed's examples, verbatim -------------------------------------------------


def test_patch_builds_upgrade_by_package() -> None:
    p = plan("3.1.0.116", "3.1.0.150")
    assert p.allowed and p.change is Change.PATCH and p.methods[0] is Method.PACKAGE
    assert plan("3.1.0.116", "3.1.0.150", ha=True).methods[0] is Method.IN_SERVICE_PACKAGE


def test_2_3_1_to_2_3_2_not_by_package_but_by_backup_and_restore() -> None:
    p = plan("2.3.1", "2.3.2")
    assert p.allowed and Method.PACKAGE not in p.methods
    assert p.methods == [Method.BACKUP_RESTORE]


def test_3_0_to_4_0_by_backup_and_restore() -> None:
    p = plan("3.0", "4.0.0")
    assert p.allowed and p.change is Change.MAJOR and p.methods == [Method.BACKUP_RESTORE]


@pytest.mark.parametrize("source", ["5.3", "5.4"])
@pytest.mark.parametrize("vim", ["openstack", "vmware", "csp"])
def test_5_3_and_5_4_to_5_5_direct_by_both_methods(source: str, vim: str) -> None:
    p = plan(source, "5.5.0", vim, ha=True)
    assert p.allowed and p.methods == [Method.BACKUP_RESTORE, Method.IN_SERVICE_IMAGE]
    standalone = plan(source, "5.5.0", vim, ha=False)
    assert standalone.methods == [Method.BACKUP_RESTORE]  # in-service needs an HA pair


def test_5_2_to_5_5_gets_a_stepwise_path() -> None:
    p = plan("5.2", "5.5.0")
    assert not p.allowed
    assert "does not accept a direct upgrade from 5.2" in p.reason
    assert p.path == ["5.2", "5.4.0.100", "5.5.0"]
    assert p.next_step == "upgrade stepwise: 5.2 → 5.4.0.100 → 5.5.0"


def test_5_5_to_5_4_is_a_downgrade() -> None:
    p = plan("5.5", "5.4.0.88")
    assert not p.allowed and p.change is Change.DOWNGRADE
    assert "downgrade" in p.reason and "roll back" in p.next_step


def test_vim_missing_from_the_matrix_is_refused() -> None:
    p = plan("5.4.0.88", "5.5.0", "kvm")
    assert not p.allowed and "does not support the kvm VIM" in p.reason
    assert "openstack" in p.next_step


def test_unknown_target_and_same_release_are_refused() -> None:
    assert "not a release of the catalog" in plan("5.4", "5.6.0").reason
    same = plan("5.5.0", "5.5.0")
    assert not same.allowed and "already runs" in same.reason


@pytest.mark.parametrize("bad", ["5.x", "abc", "5..1", "", "-1.2", "5", "1.2.3.4.5", " "])
def test_malformed_numbers_are_clear_errors(bad: str) -> None:
    with pytest.raises(ReleaseNumberError, match="not a release number"):
        R(bad)


def test_shipped_catalog_is_valid_and_knows_this_release() -> None:
    from esc import __version__

    assert load_catalog().knows(R(__version__))


def test_hostile_catalogs_are_refused(tmp_path: Path) -> None:
    cases = {
        "not toml": "this is [not toml",
        "wrong format": 'format = 9\n[[train]]\nname = "1.0"\nreleases = ["1.0.0"]\n',
        "misfiled": 'format = 1\n[[train]]\nname = "1.0"\nreleases = ["2.0.0"]\n',
        "future source": 'format = 1\n[[train]]\nname = "1.0"\nreleases = ["1.0.0"]\n'
        '[train.accepts.local]\nbackup_restore = ["9.9"]\n',
    }
    for name, text in cases.items():
        path = tmp_path / f"{name}.toml"
        path.write_text(text)
        with pytest.raises(CatalogError):
            load_catalog(path)
    with pytest.raises(CatalogError, match="cannot read"):
        load_catalog(tmp_path / "missing.toml")


# Properties -----------------------------------------------------------------------

numbers = st.lists(st.integers(0, 999), min_size=2, max_size=4).map(
    lambda parts: ".".join(map(str, parts))
)


@given(numbers, numbers, numbers)
def test_ordering_is_a_total_order_consistent_with_parsing(a: str, b: str, c: str) -> None:
    x, y, z = R(a), R(b), R(c)
    assert R(str(x)) == x  # parsing round-trips
    assert sum([x < y, x == y, y < x]) == 1  # trichotomy
    if x <= y and y <= z:
        assert x <= z  # transitivity
    padded = lambda n: tuple(int(p) for p in n.split(".")) + (0,) * (4 - len(n.split(".")))  # noqa: E731
    assert (x < y) == (padded(a) < padded(b))
    assert (classify(x, y) is Change.SAME) == (x == y)
    assert (classify(x, y) is Change.DOWNGRADE) == (y < x)


RELEASES = [r for t in SEED.train for r in t.releases]
VIM_NAMES = ["openstack", "vmware", "csp", "kvm"]


def _brute_force_hops(source: str, target: str, vim: str, ha: bool) -> int | None:
    """Fewest hops by breadth-first search over every pair of trains (no shortcuts)."""
    trains = [t.name for t in SEED.train]
    seen, queue = {R(source).train: 0}, deque([R(source).train])
    while queue:
        current = queue.popleft()
        for nxt in trains:
            if (
                nxt not in seen
                and R(nxt) > R(current)
                and _image_methods(SEED, current, nxt, vim, ha)
            ):
                seen[nxt] = seen[current] + 1
                queue.append(nxt)
    return seen.get(R(target).train)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(RELEASES), st.sampled_from(RELEASES), st.sampled_from(VIM_NAMES), st.booleans()
)
def test_every_hop_of_every_path_is_allowed_and_no_shorter_path_exists(
    source: str, target: str, vim: str, ha: bool
) -> None:
    result = plan_upgrade(SEED, R(source), R(target), vim, ha)
    path = result.path or shortest_path(SEED, R(source), R(target), vim, ha)
    if R(target) <= R(source) or R(source).train == R(target).train:
        return
    if path is None:
        assert _brute_force_hops(source, target, vim, ha) is None
        return
    for hop_from, hop_to in itertools.pairwise(path):
        hop = plan_upgrade(SEED, R(hop_from), R(hop_to), vim, ha)
        assert hop.allowed, f"hop {hop_from} → {hop_to} is not itself allowed: {hop.reason}"
    assert len(path) - 1 == _brute_force_hops(source, target, vim, ha)
    if result.allowed:
        assert len(path) == 2


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([*RELEASES, "5.6.0", "1.0"]),
    st.sampled_from([*RELEASES, "5.6.0"]),
    st.sampled_from([*VIM_NAMES, "local"]),
    st.booleans(),
)
def test_every_refusal_names_its_reason_and_next_step(
    source: str, target: str, vim: str, ha: bool
) -> None:
    result = plan_upgrade(SEED, R(source), R(target), vim, ha)
    if result.allowed:
        assert result.methods and not result.reason
    else:
        assert result.reason and result.next_step and not result.methods
