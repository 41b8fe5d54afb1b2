"""escadm passwd: reset the admin password from the node itself, API up or down."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import httpx
import pytest
from conftest import ESCADM, escadm, free_port
from sqlalchemy import create_engine, text


@pytest.fixture
def node(tmp_path: Path):
    home = tmp_path / "home"
    init = escadm("init", "--api-port", str(free_port()), "--json", home=home, check=True)
    yield home, json.loads(init.stdout)["admin_password"]
    escadm("stop", home=home)


def _admin_hash(home: Path) -> str:
    engine = create_engine(f"sqlite:///{home / 'data' / 'esc.db'}")
    try:
        with engine.connect() as connection:
            return connection.execute(
                text("SELECT password_hash FROM users WHERE name = 'admin'")
            ).scalar_one()
    finally:
        engine.dispose()


def _passwd(home: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [ESCADM, "passwd", *args, "--home", str(home)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _api_accepts(home: Path, password: str) -> bool:
    port = int(re.search(r"port = (\d+)", (home / "esc.toml").read_text()).group(1))
    response = httpx.get(
        f"http://127.0.0.1:{port}/v0/deployments", auth=("admin", password), timeout=10
    )
    assert response.status_code in (200, 401), response.text
    return response.status_code == 200


def test_bad_input_is_refused_and_changes_nothing(node) -> None:
    home, _ = node
    before = _admin_hash(home)
    short = _passwd(home, "--password-stdin", stdin="short\n")
    assert short.returncode == 2 and "at least 12 characters" in short.stderr
    local = _passwd(home, "--user", "escadm")
    assert local.returncode == 2 and "node-local account" in local.stderr
    ghost = _passwd(home, "--user", "ghost")
    assert ghost.returncode == 2 and "no account 'ghost'" in ghost.stderr
    assert _admin_hash(home) == before


@pytest.mark.slow
def test_reset_while_stopped_and_while_running(node) -> None:
    home, initial = node
    chosen = "correct horse battery staple"
    stopped = _passwd(home, "--password-stdin", stdin=chosen + "\n")
    assert (stopped.returncode, stopped.stdout) == (0, "admin password reset\n"), stopped.stderr
    assert chosen not in stopped.stdout + stopped.stderr

    assert escadm("start", home=home).returncode == 0
    assert _api_accepts(home, chosen)
    assert not _api_accepts(home, initial)

    generated = _passwd(home, "--json")
    assert generated.returncode == 0, generated.stderr
    new = json.loads(generated.stdout)
    assert new["user"] == "admin" and len(new["password"]) >= 12
    assert _api_accepts(home, new["password"])  # the running node sees it at once
    text_form = _passwd(home)
    line = text_form.stdout.strip()
    assert line.startswith("admin password reset (shown only this once): ")
    assert _api_accepts(home, line.rsplit(": ", 1)[1])
