"""A deploy checks its images and flavors against the VIM before it opens the
database write, so a slow VIM holds up no other write; on both backends."""

from __future__ import annotations

import threading

from conftest import wait_transaction
from fastapi.testclient import TestClient

from esc.descriptor import parse_descriptor
from esc.engine.controller import Controller
from esc.vim.base import VimDriver

GATED_IMAGE = "healthy"
WAIT = 10.0  # bound on every wait: a broken build fails, it does not hang


def descriptor(name: str, image: str) -> str:
    return f"""
tenant: gated
deployment:
  name: {name}
  vm_groups:
    - {{name: g, image: "{image}", flavor: m1.tiny}}
"""


class GatedVim:
    """The node's VIM, but validate_image of GATED_IMAGE waits until released, as a
    remote VIM's round trip would; it records whether a database write was open."""

    def __init__(self, inner: VimDriver, controller: Controller) -> None:
        self.inner = inner
        self.db = controller.db
        self.entered = threading.Event()
        self.release = threading.Event()
        self.write_open: list[bool] = []

    def validate_image(self, image: str) -> None:
        self.write_open.append(self.db.in_write())
        if image == GATED_IMAGE:
            self.entered.set()
            self.release.wait(WAIT)
        self.inner.validate_image(image)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def in_thread(work) -> tuple[threading.Thread, list]:
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(work())
        except Exception as exc:  # reported by the assertion on outcome
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_a_slow_vim_check_holds_up_no_other_write(controller: Controller, api: TestClient) -> None:
    vim = GatedVim(controller.vims.default, controller)
    controller.vims.default = vim
    northbound = controller.northbound

    first, first_outcome = in_thread(
        lambda: northbound.deploy(parse_descriptor(descriptor("slow", GATED_IMAGE)))
    )
    assert vim.entered.wait(WAIT), "the deploy never asked the VIM"

    tenant, tenant_outcome = in_thread(lambda: northbound.create_tenant("unrelated"))
    other, other_outcome = in_thread(
        lambda: northbound.deploy(parse_descriptor(descriptor("quick", "slow-boot:0")))
    )
    tenant.join(WAIT / 2)
    other.join(WAIT / 2)
    still_validating = first.is_alive() and not vim.release.is_set()
    finished = (not tenant.is_alive(), not other.is_alive())
    vim.release.set()
    first.join(WAIT)

    assert still_validating, "the first deploy stopped waiting on the VIM too early"
    assert finished == (True, True), "a write waited for the VIM check of another"
    assert tenant_outcome[0].name == "unrelated"
    for outcome in (first_outcome, other_outcome):
        assert not isinstance(outcome[0], Exception), outcome[0]
        assert wait_transaction(api, outcome[0].id)["state"] == "SUCCESS"
    assert vim.write_open == [False, False], "the VIM was asked with a database write open"
