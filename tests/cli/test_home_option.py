"""--home is accepted everywhere: before any command, and on every command and group."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from esc.cli.main import cli


def _paths(command: click.Command, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [prefix] if prefix else []
    for name, sub in getattr(command, "commands", {}).items():
        found += _paths(sub, (*prefix, name))
    return found


COMMANDS = _paths(cli)


def test_the_walk_finds_every_command() -> None:
    assert ("version",) in COMMANDS and ("deployment", "show") in COMMANDS
    assert len(COMMANDS) >= 30


@pytest.mark.parametrize("path", COMMANDS, ids=[" ".join(p) for p in COMMANDS])
def test_every_command_accepts_home_after_it_and_before_it(path: tuple[str, ...]) -> None:
    runner = CliRunner()
    for args in (
        [*path, "--home", "/nonexistent/h", "--help"],
        ["--home", "/nonexistent/h", *path, "--help"],
    ):
        result = runner.invoke(cli, args, prog_name="escadm")
        assert result.exit_code == 0, f"escadm {' '.join(args)}: {result.output}"
        assert "--home" in result.output


def test_home_before_the_command_is_the_node_used(home: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    elsewhere = str(tmp_path / "nowhere")
    status = runner.invoke(cli, ["--home", str(home), "status"], env={"ESC_HOME": elsewhere})
    assert (status.exit_code, status.output) == (3, "ESC status=0 ESC is stopped\n")
    # The innermost one wins: on the group, then on the command.
    listed = runner.invoke(cli, ["--home", elsewhere, "deployment", "--home", str(home), "list"])
    assert listed.exit_code == 3, listed.output
    assert f"no ESC node runs in {home}" in listed.output
    inner = runner.invoke(cli, ["--home", str(home), "status", "--home", elsewhere])
    assert inner.exit_code == 2 and f"no node at {elsewhere}" in inner.output
    version = runner.invoke(cli, ["--home", str(home), "version"])
    assert version.exit_code == 0 and version.output.startswith("version : ")
