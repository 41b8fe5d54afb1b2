"""A VIM's errors: a refusal ends the transaction FAILED with the VIM's words, a
transient error is retried with backoff within a bound, then FAILED with a reason."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

import pytest
from conftest import Node, wait_for
from faulty_vim import FaultyVim, faulty_controller

from esc.db.models import Transaction, TransactionState
from esc.descriptor import parse_descriptor
from esc.engine.controller import Controller
from esc.vim.base import PermanentVimError, TransientVimError, VimError

ONE_VM = """
tenant: faults
deployment:
  name: one
  vm_groups:
    - {name: g, image: healthy, flavor: m1.tiny}
"""


ATTEMPTS = 3


@pytest.fixture
def faulty(node: Node) -> Iterator[Callable[..., tuple[Controller, FaultyVim]]]:
    """Controllers whose VIM fails as asked, ATTEMPTS tries; stopped at teardown."""
    started: list[Controller] = []

    def make(
        fault: Callable[[int], VimError | None], backoff: float = 0.05
    ) -> tuple[Controller, FaultyVim]:
        controller, vim = faulty_controller(node, fault, attempts=ATTEMPTS, backoff=backoff)
        started.append(controller)
        return controller, vim

    yield make
    for controller in started:
        controller.stop(timeout=5)


def _ended(controller: Controller, tx_id: str) -> Transaction:
    def final() -> Transaction | None:
        with controller.db.read() as session:
            tx = session.get(Transaction, tx_id)
            return tx if tx.state.is_final else None

    return wait_for(final, 30, "the transaction ends")  # type: ignore[return-value]


def test_permanent_refusal_fails_with_the_vims_message_and_no_traceback(
    faulty, caplog: pytest.LogCaptureFixture
) -> None:
    refusal = PermanentVimError("quota exceeded: 0 of 0 instances left in project faults")
    controller, vim = faulty(lambda n: refusal)
    with caplog.at_level(logging.INFO):
        tx = controller.northbound.deploy(parse_descriptor(ONE_VM))
        ended = _ended(controller, tx.id)
    assert ended.state is TransactionState.FAILED
    assert ended.error == f"the VIM refused: {refusal}"
    assert "internal error" not in ended.error
    assert vim.creates == 1, "a refusal must not be retried"
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []


def test_transient_errors_are_retried_then_succeed(
    faulty, caplog: pytest.LogCaptureFixture
) -> None:
    controller, vim = faulty(
        lambda n: TransientVimError(f"503 Service Unavailable (call {n})") if n <= 2 else None
    )
    with caplog.at_level(logging.WARNING, logger="esc.engine.step_vim"):
        tx = controller.northbound.deploy(parse_descriptor(ONE_VM))
        ended = _ended(controller, tx.id)
    assert ended.state is TransactionState.SUCCESS, ended.error
    assert vim.creates == 3
    retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == 2, retries
    assert f"(attempt 1 of {ATTEMPTS})" in retries[0] and "call 1" in retries[0]
    assert f"(attempt 2 of {ATTEMPTS})" in retries[1] and "call 2" in retries[1]


def test_transient_errors_without_end_fail_after_the_bound(faulty) -> None:
    controller, vim = faulty(lambda n: TransientVimError(f"connection refused (call {n})"))
    tx = controller.northbound.deploy(parse_descriptor(ONE_VM))
    ended = _ended(controller, tx.id)
    assert ended.state is TransactionState.FAILED
    assert vim.creates == ATTEMPTS
    assert f"{ATTEMPTS} times in a row" in ended.error
    assert f"last error: connection refused (call {ATTEMPTS})" in ended.error
    assert "internal error" not in ended.error


def test_waiting_for_a_retry_ends_when_the_node_stops(faulty) -> None:
    controller, vim = faulty(lambda n: TransientVimError("timed out"), backoff=30)
    tx = controller.northbound.deploy(parse_descriptor(ONE_VM))
    wait_for(lambda: vim.creates, 10, "the first create_vm")
    begun = time.monotonic()
    assert controller.stop(timeout=5) == [tx.id]
    assert time.monotonic() - begun < 5, "the stop waited for the backoff"
    with controller.db.read() as session:
        assert session.get(Transaction, tx.id).state is TransactionState.IN_PROGRESS
    assert vim.creates == 1
