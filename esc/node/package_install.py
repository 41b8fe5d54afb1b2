"""The API's side of the package installer (esc.node.installer): starting it for an
uploaded release, and reading what it did from its state file.

Whether an install runs is the install lock, not the state file: the API takes the
lock, writes the initial state, and hands the lock to the installer it starts (an
inherited open file), which keeps it until it exits. A state that says running while
nobody holds the lock is an installer that died.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import esc
from esc.config import NodeHome, Settings, api_base_url
from esc.errors import Conflict
from esc.files import lock_held
from esc.node import installer
from esc.node.installer import FAILED, IDLE, RUNNING, InstallPaths
from esc.node.packages import PackageStore
from esc.release.numbers import ReleaseNumber
from esc.security import LOCAL_USER
from esc.version import CURRENT

STATUS_URL = "/esc/node/package/install"


def install_paths(home: NodeHome) -> InstallPaths:
    return InstallPaths(home.install_dir)


def installer_runs(paths: InstallPaths) -> bool:
    """Does a process hold the install lock (an installer, or the API starting one)?"""
    return lock_held(paths.lock)


def install_state(home: NodeHome) -> dict:
    """The last install's state file as the installer wrote it; `idle` when none ever
    ran, `failed` when it says running but its installer is gone."""
    paths = install_paths(home)
    state = installer.read_state(paths.state)
    if state is None:
        never = {"state": IDLE, "from": None, "to": None, "started_at": None}
        return {**installer.initial_state("", "", False), **never}
    if state["state"] in RUNNING and not installer_runs(paths):
        last = next((s["name"] for s in reversed(state["steps"])), "its start")
        state = {
            **state,
            "state": FAILED,
            "error": f"the installer (pid {state['pid']}) ended in step {last} without "
            f"finishing: see {paths.log}; GET /esc/node says which release runs now",
        }
    return state


def package_in_use(home: NodeHome, release: ReleaseNumber) -> None:
    """Conflict while an install of `release` runs from its package."""
    paths = install_paths(home)
    state = installer.read_state(paths.state)
    if state and state["to"] == str(release) and installer_runs(paths):
        raise Conflict(
            f"an install of ESC {release} runs from this package: wait until it ends "
            f"(GET {STATUS_URL})"
        )


def _venv_refusal() -> str | None:
    """Why this node's ESC cannot be replaced by a package, None when it can."""
    purelib = Path(sysconfig.get_paths()["purelib"])
    package = Path(esc.__file__).parent
    if package.parent.resolve() != purelib.resolve():
        return (
            f"this node runs ESC from {package}, not from a release installed in its venv "
            f"({purelib}): a package install replaces a release installed from its wheel; "
            "install the node from a release wheel"
        )
    if not Path(sys.executable).with_name("escadm").is_file():
        return f"{sys.executable} has no escadm beside it: this is not the node's venv"
    return None


def start_install(
    home: NodeHome,
    settings: Settings,
    target: ReleaseNumber,
    *,
    rollback: bool,
    active: bool,
) -> dict:
    """Start the installer of `target` (an uploaded package); its initial state. The
    checks come first and refuse with what to do; none of them changes anything."""
    if active:
        raise Conflict(
            "this node is the pair's ACTIVE node: switch over first (POST /esc/ha/switchover, "
            "or escadm switchover): installing stops this node's services"
        )
    paths = install_paths(home)
    try:
        paths.directory.mkdir(mode=0o700, exist_ok=True)
        lock = os.open(paths.lock, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise Conflict(f"cannot take the install lock {paths.lock}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            running = installer.read_state(paths.state) or {}
            raise Conflict(
                f"an install of ESC {running.get('to')} runs (state {running.get('state')}): "
                f"wait until it ends (GET {STATUS_URL})"
            ) from None
        wheel = PackageStore(home.packages).path(target)
        _check_target(target, rollback)
        state = installer.initial_state(str(CURRENT), str(target), rollback)
        try:
            shutil.copyfile(installer.__file__, paths.script)
            installer.write_state(paths.state, state)
        except OSError as exc:
            raise Conflict(
                f"cannot prepare the install in {paths.directory}: {exc.strerror or exc}; "
                "nothing was changed"
            ) from None
        _launch(home, settings, paths, wheel, lock)
    finally:
        os.close(lock)  # the installer holds its own copy of the lock from here
    return state


def _check_target(target: ReleaseNumber, rollback: bool) -> None:
    if target == CURRENT:
        raise Conflict(f"ESC {target} runs on this node already: nothing to install")
    if target < CURRENT and not rollback:
        raise Conflict(
            f"ESC {target} is older than the running {CURRENT}: a downgrade is a rollback; "
            'ask for it with "rollback": true'
        )
    refusal = _venv_refusal()
    if refusal:
        raise Conflict(refusal)


def _launch(
    home: NodeHome, settings: Settings, paths: InstallPaths, wheel: Path, lock: int
) -> None:
    tls = home.tls_files(settings)
    command = [sys.executable, "-I", str(paths.script), "--home", str(home.root)]
    command += ["--dir", str(paths.directory), "--wheel", str(wheel)]
    command += ["--url", api_base_url(settings), "--cafile", str(tls[0]) if tls else ""]
    command += ["--user", LOCAL_USER, "--credential-file", str(home.local_credential_file)]
    try:
        with paths.log.open("ab") as log:
            subprocess.Popen(
                command,
                cwd=paths.directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(lock,),
                # Its own session: the node's stop, which it runs, ends the API's process
                # group, never the installer.
                start_new_session=True,
            )
    except OSError as exc:
        state = installer.read_state(paths.state) or {}
        error = f"the installer could not be started: {exc}"
        installer.write_state(paths.state, {**state, "state": FAILED, "error": error})
        raise Conflict(f"{error}; nothing was changed") from None
