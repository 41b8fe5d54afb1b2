"""A VIM the driver contract suite runs against: how to make driver objects on it, and
what it has (an image, a flavor), as each target sets itself up.

The suite (test_driver_contract.py) runs on every target named in TARGETS; each real
VIM's target lives in its own module `target_<name>.py` beside this one, with one
function `target(request, tmp_path)` yielding a Target and cleaning up after it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from esc.vim.base import VimDriver

# The targets: every module target_<name>.py here.
TARGETS = sorted(p.stem.removeprefix("target_") for p in Path(__file__).parent.glob("target_*.py"))


@dataclass
class Target:
    # A new driver object on the VIM: each call is another controller's, or the same one
    # restarted (controller_id says whose: instances are found by their tags).
    make: Callable[[], VimDriver]
    image: str  # an image the VIM has
    flavor: str  # a flavor the VIM has
    # VMs answer an HTTP health endpoint at their address (the local VIM's kinds).
    http_address: bool = False
    # Make an instance named NAME on the VIM that is not this controller's (untagged),
    # bypassing the driver; None where the VIM cannot hold one (the local VIM's directory
    # belongs to one controller).
    put_foreign: Callable[[str], None] | None = None
    # Whether that instance is still there, untouched (running).
    foreign_running: Callable[[str], bool] | None = None
    # The tags the VIM itself holds for an instance, read bypassing the driver.
    tags_of: Callable[[str], dict[str, str]] | None = None


def target(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    """The target `name`, from its module `target_<name>`."""
    module = importlib.import_module(f"target_{name}")
    yield from module.target(request, tmp_path)
