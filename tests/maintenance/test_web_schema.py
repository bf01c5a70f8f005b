"""Schemathesis against the web app's OpenAPI spec: every API operation, with data generated
from the spec and a crew member's token, answers without a server error and as its schema says.

The requests go through the app's own TestClient rather than schemathesis' ASGI transport: that
transport keeps a process-wide event-loop thread until exit, which the leak check of
tests/conftest.py rightly refuses.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import response_schema_conformance
from starlette.exceptions import StarletteDeprecationWarning

from tests.maintenance.test_web import ROSA, bearer, build_plant

with warnings.catch_warnings():
    # Starlette 1.x asks for `httpx2` under its TestClient; httpx is what is installed and works.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

OPERATIONS = {
    "GET /api/tickets",
    "GET /api/tickets/{ticket_id}",
    "POST /api/tickets/{ticket_id}/acknowledge",
    "POST /api/tickets/{ticket_id}/start",
    "POST /api/tickets/{ticket_id}/notes",
    "POST /api/tickets/{ticket_id}/resolve",
    "POST /api/tickets/{ticket_id}/assign",
    "GET /api/machines/{machine}/reliability",
    "GET /api/stops",
    "POST /api/stops/{stop_id}/reason",
    "POST /api/rejects",
}


def _request(case: schemathesis.Case[Any]) -> dict[str, Any]:
    """The case as arguments of httpx's `request` (schemathesis gives those of requests)."""
    kwargs = case.as_transport_kwargs(base_url="http://testserver", headers=bearer(ROSA))
    assert not kwargs.pop("cookies", None), "the API takes no cookies"
    if "data" in kwargs:
        kwargs["content"] = kwargs.pop("data")
    return kwargs


def test_every_operation_answers_without_a_server_error(tmp_path: Path) -> None:
    for plant in build_plant(tmp_path):
        with TestClient(plant.app, follow_redirects=False) as client:
            schema = schemathesis.openapi.from_dict(client.get("/api/openapi.json").json())
            operations = []
            for result in schema.get_all_operations():
                assert isinstance(result, Ok), f"the spec is invalid: {result.err()}"
                operations.append(result.ok())
            assert {op.label for op in operations} == OPERATIONS

            for operation in operations:

                @given(case=operation.as_strategy())
                @settings(
                    max_examples=25,
                    deadline=None,
                    derandomize=True,
                    database=None,
                    suppress_health_check=[HealthCheck.too_slow],
                )
                def call(case: schemathesis.Case[Any]) -> None:
                    response = client.request(**_request(case))
                    case.validate_response(
                        response, checks=[not_a_server_error, response_schema_conformance]
                    )

                call()
