"""Schemathesis with every check over the served OpenAPI spec: 0 failures.

Every built-in check runs on every response (server errors, status codes,
content types, headers and bodies against the spec, valid data accepted,
invalid data refused, unsupported methods, ignored auth, ...), for data
that follows the spec and data that breaks it. Bounded: a fixed number of
derandomized examples per operation and mode, on both backends. Driven
through Hypothesis directly (schemathesis' pytest loader does not support
pytest 9), one strategy per operation of the served spec.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from conftest import Node
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from hypothesis.stateful import run_state_machine_as_test
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS, load_all_checks, not_a_server_error
from schemathesis.specs.openapi.checks import positive_data_acceptance

from esc.api.app import create_app
from esc.engine import op_mode
from esc.engine.controller import Controller
from esc.engine.idempotency import HEADER

EXAMPLES_PER_OPERATION = 10
SEQUENCES = 10
STEPS_PER_SEQUENCE = 6

load_all_checks()
ALL_CHECKS = CHECKS.get_all()

# Bodies with rules JSON Schema cannot state, so data valid by the spec can
# still be refused (422, naming the rule): a descriptor must name images and
# flavors the node's VIM has, stay within [limits] max_vms_per_deployment and,
# on update, name the deployment of the URL; dynamic mappings are an XML
# document; a subscription's callback host must be one deliveries may go to
# (notifications.allowed_hosts); a VIM connection's settings are its driver's and its
# VIM must answer them; a package's body must be the release wheel its name and checksum
# header say, a backup's an ESC archive signed by the node's key; a backup's schema must
# be a revision of the node's migrations, and the release it is for an older one. The
# pair's role changes and a restore's swap are refused (409) on this standalone node
# whatever their body. Every other check runs on them.
SEMANTIC_RULES = {
    "POST /v0/deployments",
    "POST /v0/subscriptions",
    "POST /v0/vims",
    "PUT /v0/tenants/{tenant}/deployments/{name}",
    "PUT /v0/dynamic_mappings",
    "POST /esc/ha/switchover",
    "POST /esc/ha/force-active",
    "POST /esc/ha/restore",
    "PUT /esc/node/packages/{file}",
    "POST /esc/node/backups",
    "PUT /esc/node/backups/{file}",
}


def checks_for(label: str, controller: Controller) -> list:
    """Every check; not_a_server_error lets through only the documented 503 of a
    node in MAINTENANCE (which the fuzzer itself sets with PUT /esc/op_mode), and
    positive_data_acceptance only the documented 422 of an Idempotency-Key that an
    earlier case sent with another request (the fuzzer draws keys from a small
    space, and a key's uniqueness is no rule JSON Schema can state)."""

    def not_a_server_error_outside_maintenance(ctx, response, case) -> bool | None:
        if response.status_code == 503 and in_maintenance(controller):
            assert "MAINTENANCE" in response.json()["detail"], response.text
            return None
        return not_a_server_error(ctx, response, case)

    def positive_data_acceptance_but_a_reused_key(ctx, response, case) -> bool | None:
        reused = response.status_code == 422 and HEADER in (case.headers or {})
        if reused and "was used for another request" in response.json()["detail"]:
            return None
        return positive_data_acceptance(ctx, response, case)

    replaced = {
        not_a_server_error: not_a_server_error_outside_maintenance,
        positive_data_acceptance: positive_data_acceptance_but_a_reused_key,
    }
    checks = [replaced.get(check, check) for check in ALL_CHECKS]
    if label in SEMANTIC_RULES:
        checks.remove(positive_data_acceptance_but_a_reused_key)
    return checks


def in_maintenance(controller: Controller) -> bool:
    with controller.db.read() as session:
        return op_mode.current(session) is op_mode.OpMode.MAINTENANCE


def back_to_operation(controller: Controller) -> None:
    """As the operator would, so each operation's writes are tried for real."""
    with controller.db.write() as session:
        op_mode.set_mode(session, op_mode.OpMode.OPERATION)


@pytest.fixture
def served(controller: Controller, node: Node) -> Iterator[tuple[Any, dict[str, str], Controller]]:
    """The spec as the app serves it, and the admin's Authorization header."""
    # The fuzzer is one client that sends wrong credentials on purpose (the
    # ignored_auth check), far more often than the failure budget allows.
    node.settings.api.max_auth_failures = 10_000
    # Callbacks it registers must never be delivered off this machine: a names-only
    # allow-list refuses every address and every name but localhost, unresolved.
    node.settings.notifications.allowed_hosts = ["localhost"]
    app = create_app(controller, manage_lifecycle=False)
    with TestClient(app):
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        # 413 refuses a body larger than [api] max_body_bytes (an over-long field
        # of multi-byte characters): a rejection, missing from the check's list.
        rejection = schema.config.checks.negative_data_rejection
        rejection.expected_statuses = [*rejection.expected_statuses, "413"]
        token = base64.b64encode(":".join(node.auth).encode()).decode()
        yield schema, {"Authorization": f"Basic {token}"}, controller


def test_every_check_passes(served: tuple[Any, dict[str, str], Controller]) -> None:
    schema, auth, controller = served
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15, "the spec lost operations"
    assert len(ALL_CHECKS) >= 12, "schemathesis lost checks"
    failures = []
    for operation in operations:
        checks = checks_for(operation.label, controller)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            back_to_operation(controller)
            try:
                fuzz(operation, mode, checks, auth)
            except Unsatisfiable:
                # Nothing in the operation can be made invalid (GET /esc/health).
                assert mode is GenerationMode.NEGATIVE, operation.label
            except (Exception, BaseExceptionGroup) as exc:
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert not failures, "\n\n".join(failures)


def fuzz(operation, mode: GenerationMode, checks: list, auth: dict[str, str]) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def every_check(case) -> None:
        case.call_and_validate(headers=auth, checks=checks)

    every_check()


def test_stateful_sequences_pass_every_check(
    served: tuple[Any, dict[str, str], Controller],
) -> None:
    """Sequences that follow the spec's links (create, then read or delete what
    was created), with the checks that look across steps (use after free,
    resource availability)."""
    schema, auth, controller = served

    class Sequences(schema.as_state_machine()):
        def get_call_kwargs(self, case) -> dict[str, Any]:
            return {"headers": auth}

        def validate_response(self, response, case, additional_checks=None, **kwargs) -> None:
            case.validate_response(
                response,
                checks=checks_for(case.operation.label, controller),
                headers=auth,
                transport_kwargs=kwargs or None,
                recorder=self.recorder,
            )

    run_state_machine_as_test(
        Sequences,
        settings=settings(
            max_examples=SEQUENCES,
            stateful_step_count=STEPS_PER_SEQUENCE,
            # The server keeps what earlier sequences created, so a replayed
            # sequence can take another path: generate only, never shrink.
            phases=[Phase.generate],
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
