"""What the HA lab tests need from the machine (skipped with the reason outside CI,
failed in CI, where every one of them must run), and the running pair a lab module
shares."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from conftest import need
from esc_pair import ESCADM, Pair
from lab import Lab, availability
from pg_server import availability as pg_availability

from esc.ha import keepalived as ka
from esc.ha.labnodes import install_release

__all__ = ["keepalived_missing", "need", "running_pair"]


def keepalived_missing() -> str | None:
    """Why Debian's keepalived cannot be run here, None when it can."""
    try:
        ka.find_keepalived()
    except ka.KeepalivedError as exc:
        return str(exc)
    return None


def running_pair(
    net: str,
    prefix: str,
    *,
    kad_vri: int,
    vim_host: bool,
    keep_env: str,
    wheel: Path | None = None,
) -> Iterator[Pair]:
    """A pair created in a lab of its own on `net` (a /24), the lab's node provider up,
    with a VIM host on a third test host when `vim_host`; everything is removed after,
    the nodes' homes too unless `keep_env` is set (to read their logs). With `wheel`,
    each node runs that release from a venv of its own (as a lab node VM does), else
    this checkout."""
    need(availability())
    need(pg_availability())
    need(keepalived_missing())
    base = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    base.chmod(0o711)  # postgres goes through it to the homes
    escadm = (ESCADM, ESCADM)
    if wheel is not None:
        venvs = (base / "venv-n1", base / "venv-n2")
        for venv in venvs:
            install_release(venv, wheel)
        escadm = tuple(str(v / "bin" / "escadm") for v in venvs)
    with Lab(3 if vim_host else 2, net=net, prefix=prefix) as lab:
        made = Pair(lab, base, kad_vri=kad_vri, escadm=escadm)
        try:
            made.start_agent()
            if vim_host:
                made.start_vim_host()
            made.create()
            yield made
        finally:
            made.stop()
    if not os.environ.get(keep_env):
        shutil.rmtree(base, ignore_errors=True)
