"""When the API does not answer, escadm's hint fits how the node runs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import escadm

from esc.node.processes import ProcessRecord, write_record


def test_a_stopped_node_names_both_ways_to_start_it(home: Path) -> None:
    result = escadm("deployment", "list", home=home)
    assert result.returncode == 3
    assert "ESC does not answer" in result.stderr
    assert f"no ESC node runs in {home}" in result.stderr
    assert "'escadm start' (in the background) or 'escadm run' (in the foreground)" in result.stderr


@pytest.mark.parametrize(
    ("recorded", "hint"),
    [
        ("supervisor", "runs under its supervisor (escadm start): 'escadm status' says why"),
        ("escmanager", "runs in the foreground (escadm run, pid "),
    ],
)
def test_a_running_node_that_does_not_answer_gets_the_hint_for_how_it_runs(
    home: Path, recorded: str, hint: str
) -> None:
    # A live process recorded as the node's: the API port has no listener.
    stand_in = subprocess.Popen(["sleep", "60"])
    try:
        write_record(home / "run", ProcessRecord.of(recorded, stand_in.pid))
        result = escadm("op_mode", "show", home=home)
    finally:
        stand_in.kill()
        stand_in.wait()
    assert result.returncode == 3
    assert hint in result.stderr
    assert "no ESC node runs" not in result.stderr
