"""The online-upgrade pre-check: the schema path from a pair's revision to a target
release's head, read from the target's wheel without running any of its code."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from esc.db.migrate import MIGRATIONS_DIR, head_revision, script_directory
from esc.upgrade.backup_restore import UpgradeError
from esc.upgrade.schema_path import VERSIONS_DIR, schema_path

RELEASES = Path(__file__).parents[2] / "releases"

Chain = list[tuple[str, str | None, str | None]]  # revision, down_revision, esc_kind


def script(revision: str, down: str | None, kind: str | None, body: str = "pass") -> str:
    declared = "" if kind is None else f'esc_kind = "{kind}"\n'
    return (
        f'"""migration {revision}"""\nimport sqlalchemy as sa\nfrom alembic import op\n\n'
        f'revision: str = "{revision}"\ndown_revision: str | None = {down!r}\n{declared}\n\n'
        f"def upgrade() -> None:\n    {body}\n"
    )


def wheel(tmp_path: Path, chain: Chain, **extra: str) -> Path:
    path = tmp_path / "esc-9.9.0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("esc-9.9.0.1.dist-info/METADATA", "Name: esc\nVersion: 9.9.0.1\n")
        for revision, down, kind in chain:
            archive.writestr(f"{VERSIONS_DIR}{revision}_step.py", script(revision, down, kind))
        for name, text in extra.items():
            archive.writestr(name, text)
    return path


BASE: Chain = [("0001", None, "expand"), ("0002", "0001", "expand")]


def test_an_expand_only_path_is_online_and_lists_the_switchovers_migrations(
    tmp_path: Path,
) -> None:
    target = wheel(tmp_path, [*BASE, ("0003", "0002", "expand"), ("0004", "0003", "expand")])
    path = schema_path(target, "0002")
    assert path.allowed and path.revisions == ["0003", "0004"]
    assert (path.current, path.target_head) == ("0002", "0004")
    assert path.reason == "expand-only from 0002 to 0004: the old release runs on the result"
    assert schema_path(target, "0001").revisions == ["0002", "0003", "0004"]


def test_a_contract_on_the_path_is_refused_naming_it_and_the_offline_methods(
    tmp_path: Path,
) -> None:
    target = wheel(tmp_path, [*BASE, ("0003", "0002", "contract"), ("0004", "0003", "expand")])
    path = schema_path(target, "0002")
    assert not path.allowed and path.revisions == ["0003", "0004"]
    assert path.reason == (
        "migration 0003 (0003_step.py) is a contract migration: the old release could not "
        "run on its result, so a quick rollback would be impossible"
    )
    assert "Backup and Restore" in path.next_step and "maintenance" in path.next_step
    # Applied already on a pair at 0003: only what comes after it is judged.
    assert schema_path(target, "0003").allowed


def test_only_the_migrations_after_the_pairs_revision_need_a_kind(tmp_path: Path) -> None:
    """An old release's scripts predate esc_kind: those the pair has are not judged."""
    chain: Chain = [("0001", None, None), ("0002", "0001", None), ("0003", "0002", "expand")]
    target = wheel(tmp_path, [*chain, ("0004", "0003", None), ("0005", "0004", "additive")])
    assert schema_path(target, "0002").revisions == ["0003", "0004", "0005"]
    path = schema_path(target, "0002")
    assert not path.allowed
    assert path.reason == (
        "migration 0004 (0004_step.py) declares no esc_kind, not one of expand, contract: "
        "whether the old release could run on its result is not known; migration 0005 "
        "(0005_step.py) has esc_kind 'additive', not one of expand, contract: whether the "
        "old release could run on its result is not known"
    )


def test_the_pairs_own_schema_is_online_with_nothing_to_migrate(tmp_path: Path) -> None:
    path = schema_path(wheel(tmp_path, BASE), "0002")
    assert (path.allowed, path.revisions) == (True, [])


def test_a_target_without_the_pairs_revision_is_not_a_newer_release(tmp_path: Path) -> None:
    path = schema_path(wheel(tmp_path, BASE), "0007")
    assert not path.allowed and path.revisions == []
    assert path.reason == (
        "the target's migration history (head 0002) does not contain the pair's schema "
        "revision 0007: it is not a newer release of this schema"
    )
    assert "0007" in path.next_step


def test_the_wheels_code_is_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    body = f"open({str(marker)!r}, 'w').close()"
    code = f"open({str(marker)!r}, 'w').close()\n" + script("0003", "0002", "expand", body)
    target = wheel(tmp_path, BASE, **{f"{VERSIONS_DIR}0003_step.py": code})
    assert schema_path(target, "0002").revisions == ["0003"]
    assert not marker.exists()


@pytest.mark.parametrize(
    ("members", "problem"),
    [
        ({"README": "no migrations here"}, "has no esc/db/migrations/versions/*.py"),
        ({f"{VERSIONS_DIR}0001_a.py": "revision = 1 +"}, "0001_a.py does not parse"),
        ({f"{VERSIONS_DIR}0001_a.py": "revision = compute()"}, "other than a literal"),
        ({f"{VERSIONS_DIR}0001_a.py": "down_revision = None"}, "declares no revision"),
        ({f"{VERSIONS_DIR}0002_b.py": script("0002", "0001", "expand")}, "follows 0001"),
        (
            {
                f"{VERSIONS_DIR}0001_a.py": script("0001", None, "expand"),
                f"{VERSIONS_DIR}0002_b.py": script("0002", "0001", "expand"),
                f"{VERSIONS_DIR}0003_c.py": script("0003", "0001", "expand"),
            },
            "heads ['0002', '0003'], not one",
        ),
        (
            {
                f"{VERSIONS_DIR}0001_a.py": script("0001", None, "expand"),
                f"{VERSIONS_DIR}0001_b.py": script("0001", None, "expand"),
            },
            "revision 0001 is in both 0001_a.py and 0001_b.py",
        ),
    ],
)
def test_a_wheel_whose_migrations_cannot_be_read_is_refused_naming_why(
    tmp_path: Path, members: dict[str, str], problem: str
) -> None:
    with pytest.raises(UpgradeError, match=problem.replace("[", r"\[").replace("*", r"\*")):
        schema_path(wheel(tmp_path, [], **members), "0001")


def test_a_file_that_is_not_a_wheel_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "esc-9.9.0.1-py3-none-any.whl"
    path.write_bytes(b"not a zip")
    with pytest.raises(UpgradeError, match="is not a readable wheel"):
        schema_path(path, "0001")


# Each kept release's schema head (docs/upgrade-policy.md, "ESC's own releases").
KEPT_HEADS = {"1.0.0.2": "0004", "1.1.0.1": "0005", "1.1.0.2": "0007", "1.2.0.1": "0008"}


def kept(version: str) -> Path:
    return RELEASES / f"esc-{version}-py3-none-any.whl"


def test_the_kept_release_wheels() -> None:
    """The kept releases predate esc_kind: a pair at a release's own schema has nothing to
    judge; one that would cross their undeclared migrations is refused."""
    for version, head in KEPT_HEADS.items():
        path = schema_path(kept(version), head)
        assert (path.allowed, path.revisions, path.target_head) == (True, [], head)
    crossing = schema_path(kept("1.2.0.1"), "0005")
    assert (crossing.allowed, crossing.revisions) == (False, ["0006", "0007", "0008"])
    assert "migration 0008 (0008_active_lease.py) declares no esc_kind" in crossing.reason
    newer = schema_path(kept("1.2.0.1"), head_revision())
    assert not newer.allowed and "not a newer release" in newer.reason


def test_this_releases_own_migrations_take_a_1_2_pair_online(tmp_path: Path) -> None:
    """This release's scripts, as its wheel holds them, from 1.2.0.1's schema 0008."""
    target = tmp_path / "esc-this-py3-none-any.whl"
    with zipfile.ZipFile(target, "w") as archive:
        for source in sorted((MIGRATIONS_DIR / "versions").glob("*.py")):
            archive.writestr(VERSIONS_DIR + source.name, source.read_text())
    # alembic's own reading of the same scripts: head down to the one after 0008
    after = [s.revision for s in script_directory().iterate_revisions("head", "0008")]
    path = schema_path(target, "0008")
    assert path.allowed, path.reason
    assert path.revisions == list(reversed(after)) and "0009" in path.revisions
    assert path.target_head == head_revision()
