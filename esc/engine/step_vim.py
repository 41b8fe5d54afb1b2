"""The VIM as a transaction step sees it: fenced by the step's claim, and with
transient errors retried.

A call that changes something is made only while the claim is current
(esc.engine.claims), so an executor that lost its transaction calls nothing.
A TransientVimError is retried with exponential backoff up to the configured
attempts (every driver call is idempotent by VM id, so asking again is safe);
then the step fails with a reason naming the attempts and the last error. A
permanent refusal is not retried. Waiting for a retry ends at once when the
node stops (Interrupted): the transaction is resumed at next start.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from esc.config import EngineSettings
from esc.db.session import Database
from esc.engine.claims import Claim, check_current
from esc.engine.operations import Interrupted, OperationFailed
from esc.vim.base import InstanceStatus, TransientVimError, VimDriver, VmSpec

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int
    backoff: float  # seconds before the first retry, doubled at each next one

    @classmethod
    def of(cls, engine: EngineSettings) -> RetryPolicy:
        return cls(engine.vim_attempts, engine.vim_backoff)


class StepVim(VimDriver):
    """A driver for one claim's steps; see the module docstring."""

    def __init__(
        self,
        vim: VimDriver,
        db: Database,
        claim: Claim,
        retry: RetryPolicy,
        stopping: threading.Event,
    ) -> None:
        self.inner, self.db, self.claim = vim, db, claim
        self.retry, self.stopping = retry, stopping
        self.name = vim.name  # type: ignore[misc]

    def _call(self, what: str, call: Callable[[], T], *, changes: bool = True) -> T:
        delay = self.retry.backoff
        for attempt in range(1, self.retry.attempts + 1):
            if changes:
                check_current(self.db, self.claim)
            try:
                return call()
            except TransientVimError as exc:
                if attempt == self.retry.attempts:
                    raise OperationFailed(
                        f"the VIM failed {what} {attempt} times in a row "
                        f"([engine] vim_attempts); last error: {exc}"
                    ) from exc
                log.warning(
                    "transaction %s: %s failed (attempt %d of %d), retrying in %g s: %s",
                    self.claim.tx_id,
                    what,
                    attempt,
                    self.retry.attempts,
                    delay,
                    exc,
                )
                if self.stopping.wait(delay):
                    raise Interrupted from exc
                delay *= 2
        raise AssertionError("unreachable: attempts >= 1")

    def create_vm(self, spec: VmSpec) -> InstanceStatus:
        return self._call(f"to create VM {spec.name}", lambda: self.inner.create_vm(spec))

    def start_vm(self, vm_id: str) -> InstanceStatus:
        return self._call(f"to start VM {vm_id}", lambda: self.inner.start_vm(vm_id))

    def stop_vm(self, vm_id: str) -> InstanceStatus:
        return self._call(f"to stop VM {vm_id}", lambda: self.inner.stop_vm(vm_id))

    def reboot_vm(self, vm_id: str) -> InstanceStatus:
        return self._call(f"to reboot VM {vm_id}", lambda: self.inner.reboot_vm(vm_id))

    def delete_vm(self, vm_id: str) -> None:
        self._call(f"to delete VM {vm_id}", lambda: self.inner.delete_vm(vm_id))

    # Queries change nothing: retried, not fenced.
    def status(self, vm_id: str) -> InstanceStatus:
        return self._call(
            f"to tell the status of VM {vm_id}", lambda: self.inner.status(vm_id), changes=False
        )

    def validate_image(self, image: str) -> None:
        self.inner.validate_image(image)

    def validate_flavor(self, flavor: str) -> None:
        self.inner.validate_flavor(flavor)

    def list_instances(self) -> list[str]:
        return self.inner.list_instances()

    def check(self) -> None:
        self.inner.check()
