"""`escadm upgrade backup-restore` and `rollback` refuse bad input before they touch the
node: a missing or unreadable package, another project's wheel, a downgrade, a node
whose database is outside its home, nothing to roll back. Each says why, exits
non-zero, and leaves every file beside and inside the node home as it was."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest
from conftest import escadm, free_port

from esc.version import CURRENT

RELEASES = Path(__file__).parents[2] / "releases"
OLDER = RELEASES / "esc-1.0.0.2-py3-none-any.whl"


def tree(root: Path) -> dict[str, str]:
    """Every file under root (the node home and what lies beside it), by content."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def node(tmp_path: Path) -> Path:
    home = tmp_path / "nodes" / "home"
    escadm("init", "--api-port", str(free_port()), home=home, check=True)
    return home


def not_a_wheel(tmp_path: Path) -> Path:
    path = tmp_path / "esc-9.9.9.9-py3-none-any.whl"
    path.write_bytes(b"not a zip file at all")
    return path


def other_project(tmp_path: Path) -> Path:
    path = tmp_path / "other-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("other-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: other\n")
    return path


def no_catalog(tmp_path: Path) -> Path:
    path = tmp_path / "esc-9.9.0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("esc-9.9.0.1.dist-info/METADATA", "Name: esc\nVersion: 9.9.0.1\n")
    return path


CASES = {
    "missing-package": (lambda t: t / "nowhere.whl", 2, ["nowhere.whl", "does not exist"]),
    "not-a-wheel": (not_a_wheel, 1, ["not a readable wheel"]),
    "another-project": (other_project, 1, ["'other'", "not of ESC"]),
    "no-catalog": (no_catalog, 1, ["esc/release/catalog.toml", "not an ESC release"]),
    "downgrade": (lambda t: OLDER, 1, [f"{CURRENT} → 1.0.0.2", "refused"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_package_is_refused_and_nothing_changes(case: str, node: Path, tmp_path: Path):
    make, code, words = CASES[case]
    package = make(tmp_path)
    before = tree(node.parent)
    result = escadm("upgrade", "backup-restore", "--package", str(package), home=node)
    assert result.returncode == code, result.stdout + result.stderr
    for word in words:
        assert word in result.stderr, f"{word!r} not in {result.stderr!r}"
    assert "Traceback" not in result.stderr and "==>" not in result.stdout
    assert tree(node.parent) == before


def test_a_node_with_an_external_database_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "nodes" / "home"
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    escadm("init", "--api-port", str(free_port()), "--db-url", url, home=home, check=True)
    before = tree(tmp_path)
    result = escadm("upgrade", "backup-restore", "--package", str(OLDER), home=home)
    assert result.returncode == 1
    assert "database is external" in result.stderr and "docs/upgrade-policy.md" in result.stderr
    assert tree(tmp_path) == before


def test_rollback_with_nothing_to_roll_back_to(node: Path) -> None:
    before = tree(node.parent)
    result = escadm("upgrade", "rollback", home=node)
    assert result.returncode == 1
    assert "nothing to roll back to" in result.stderr and "Traceback" not in result.stderr
    assert tree(node.parent) == before
