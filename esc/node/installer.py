"""The package installer of a node: it replaces the ESC release in the node's own venv
with an uploaded wheel, and puts the release it replaced back when the new one does not
come up healthy.

The node's API starts it (POST /esc/node/package/install) as a process in a session of
its own, so that it outlives the API it stops. It runs on the standard library alone,
from a copy outside the package (install/installer.py) with `python -I`: nothing it
imports is replaced under it. It holds the install lock (an flock on install/lock,
inherited from the API that took it) until it ends, so the API can tell a running
install from one whose installer died.

Steps, in order, each recorded in the state file as it starts and as it ends:

  stop       escadm stop of the node (its services, the API that started this one too)
  save       the installed release's files, as its dist-info RECORD lists them, copied
             to install/saved/ (the manifest written last: a complete copy)
  install    <venv python> -m pip install --no-deps --no-index --force-reinstall WHEEL
  start      escadm start of the new release
  check      escadm status healthy and GET /esc/version answering the new release

A failure after `save` goes back: `restore` (the new release's files removed, the saved
ones put back), `start-old` (escadm stop of whatever the new release left running,
then escadm start) and `check-old`; the state ends `failed` with the error and "rolled
back to V". A failure of `stop` or `save` changed nothing; the node is started again.

The state file, install/state.json, is written atomically (a reader sees one whole
version), format 1:

  {"format": 1,
   "state": "stopping" | "installing" | "starting" | "rolling_back" | "done" | "failed",
   "from": "1.2.0.98", "to": "1.2.0.99", "rollback": false, "pid": 4242,
   "started_at": ISO-8601, "finished_at": ISO-8601 or null,
   "steps": [{"name": "stop", "started_at": ISO-8601, "ended_at": ISO-8601 or null,
              "ok": true | false | null, "detail": "..."}],
   "error": null or "what failed", "rolled_back_to": null or "1.2.0.98"}

A reader that finds no file reports `idle`; one that finds a running state while no
process holds the lock reports the install `failed` (its installer died).
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import os
import shutil
import ssl
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

FORMAT = 1
STOPPING = "stopping"
INSTALLING = "installing"
STARTING = "starting"
ROLLING_BACK = "rolling_back"
DONE = "done"
FAILED = "failed"
IDLE = "idle"  # no install ever ran on this node: no state file
RUNNING = (STOPPING, INSTALLING, STARTING, ROLLING_BACK)
STATES = (IDLE, *RUNNING, DONE, FAILED)

# Seconds each step may take. A stop waits for transactions in flight (30 s) and the
# services' own stops; an HA node's check waits for its PostgreSQL to stream again.
STOP_BOUND = 180.0
PIP_BOUND = 300.0
START_BOUND = 300.0
CHECK_BOUND = 300.0
CHECK_POLL = 1.0
OUTPUT_TAIL = 1500  # characters of a failed command's output kept in the state file


class InstallPaths:
    """The installer's files in the node's install directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.state = directory / "state.json"
        self.lock = directory / "lock"
        self.log = directory / "installer.log"
        self.script = directory / "installer.py"
        self.saved = directory / "saved"
        self.manifest = self.saved / "manifest.json"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def initial_state(current: str, target: str, rollback: bool) -> dict:
    return {
        "format": FORMAT,
        "state": STOPPING,
        "from": current,
        "to": target,
        "rollback": rollback,
        "pid": None,
        "started_at": now(),
        "finished_at": None,
        "steps": [],
        "error": None,
        "rolled_back_to": None,
    }


def write_state(path: Path, state: dict) -> None:
    """Atomic and durable (this module keeps its own copy of esc.files' way: it runs
    beside the package it replaces, importing nothing of it)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(state, out, indent=1)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def read_state(path: Path) -> dict | None:
    """The recorded state, None when no install ever ran."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


class StepFailed(Exception):
    """A step did not do its part; the message says what happened."""


def _tail(text: str) -> str:
    text = text.strip()
    return text if len(text) <= OUTPUT_TAIL else "..." + text[-OUTPUT_TAIL:]


class Installer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.home = Path(args.home)
        self.paths = InstallPaths(Path(args.dir))
        self.wheel = Path(args.wheel)
        self.url = args.url.rstrip("/")
        self.cafile = args.cafile or None
        self.user = args.user
        self.credential_file = Path(args.credential_file)
        self.python = Path(sys.executable)  # the node venv's: the API started it so
        self.escadm = str(self.python.with_name("escadm"))
        self.prefix = Path(sys.prefix)
        self.site = Path(sysconfig.get_paths()["purelib"])
        state = read_state(self.paths.state)
        if state is None or state.get("format") != FORMAT:
            raise SystemExit(f"{self.paths.state}: no install of format {FORMAT} to carry out")
        self.state = state
        self.current = self.state["from"]
        self.target = self.state["to"]
        self.state["pid"] = os.getpid()
        self._save()

    # the record ---------------------------------------------------------------------

    def _save(self) -> None:
        write_state(self.paths.state, self.state)

    def _enter(self, state: str) -> None:
        self.state["state"] = state
        self._save()

    def step(self, name: str, action) -> str:
        record = {"name": name, "started_at": now(), "ended_at": None, "ok": None, "detail": ""}
        self.state["steps"].append(record)
        self._save()
        print(f"{record['started_at']} {name} ...", flush=True)
        try:
            detail = action()
        except StepFailed as exc:
            ok, detail = False, str(exc)
        except Exception as exc:  # recorded, never a silent death: the node must come back
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        else:
            ok = True
        record.update(ended_at=now(), ok=ok, detail=detail)
        self._save()
        print(f"{record['ended_at']} {name} {'ok' if ok else 'FAILED'}: {detail}", flush=True)
        if not ok:
            raise StepFailed(f"{name}: {detail}")
        return detail

    def _finish(self, state: str, error: str | None = None, rolled_back_to: str | None = None):
        self.state.update(
            state=state, error=error, rolled_back_to=rolled_back_to, finished_at=now()
        )
        self._save()

    # the procedure ------------------------------------------------------------------

    def run(self) -> int:
        try:
            self._enter(STOPPING)
            self.step("stop", self.stop)
            self._enter(INSTALLING)
            self.step("save", self.save)
        except StepFailed as exc:
            return self._unchanged(str(exc))
        try:
            self.step("install", self.install)
            self._enter(STARTING)
            self.step("start", self.start)
            self.step("check", lambda: self.check(self.target))
        except StepFailed as exc:
            return self._roll_back(str(exc))
        self._finish(DONE)
        return 0

    def _unchanged(self, error: str) -> int:
        """Nothing was installed: the old release is started again."""
        self._enter(ROLLING_BACK)
        try:
            self.step("start-old", self.start_old)
            self.step("check-old", lambda: self.check(self.current))
        except StepFailed as again:
            self._finish(FAILED, f"{error}; nothing was installed, but {again}")
            return 1
        self._finish(FAILED, f"{error}; nothing was installed: {self.current} runs again")
        return 1

    def _roll_back(self, error: str) -> int:
        self._enter(ROLLING_BACK)
        try:
            self.step("restore", self.restore)
            self.step("start-old", self.start_old)
            self.step("check-old", lambda: self.check(self.current))
        except StepFailed as again:
            self._finish(FAILED, f"{error}; rolling back to {self.current} failed: {again}")
            return 1
        self._finish(FAILED, f"{error}; rolled back to {self.current}", self.current)
        return 1

    # the steps ----------------------------------------------------------------------

    def _command(self, argv: list[str], bound: float) -> str:
        try:
            result = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=bound,
                stdin=subprocess.DEVNULL,
                cwd=self.paths.directory,  # never an `esc` or `pip` of the caller's directory
            )
        except subprocess.TimeoutExpired:
            raise StepFailed(f"{' '.join(argv)} did not end within {bound:g} s") from None
        output = _tail(result.stdout + result.stderr)
        if result.returncode != 0:
            raise StepFailed(f"{' '.join(argv)} exited {result.returncode}: {output}")
        return output

    def _escadm(self, command: str, bound: float) -> str:
        return self._command([self.escadm, command, "--home", str(self.home)], bound)

    def stop(self) -> str:
        return self._escadm("stop", STOP_BOUND)

    def _dist_info(self) -> Path:
        found = sorted(self.site.glob("esc-*.dist-info"))
        if len(found) != 1:
            raise StepFailed(
                f"{self.site} holds {len(found)} ESC releases ({', '.join(p.name for p in found)}"
                "), not one: this venv was not installed by a release wheel alone"
            )
        return found[0]

    def _recorded(self, dist_info: Path) -> list[Path]:
        """The files a release's RECORD lists, relative to the venv."""
        files = []
        with (dist_info / "RECORD").open(newline="") as record:
            for row in csv.reader(record):
                if not row:
                    continue
                path = Path(os.path.normpath(self.site / row[0]))
                if not path.is_relative_to(self.prefix):
                    raise StepFailed(f"{dist_info}/RECORD names {row[0]}, outside {self.prefix}")
                files.append(path.relative_to(self.prefix))
        return files

    def save(self) -> str:
        dist_info = self._dist_info()
        if dist_info.name != f"esc-{self.current}.dist-info":
            raise StepFailed(f"{dist_info} is installed, not ESC {self.current}, the running one")
        files = [f for f in self._recorded(dist_info) if (self.prefix / f).is_file()]
        shutil.rmtree(self.paths.saved, ignore_errors=True)
        for relative in files:
            target = self.paths.saved / "files" / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(self.prefix / relative, target)
        manifest = {"release": self.current, "files": [str(f) for f in files]}
        write_state(self.paths.manifest, manifest)
        return f"{len(files)} files of ESC {self.current} saved in {self.paths.saved}"

    def install(self) -> str:
        pip = [str(self.python), "-P", "-m", "pip", "install", "--no-deps", "--no-index"]
        pip += ["--force-reinstall", "--disable-pip-version-check", "--quiet", str(self.wheel)]
        self._command(pip, PIP_BOUND)
        return f"{self.wheel.name} installed into {self.prefix}"

    def start(self) -> str:
        return self._escadm("start", START_BOUND)

    def restore(self) -> str:
        manifest = json.loads(self.paths.manifest.read_text())
        for dist_info in self.site.glob("esc-*.dist-info"):
            try:
                for relative in self._recorded(dist_info):
                    (self.prefix / relative).unlink(missing_ok=True)
            except (OSError, StepFailed):
                pass  # a half-written RECORD: its release's directories go below
            shutil.rmtree(dist_info, ignore_errors=True)
        shutil.rmtree(self.site / "esc", ignore_errors=True)
        for relative in manifest["files"]:
            target = self.prefix / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(self.paths.saved / "files" / relative, target)
        return f"{len(manifest['files'])} files of ESC {manifest['release']} put back"

    def start_old(self) -> str:
        # Whatever the new release left running (its supervisor, a service it keeps
        # restarting) is stopped by the old escadm: the stop is the supervisor's signal.
        stopped = self._escadm("stop", STOP_BOUND)
        return f"{stopped}; {self._escadm('start', START_BOUND)}"

    def check(self, release: str) -> str:
        """The node healthy in its role (escadm status) and its API answering `release`."""
        deadline = time.monotonic() + CHECK_BOUND
        while True:
            status = subprocess.run(
                [self.escadm, "status", "--home", str(self.home)],
                capture_output=True,
                text=True,
                timeout=60,
                stdin=subprocess.DEVNULL,
                cwd=self.paths.directory,
            )
            line = (status.stdout.strip().splitlines() or ["(no output)"])[-1]
            answered = self.api_release()
            if status.returncode == 0 and answered == release:
                return f"{line}; the API answers version {release}"
            if time.monotonic() >= deadline:
                raise StepFailed(
                    f"not healthy with {release} within {CHECK_BOUND:g} s: escadm status "
                    f"exited {status.returncode} ({line}); the API answers {answered}"
                )
            time.sleep(CHECK_POLL)

    def api_release(self) -> str:
        """The `full` version GET /esc/version answers, or why there is none."""
        try:
            secret = self.credential_file.read_text().strip()
        except OSError as exc:
            return f"nothing: {self.credential_file} cannot be read ({exc.strerror})"
        token = base64.b64encode(f"{self.user}:{secret}".encode()).decode()
        request = urllib.request.Request(
            f"{self.url}/esc/version", headers={"Authorization": f"Basic {token}"}
        )
        context = None
        if self.url.startswith("https:"):
            context = ssl.create_default_context(cafile=self.cafile)
            context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        try:
            with urllib.request.urlopen(request, timeout=5, context=context) as response:
                return str(json.load(response).get("full"))
        except urllib.error.HTTPError as exc:
            return f"HTTP {exc.code}"
        except (OSError, ValueError) as exc:
            return f"nothing ({exc})"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Install a release wheel into this node's venv.")
    parser.add_argument("--home", required=True, help="the node home")
    parser.add_argument("--dir", required=True, help="the install directory (state, log)")
    parser.add_argument("--wheel", required=True)
    parser.add_argument("--url", required=True, help="where the node's API answers")
    parser.add_argument("--cafile", default="", help="the CA its certificate chains to")
    parser.add_argument("--user", required=True, help="the node-local account")
    parser.add_argument("--credential-file", required=True, help="that account's secret")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """What to install is in the state file the API wrote before it started this; the
    install lock is an open file this process inherited and keeps until it exits."""
    return Installer(parse(argv)).run()


if __name__ == "__main__":
    raise SystemExit(main())
