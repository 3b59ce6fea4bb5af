"""Schemathesis against the registry's own OpenAPI document: generated requests to the REST and
auth routes, as an owner with a token, must never get a 5xx or an answer the schema does not allow."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance

from conftest import RegistryServer
from modelhall.bundle import pack_bundle
from modelhall.templates import template_path
from oci_helpers import http, push_packed

EXAMPLES_PER_OPERATION = 12
# The REST API and login routes; the predict routes would start workers for each generated case.
FUZZED_PATHS = r"^/(api/v1/(whoami|tokens|repos|shared)|auth/|token)"
NOT_FUZZED = r"/(predict|runs)$|/runs/|/deployment"


@pytest.fixture(scope="module")
def owner_token(registry: RegistryServer) -> str:
    user, token = registry.user("admin")
    with pack_bundle(template_path("hello")) as packed:  # something for the generated reads to find
        push_packed(http(registry.url, token), f"{user}/fuzzed", "latest", packed)
    return token


def test_no_server_error_and_no_answer_outside_the_schema(registry: RegistryServer, owner_token: str) -> None:
    schema = schemathesis.openapi.from_url(f"{registry.url}/openapi.json")
    operations = [result.ok() for result in
                  schema.include(path_regex=FUZZED_PATHS).exclude(path_regex=NOT_FUZZED).get_all_operations()]
    assert len(operations) >= 12  # the routes above are all in the document
    failures = []
    for operation in operations:

        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, derandomize=True,
                  suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
        @given(case=operation.as_strategy())
        def exercise(case: schemathesis.Case) -> None:
            case.call_and_validate(base_url=registry.url, headers={"Authorization": f"Bearer {owner_token}"},
                                   checks=[not_a_server_error, response_schema_conformance])

        try:
            exercise()
        except Exception as failure:  # noqa: BLE001 - collected, so one run reports every operation that fails
            failures.append(f"{operation.label}: {failure}")
    assert not failures, "\n\n".join(failures)
