"""Post-event custom scripts: kept in the database, run by MONA with a timeout.

A rule's SCRIPT action names a script by its `script_filename` property.
The script's text lives in the custom_scripts table (ARCHITECTURE principle
1: backup, restore and switchover carry it); MONA writes it to
run/scripts/NAME (mode 0700) before running it, with the event in its
environment, and kills its whole process group at the timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from esc.db.models import CustomScript
from esc.errors import InvalidRequest, NotFound
from esc.files import write_atomic

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
MAX_BYTES = 262_144
DEFAULT_TIMEOUT = 30.0
MAX_TIMEOUT = 3600.0
OUTPUT_KEPT = 4096
# A script sees the event, not the controller's environment (no secrets leak into it).
BASE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}


@dataclass(frozen=True)
class ScriptResult:
    name: str
    exit_code: int | None  # None: killed at the timeout
    output: str
    seconds: float


def validate(name: str, content: str, timeout: float) -> None:
    if not NAME.match(name):
        raise InvalidRequest(
            f"invalid script name {name!r}: use letters, digits, '.', '_' and '-' (at most 128)"
        )
    if len(content.encode()) > MAX_BYTES:
        raise InvalidRequest(f"script {name} is larger than {MAX_BYTES} bytes")
    if not content.startswith("#!"):
        raise InvalidRequest(f"script {name} must start with an interpreter line such as #!/bin/sh")
    if "\0" in content:
        raise InvalidRequest(f"script {name} contains a NUL byte: it must be text")
    if not 0 < timeout <= MAX_TIMEOUT:
        raise InvalidRequest(f"script timeout must be more than 0 and at most {MAX_TIMEOUT:g} s")


def put_script(session: Session, name: str, content: str, timeout: float) -> CustomScript:
    validate(name, content, timeout)
    row = session.get(CustomScript, name)
    if row is None:
        row = CustomScript(name=name, content=content, timeout=timeout)
        session.add(row)
    else:
        row.content, row.timeout = content, timeout
    session.flush()
    return row


def get_script(session: Session, name: str) -> CustomScript:
    row = session.get(CustomScript, name)
    if row is None:
        raise NotFound(
            f"no custom script {name!r}; import it with: escadm script import FILE --name {name}"
        )
    return row


def list_scripts(session: Session) -> list[CustomScript]:
    return list(session.scalars(select(CustomScript).order_by(CustomScript.name)))


def delete_script(session: Session, name: str) -> None:
    session.delete(get_script(session, name))


def materialise(directory: Path, name: str, content: str) -> Path:
    """run/scripts/NAME holding `content`, rewritten only when it changed."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / name
    data = content.encode()
    with contextlib.suppress(OSError):
        if hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(data).digest():
            return path
    write_atomic(path, data, mode=0o700)
    return path


async def run_script(path: Path, env: dict[str, str], timeout: float) -> ScriptResult:
    """Run the script with `env` (plus a bare PATH); kill its process group at `timeout`."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    process = await asyncio.create_subprocess_exec(
        str(path),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**BASE_ENV, **env},
        cwd=str(path.parent),
        start_new_session=True,  # its own group: the timeout kills its children too
    )
    kept = bytearray()

    async def keep_tail() -> None:
        # Only the end is kept, and what was read survives a kill at the timeout: a
        # script killed for hanging is the one whose last words matter most.
        assert process.stdout is not None
        while chunk := await process.stdout.read(65_536):
            kept.extend(chunk)
            del kept[:-OUTPUT_KEPT]

    reading = loop.create_task(keep_tail())
    code: int | None
    try:
        async with asyncio.timeout(timeout):
            await asyncio.wait({reading})  # wait() is not cancelled with its caller's task
            code = await process.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await reading
        await process.wait()
        code = None
    text = bytes(kept).decode("utf-8", errors="replace")
    return ScriptResult(path.name, code, text, loop.time() - started)
