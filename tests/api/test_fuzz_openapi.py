"""Schemathesis over the served OpenAPI spec: no input makes the server fail (5xx).

Bounded: a fixed number of examples per operation, on both backends. Driven
through Hypothesis directly (schemathesis' pytest fixture loader does not
support pytest 9), one strategy per operation of the served spec.
"""

from __future__ import annotations

import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

EXAMPLES_PER_OPERATION = 25


def test_no_server_error(api: TestClient) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", api.app)
    auth = {"Authorization": api.headers["Authorization"]}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15, "the spec lost operations"
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def no_server_error(case) -> None:
            response = case.call(headers=auth)
            case.validate_response(response, checks=[not_a_server_error])

        try:
            no_server_error()
        except Exception as exc:
            raise AssertionError(f"{operation.label}: {exc}") from exc
