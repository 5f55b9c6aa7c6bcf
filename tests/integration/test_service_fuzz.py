"""The REST API fuzzed from its own OpenAPI schema (schemathesis, in-process, no socket).

Every operation gets a bounded number of generated requests, schema-valid and schema-invalid
ones (a missing or wrong key among them), with a valid ``admin`` key otherwise (every route's
scope, so a 403 would be a scope table bug, not an answer to the input) and, for most, the served
line in the path (else nearly every request would stop at 404). Each answer must be no 5xx, a
status the schema documents, and a body that conforms to it; schema-invalid input must be refused.

Positive data may also be refused with 413 or 422: an image's bytes, a text's meaning and the
upload limits are checked beyond what a JSON schema can say, and those answers are documented.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, strategies
from schemathesis.generation.modes import GenerationMode

from normadd.config import LineConfig
from normadd.serve.app import create_app
from normadd.serve.settings import ServiceConfig

KEY = "fuzzing-station-secret"
LINE = "bottle"
EXAMPLES_PER_OPERATION = 25
CONFIG = f"""
[checks]
positive_data_acceptance.expected-statuses = ["2xx", "401", "404", "409", "413", "422"]

[auth.openapi.APIKeyHeader]
api_key = "{KEY}"
"""


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[schemathesis.Schema]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("NORMADD_OFFLINE", "1")
        patch.setenv("NORMADD_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        patch.delenv("NORMADD_API_KEYS", raising=False)
        folder: Path = tmp_path_factory.mktemp("fuzz")
        settings = ServiceConfig(
            line=LINE,
            line_config=LineConfig(class_name="bottle", backbone="tiny-random"),
            database=folder / "normadd.db",
            api_keys={"fuzzer": {"secret": KEY, "scopes": ["admin"]}},
            max_upload_bytes=200_000,
            max_images_per_request=4,
            max_image_pixels=250_000,
            batch_wait_ms=0,
            device="cpu",
        )
        app = create_app(settings)
        yield schemathesis.openapi.from_asgi(
            "/openapi.json", app, config=schemathesis.config.SchemathesisConfig.from_str(CONFIG)
        )
        from schemathesis.python import asgi  # the app's lifespan runs on schemathesis's own event loop

        asgi.shutdown_lifespans()


def _fuzz(operation: schemathesis.APIOperation) -> None:
    """Generated requests to one operation; raises schemathesis's report of the first failure found."""

    @hypothesis.settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        derandomize=True,  # the same requests on every run: a failure here is reproducible
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis.given(case=strategies.one_of(*(operation.as_strategy(mode) for mode in GenerationMode)))
    def call(case: schemathesis.Case) -> None:
        if case.path_parameters and "line" in case.path_parameters and len(repr(case.body)) % 4:
            case.path_parameters["line"] = LINE  # most requests reach the served line, some an unknown one
        case.call_and_validate()

    call()


def test_every_generated_request_gets_a_documented_answer_and_never_a_5xx(api_schema: schemathesis.Schema) -> None:
    failures: dict[str, str] = {}
    fuzzed = []
    for result in api_schema.get_all_operations():
        operation = result.ok()
        fuzzed.append(operation.label)
        try:
            _fuzz(operation)
        except Exception as error:  # schemathesis's failure report: collected, then shown for every operation
            failures[operation.label] = str(error)
    assert "POST /v1/lines/{line}/inspect" in fuzzed and "GET /metrics" in fuzzed
    decisions_and_staging = {  # issues 11 and 12's routes are fuzzed too
        "GET /v1/lines/{line}/threshold",
        "PUT /v1/lines/{line}/threshold",
        "DELETE /v1/lines/{line}/threshold",
        "POST /v1/lines/{line}/normalities/preview",
        "POST /v1/lines/{line}/normalities/{name}/activate",
    }
    assert decisions_and_staging <= set(fuzzed), sorted(decisions_and_staging - set(fuzzed))
    authority_and_examples = {  # issue 18's routes and issue 16's visual normalities
        "GET /v1/me",
        "GET /v1/lines/{line}/changes",
        "POST /v1/lines/{line}/changes/{change_id}/approve",
        "POST /v1/lines/{line}/changes/{change_id}/reject",
        "GET /v1/audit/verify",
        "POST /v1/lines/{line}/examples",
    }
    assert authority_and_examples <= set(fuzzed), sorted(authority_and_examples - set(fuzzed))
    assert not failures, "\n\n".join(f"{label}:\n{report}" for label, report in failures.items())
