"""The parts of a pair's in-service upgrade that need no pair: the pair access file,
the durable record and its lock, the release packages' verification, the pre-checks
and the report."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

from esc.release.catalog import load_catalog
from esc.release.numbers import ReleaseNumber
from esc.release.planner import plan_upgrade
from esc.upgrade.backup_restore import UpgradeError
from esc.upgrade.journal import (
    DONE,
    FAILED,
    IN_PROGRESS,
    RUNNING,
    Journal,
    JournalError,
    Step,
    UpgradeLock,
)
from esc.upgrade.node_api import NodeFacts
from esc.upgrade.pair_access import PairAccessError, load_pair
from esc.upgrade.pair_checks import pair_checks
from esc.upgrade.pair_upgrade import Refused, choose_method
from esc.upgrade.release_files import SUMS, find_package
from esc.upgrade.report import report_of

ROOT = Path(__file__).parents[2]
RELEASES = ROOT / "releases"

PAIR_TOML = """
vip = "198.18.80.100"
user = "admin"
password_file = "secret"

[[node]]
name = "esc-1"
address = "198.18.80.11"

[[node]]
name = "esc-2"
address = "198.18.80.12"
"""


def _pair_file(tmp_path: Path, text: str = PAIR_TOML) -> Path:
    (tmp_path / "secret").write_text("s3cret\n")
    path = tmp_path / "lab.toml"
    path.write_text(text)
    return path


# the pair access file --------------------------------------------------------------


def test_a_pair_file_names_the_nodes_the_vip_and_the_secret(tmp_path: Path) -> None:
    access = load_pair(str(_pair_file(tmp_path)))
    assert access.pair.name == "lab"  # from the file's name
    assert access.pair.vip_url == "http://198.18.80.100:8080"
    assert [n.address for n in access.pair.node] == ["198.18.80.11", "198.18.80.12"]
    assert access.auth == ("admin", "s3cret")
    assert access.verify is False
    assert "s3cret" not in repr(access.pair)


def test_a_pair_by_addresses_needs_the_vip_and_the_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ESC_PASSWORD", raising=False)
    with pytest.raises(PairAccessError, match="--vip"):
        load_pair("198.18.80.11,198.18.80.12")
    with pytest.raises(PairAccessError, match=r"\$ESC_PASSWORD"):
        load_pair("198.18.80.11,198.18.80.12", vip="198.18.80.100")
    monkeypatch.setenv("ESC_PASSWORD", "pw")
    access = load_pair("198.18.80.11,198.18.80.12", vip="198.18.80.100", vim="openstack")
    assert access.pair.vim == "openstack" and access.auth == ("admin", "pw")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('vip = "198.18.80.100"', 'vip = "esc.example"'), "vip: Value error, 'esc.example'"),
        (('address = "198.18.80.12"', 'address = "198.18.80.11"'), "distinct names and addresses"),
        (('user = "admin"', 'user = "admin"\nvim = "xen"'), "unknown VIM 'xen'"),
        (('user = "admin"', 'user = "admin"\nport = 0'), "port: Input should be greater"),
        (('user = "admin"', 'user = "admin"\ncolour = "red"'), "colour: Extra inputs"),
        (('password_file = "secret"', 'password_file = "missing"'), "cannot read password_file"),
        (("[[node]]", "[node"), "not a readable TOML pair file"),
    ],
)
def test_a_bad_pair_file_is_refused_naming_the_problem(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    path = _pair_file(tmp_path, PAIR_TOML.replace(*change, 1))
    with pytest.raises(PairAccessError, match=message):
        load_pair(str(path))


def test_a_pair_file_given_with_vip_or_vim_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PairAccessError, match="leave out --vip/--vim"):
        load_pair(str(_pair_file(tmp_path)), vip="198.18.80.101")


# the record ------------------------------------------------------------------------


def _journal(directory: Path) -> Journal:
    steps = [Step("upload", "Copy"), Step("switchover", "Switch over")]
    return Journal.new(directory, "lab", "package", "1.3.0.1", "1.3.0.2", steps)


def test_the_record_says_which_step_was_running_and_the_next_one_to_run(tmp_path: Path) -> None:
    journal = _journal(tmp_path)
    first, second = journal.record.steps
    journal.begin(first)
    journal.done(first, "both have it")
    journal.begin(second)
    # An orchestrator killed here leaves this on disk:
    record = Journal.read(tmp_path)
    assert record is not None and record.state == IN_PROGRESS
    assert [s.state for s in record.steps] == [DONE, RUNNING]
    assert record.current is not None and record.current.name == "switchover"
    assert record.step("upload").detail == "both have it"
    journal.failed(second, "the standby is not UpToDate")
    again = Journal.read(tmp_path)
    assert again is not None and again.current.state == FAILED
    assert again.error == "the standby is not UpToDate"


def test_a_new_upgrade_keeps_the_record_of_the_last_one(tmp_path: Path) -> None:
    old = _journal(tmp_path)
    old.end("completed")
    new = _journal(tmp_path)
    assert new.record.id != old.record.id
    kept = tmp_path / f"journal-{old.record.id}.json"
    assert json.loads(kept.read_text())["state"] == "completed"


def test_a_record_of_another_format_or_not_json_is_refused(tmp_path: Path) -> None:
    (tmp_path / "journal.json").write_text('{"format": "esc-pair-upgrade/9"}')
    with pytest.raises(JournalError, match="another escadm release"):
        Journal.read(tmp_path)
    (tmp_path / "journal.json").write_text("{half")
    with pytest.raises(JournalError, match="not JSON"):
        Journal.read(tmp_path)


def _hold_lock(directory: str, ready) -> None:
    with UpgradeLock(Path(directory)):
        ready.set()
        time.sleep(60)


def test_one_orchestrator_per_pair_and_a_killed_one_holds_nothing(tmp_path: Path) -> None:
    ready = multiprocessing.Event()
    holder = multiprocessing.Process(target=_hold_lock, args=(str(tmp_path), ready))
    holder.start()
    try:
        assert ready.wait(10)
        with (
            pytest.raises(JournalError, match="another escadm upgrade of this pair"),
            UpgradeLock(tmp_path),
        ):
            pass
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(10)
    with UpgradeLock(tmp_path):  # the kernel dropped the dead one's lock
        pass


# the release packages --------------------------------------------------------------


def _releases(tmp_path: Path, version: str = "1.2.0.1") -> Path:
    wheel = RELEASES / f"esc-{version}-py3-none-any.whl"
    copy = tmp_path / wheel.name
    copy.write_bytes(wheel.read_bytes())
    digest = hashlib.sha256(copy.read_bytes()).hexdigest()
    (tmp_path / SUMS).write_text(f"{digest}  {wheel.name}\n")
    return copy


def test_a_kept_release_is_found_and_verified(tmp_path: Path) -> None:
    copy = _releases(tmp_path)
    package = find_package(tmp_path, ReleaseNumber.parse("1.2.0.1"))
    assert package.path == copy and package.size == copy.stat().st_size


def test_a_damaged_missing_unlisted_or_renamed_package_is_refused(tmp_path: Path) -> None:
    copy = _releases(tmp_path)
    with pytest.raises(UpgradeError, match=r"no package of ESC 1.2.0.9 .* holds esc-1.2.0.1"):
        find_package(tmp_path, ReleaseNumber.parse("1.2.0.9"))
    data = copy.read_bytes()
    copy.write_bytes(data[:-10] + b"0123456789")
    with pytest.raises(UpgradeError, match="does not match its checksum"):
        find_package(tmp_path, ReleaseNumber.parse("1.2.0.1"))
    renamed = tmp_path / "esc-1.2.0.7-py3-none-any.whl"
    renamed.write_bytes(data)
    with pytest.raises(UpgradeError, match=r"does not list esc-1.2.0.7"):
        find_package(tmp_path, ReleaseNumber.parse("1.2.0.7"))
    digest = hashlib.sha256(data).hexdigest()
    (tmp_path / SUMS).write_text(f"{digest}  {renamed.name}\n")
    with pytest.raises(UpgradeError, match=r"holds ESC 1.2.0.1, not 1.2.0.7"):
        find_package(tmp_path, ReleaseNumber.parse("1.2.0.7"))
    (tmp_path / SUMS).unlink()
    with pytest.raises(UpgradeError, match=r"cannot read .*SHA256SUMS"):
        find_package(tmp_path, ReleaseNumber.parse("1.2.0.7"))


# the pre-checks --------------------------------------------------------------------


def _facts(address: str, role: str = "STANDBY", **changes) -> NodeFacts:
    base = {
        "address": address,
        "version": "1.3.0.1",
        "role": role,
        "reason": "",
        "healthy": True,
        "health_detail": "",
        "op_mode": "OPERATION",
        "in_progress": 0,
        "failed_temporarily": 0,
        "uptodate": True,
        "replication_detail": "disk:UpToDate peer-disk:UpToDate sync",
        "replay_lag_s": 0.01,
        "free_bytes": 10 * 2**30,
        "vip_held": role == "ACTIVE",
    }
    return NodeFacts(**{**base, **changes})


def _failing(facts: dict, vip=None, vip_error: str = "") -> list[str]:
    vip = vip if vip is not None or vip_error else _facts("vip", "ACTIVE")
    return [c.name for c in pair_checks(facts, vip, vip_error, "1.3.0.1", 2**20) if not c.ok]


def test_a_whole_healthy_pair_passes_every_pre_check() -> None:
    facts = {"a": _facts("a", "ACTIVE"), "b": _facts("b", "STANDBY")}
    assert _failing(facts) == []


@pytest.mark.parametrize(
    ("standby", "failing"),
    [
        ({"healthy": False, "health_detail": "pgsql: not running"}, ["b healthy"]),
        ({"role": "FAULT"}, ["one active, one standby"]),
        ({"uptodate": False}, ["replication UpToDate and synchronous"]),
        ({"version": "1.2.0.1"}, ["both nodes at 1.3.0.1"]),
        ({"failed_temporarily": 2}, ["b: no transaction failed temporarily"]),
        ({"free_bytes": 2**20}, ["b: disk space"]),
    ],
)
def test_each_pre_check_fails_on_its_own_problem(standby: dict, failing: list[str]) -> None:
    facts = {"a": _facts("a", "ACTIVE"), "b": _facts("b", **{"role": "STANDBY", **standby})}
    assert _failing(facts) == failing


def test_a_standby_the_active_sees_far_behind_fails() -> None:
    facts = {"a": _facts("a", "ACTIVE", replay_lag_s=4.2), "b": _facts("b", replay_lag_s=None)}
    assert _failing(facts) == ["replay lag under 1 s"]


def test_a_vip_that_does_not_answer_or_answers_a_standby_fails() -> None:
    facts = {"a": _facts("a", "ACTIVE"), "b": _facts("b", "STANDBY")}
    assert _failing(facts, vip_error="no answer") == ["VIP answering"]
    assert _failing(facts, vip=_facts("vip", "STANDBY")) == ["VIP answering"]


def test_a_release_without_the_node_api_is_refused_and_its_replication_left_alone() -> None:
    old = {"uptodate": None, "replay_lag_s": None, "failed_temporarily": None, "node_api": False}
    facts = {"a": _facts("a", "ACTIVE", **old), "b": _facts("b", "STANDBY", **old)}
    checks = pair_checks(facts, _facts("vip", "ACTIVE"), "", "1.3.0.1", 2**20)
    (replication,) = [c for c in checks if c.name.startswith("replication")]
    assert replication.ok and "the switchover itself refuses" in replication.detail
    assert [c.name for c in checks if not c.ok] == ["a: node API", "b: node API"]
    # An upgrade by image replaces the nodes through their provider: no node API needed.
    by_image = pair_checks(facts, _facts("vip", "ACTIVE"), "", "1.3.0.1", 2**20, node_api=False)
    assert [c.name for c in by_image if not c.ok] == []


# the report ------------------------------------------------------------------------


def test_the_report_gives_each_step_and_the_measured_figures(tmp_path: Path) -> None:
    journal = _journal(tmp_path)
    for step in journal.record.steps:
        journal.begin(step)
        journal.done(step, "ok")
    journal.record.figures.update(
        {
            "write_interruption_s": 0.21,
            "switchover_s": 0.144,
            "in_flight_at_switchover": ["tx1"],
            "in_flight_states": {"tx1": "SUCCESS"},
            "transactions_during_upgrade": {"SUCCESS": 12},
            "acknowledged_lost": 0,
        }
    )
    journal.record.facts["versions_after"] = {"a": "1.3.0.2", "b": "1.3.0.2"}
    journal.end("completed")
    report = report_of(journal.record)
    assert [s["state"] for s in report["steps"]] == ["done", "done"]
    assert report["state"] == "completed" and report["rollback"] == "none"
    text = "\n".join(report["summary"])
    assert "Write interruption through the VIP: 0.210 s" in text
    assert "in flight at it: 1 (tx1 SUCCESS)" in text
    assert "Transactions accepted during the upgrade: 12 (12 SUCCESS)" in text
    assert "Acknowledged writes lost: 0" in text
    assert "Versions after: a 1.3.0.2, b 1.3.0.2" in text


# the method ------------------------------------------------------------------------


def _plan(source: str, target: str):
    parse = ReleaseNumber.parse
    return plan_upgrade(load_catalog(None), parse(source), parse(target), "local", ha=True)


def test_the_planner_chooses_package_between_patch_builds_and_image_across_releases() -> None:
    assert choose_method(_plan("1.3.0.1", "1.3.0.2"), None) == "package"
    assert choose_method(_plan("1.3.0.1", "1.3.0.2"), "package") == "package"
    assert choose_method(_plan("1.2.0.1", "1.3.0.2"), None) == "image"


@pytest.mark.parametrize(
    ("source", "target", "asked", "message"),
    [
        ("1.3.0.1", "1.3.0.2", "image", "--method image does not apply"),
        ("1.2.0.1", "1.3.0.2", "package", "only between patch builds"),
        ("1.3.0.2", "1.3.0.1", None, "a downgrade is never an upgrade"),
        ("1.0.0.2", "1.3.0.2", None, "upgrade stepwise"),
    ],
)
def test_a_method_that_does_not_apply_is_refused_with_the_reason(
    source: str, target: str, asked: str | None, message: str
) -> None:
    with pytest.raises(Refused, match=message):
        choose_method(_plan(source, target), asked)
