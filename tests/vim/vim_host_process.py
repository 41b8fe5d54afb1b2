"""A VIM host (`python -m esc.vim.host`) run as a real process for tests."""

from __future__ import annotations

import contextlib
import json
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from esc.vim.local import LocalVim
from esc.vim.vimhost import VimHostDriver

# A loopback address other than 127.0.0.1: a VM answering there listens on the host's
# address, not on the controller's loopback.
HOST_IP = "127.0.0.2"
TOKEN = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90"


def write_token(path: Path, token: str = TOKEN, mode: int = 0o600) -> Path:
    path.write_text(token + "\n")
    path.chmod(mode)
    return path


def wait_until(predicate: Callable[[], object], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


class VimHostProcess:
    """`python -m esc.vim.host` as an operator starts it on the VIM host."""

    def __init__(self, directory: Path, token_file: Path, log: Path) -> None:
        self.directory, self.token_file, self.log = directory, token_file, log
        self.proc: subprocess.Popen | None = None
        self.url = ""
        # An observer of the host's VMs (reads only; never drives them).
        self.vms = LocalVim(directory)

    def start(self, listen: str = f"{HOST_IP}:0") -> str:
        command = [sys.executable, "-m", "esc.vim.host", "--dir", str(self.directory)]
        command += ["--listen", listen, "--token-file", str(self.token_file)]
        self.proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=self.log.open("ab"),
            text=True,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 20)
        line = self.proc.stdout.readline() if ready else ""
        assert line, f"the VIM host did not start: {self.log.read_text()[-2000:]}"
        self.url = json.loads(line)["url"]
        return self.url

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def driver(self, token_file: Path | None = None, timeout: float = 30.0) -> VimHostDriver:
        return VimHostDriver(self.url, token_file or self.token_file, timeout)

    def vnf_pids(self) -> set[int]:
        return {p.pid for p in self.vms.find_vnf_processes()}

    def clean_up(self) -> None:
        self.kill()
        leftovers = self.vms.find_vnf_processes()
        for proc in leftovers:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        wait_until(lambda: not self.vms.find_vnf_processes(), 5)
