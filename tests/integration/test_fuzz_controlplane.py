"""The control-plane API fuzzed from its own OpenAPI document with schemathesis: every operation
gets generated valid (positive) and invalid (negative) requests with a real parent key, against a
live uvicorn on real PostgreSQL and Redis. No answer may be a 5xx, and every answer whose status
the document declares must match the declared schema. Failures are collected over all operations
and reported together with the number of cases run."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.specs.openapi.checks import response_schema_conformance

from aigw.config import GatewayConfig, parse_config
from aigw.embedded import free_port
from aigw.secrets_box import generate_master_key

EXAMPLES_PER_OPERATION_AND_MODE = 30
CONFIG = """
providers:
  openai: {base_url: "https://api.openai.com/v1", api_key: "sk-platform"}
  anthropic: {base_url: "https://api.anthropic.com/v1", auth: x-api-key}
tiers:
  free: {spend_cap_cents: 500, rate_limit_rpm: 60, allowed_models: ["openai/*"]}
  pro: {spend_cap_cents: 10000, allowed_models: ["*"]}
"""


@dataclass
class Tally:
    cases: int = 0
    failures: list[str] = field(default_factory=list)
    without_invalid_inputs: int = 0


@pytest.fixture
def control_plane(tmp_path: Path, pg_dsn: str, redis_url: str) -> Iterator[str]:
    """The real app (without its background workers) served by uvicorn on a free port."""
    from controlplane.app import create_app

    config: GatewayConfig = parse_config(
        f"{CONFIG}\ndata_dir: {tmp_path}\nsecrets_key: {generate_master_key()}\n"
    )
    app = create_app(config, pg_dsn, redis_url, ingest=False)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while not _answers(f"{url}/v1/openapi.json"):
        assert time.monotonic() < deadline and thread.is_alive(), "the control plane did not start"
        time.sleep(0.05)
    yield url
    server.should_exit = True
    thread.join(timeout=15)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_no_server_errors_and_no_schema_violations(
    control_plane: str, pg_dsn: str, redis_url: str
) -> None:
    from controlplane.accounts import create_parent_account

    _, key = asyncio.run(create_parent_account(pg_dsn, "fuzzer", redis_url))
    headers = {"Authorization": f"Bearer {key}"}
    schema = schemathesis.openapi.from_url(f"{control_plane}/v1/openapi.json")
    tally = Tally()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 17

    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz(operation, mode, control_plane, headers, tally)

    print(
        f"\nschemathesis: {tally.cases} cases over {len(operations)} operations"
        f" ({tally.without_invalid_inputs} take no input to get wrong),"
        f" {len(tally.failures)} failures"
    )
    assert tally.cases >= len(operations) * 10
    assert tally.failures == [], "\n".join(tally.failures[:20])


def fuzz(
    operation: schemathesis.APIOperation,
    mode: GenerationMode,
    base_url: str,
    headers: dict[str, str],
    tally: Tally,
) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES_PER_OPERATION_AND_MODE,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def one_case(case: schemathesis.Case) -> None:
        response = case.call(base_url=base_url, headers=headers, timeout=30)
        tally.cases += 1
        try:
            case.validate_response(
                response, checks=[not_a_server_error, response_schema_conformance]
            )
        except (Failure, FailureGroup) as exc:
            found = exc.exceptions if isinstance(exc, FailureGroup) else (exc,)
            titles = "; ".join(sorted({f"{f.code} {f.title}: {f.message[:300]}" for f in found}))
            tally.failures.append(
                f"{operation.method.upper()} {operation.path} ({mode.value}) answered "
                f"{response.status_code}: {titles}\n  {case.as_curl_command()}"
            )

    try:
        one_case()
    except Unsatisfiable:
        assert mode is GenerationMode.NEGATIVE, f"{operation.path}: no valid request generated"
        tally.without_invalid_inputs += 1  # nothing to get wrong: no parameters and no body
