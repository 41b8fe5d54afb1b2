"""The in-memory fake VIM as a contract target."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from vim_target import Target

from esc.vim.fake import FakeVim


def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    observer = FakeVim(tmp_path / "vim")
    yield Target(
        make=lambda: FakeVim(tmp_path / "vim"),
        image="healthy",
        flavor="m1.tiny",
        put_foreign=observer.put_foreign,
        foreign_running=observer.foreign_running,
        tags_of=observer.tags_of,
    )
    # Nothing runs to be killed; what it holds is dropped with its directory.
    FakeVim.forget(tmp_path / "vim")
