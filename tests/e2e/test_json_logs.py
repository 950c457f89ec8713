"""A gateway of this module's own with `log_format: json` (embedded Redis, its own database, two
extproc workers): every line every part logs is one JSON object with the agreed fields, the
request ids Envoy hands out are in the lines of those requests, no key is ever logged, and the
control plane's `/metrics` sums both workers' decisions exactly."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aigw.supervisor import read_run_state
from tests.conftest import own_database
from tests.e2e.harness import PLATFORM_KEYS, MockProvider, start_gateway, write_config

CHAT = {"model": "openai/gpt-5.4-mini", "messages": [{"role": "user", "content": "Hi"}]}
LINE_FIELDS = {"ts", "level", "logger", "message"}


@dataclass
class JsonGateway:
    base_url: str
    controlplane_url: str
    log_dir: Path
    parent_key: str
    seen_request_ids: list[str]
    keys_handed_out: list[str]
    metrics: str = ""

    def lines(self) -> list[tuple[str, str]]:
        """(file name, line) of every non-empty line the gateway's parts logged."""
        return [
            (path.name, line)
            for path in sorted(self.log_dir.glob("*.log"))
            for line in path.read_text(errors="replace").splitlines()
            if line.strip()
        ]


@pytest.fixture(scope="module")
async def json_logs_database(database_url: str) -> AsyncIterator[str]:
    async with own_database(database_url, f"aigw_json_logs_{os.getpid()}") as url:
        yield url


@pytest.fixture(scope="module")
def json_gateway(
    tmp_path_factory: pytest.TempPathFactory,
    mock_provider: MockProvider,
    json_logs_database: str,
) -> Iterator[JsonGateway]:
    """Runs the gateway, sends the module's traffic, scrapes `/metrics`, then stops it so that
    every log is complete before the tests read them."""
    folder = Path(tmp_path_factory.mktemp("json-logs"))
    config = write_config(
        folder / "gateway.yaml",
        mock_url=mock_provider.url,
        database_url=json_logs_database,
        redis_url=None,
        data_dir=folder / "data",
        extra={"log_format": "json"},
    )
    gateway = start_gateway(folder / "gateway.yaml", config, "--extproc-workers", "2")
    try:
        running = read_run_state(folder / "data")
        assert running is not None
        from controlplane.accounts import create_parent_account

        _, parent_key = asyncio.run(
            create_parent_account(json_logs_database, "acme", running["redis_url"])
        )
        server = config["server"]
        result = JsonGateway(
            base_url=gateway.base_url,
            controlplane_url=f"http://127.0.0.1:{server['controlplane_port']}",
            log_dir=folder / "data" / "logs",
            parent_key=parent_key,
            seen_request_ids=[],
            keys_handed_out=[parent_key],
        )
        _send_traffic(result)
        result.metrics = httpx.get(f"{result.controlplane_url}/metrics").text
    finally:
        assert gateway.stop() == 0
    yield result


def _send_traffic(gateway: JsonGateway) -> None:
    headers = {"Authorization": f"Bearer {gateway.parent_key}"}
    with httpx.Client(base_url=gateway.base_url, timeout=30) as client:
        created = client.post("/sub-accounts", headers=headers, json={"name": "customer"})
        assert created.status_code == 201, created.text
        sub_account = created.json()
        rotated = client.post(
            f"/sub-accounts/{sub_account['id']}/rotate", headers=headers, json={"grace_seconds": 0}
        )
        assert rotated.status_code == 200, rotated.text
        gateway.keys_handed_out += [sub_account["key"], rotated.json()["key"]]
        for response in (created, rotated):
            gateway.seen_request_ids.append(response.headers["x-aig-request-id"])

        sub_key = {"Authorization": f"Bearer {rotated.json()['key']}"}
        for _ in range(3):
            answer = client.post("/chat/completions", headers=sub_key, json=CHAT)
            assert answer.status_code == 200, answer.text
        for unknown_key in ("sk-aig-" + "x" * 40, "sk-aig-" + "y" * 40):
            refused = client.post(
                "/chat/completions", headers={"Authorization": f"Bearer {unknown_key}"}, json=CHAT
            )
            assert refused.status_code == 401


def _parsed(name: str, line: str) -> dict[str, Any]:
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise AssertionError(f"{name}: not a JSON line: {line[:300]}") from None
    assert isinstance(record, dict), f"{name}: {line[:300]}"
    return dict(record)


def test_every_line_of_every_part_is_one_json_object(json_gateway: JsonGateway) -> None:
    lines = json_gateway.lines()
    files = {name for name, _ in lines}

    assert {"controlplane.log", "extproc-1.log", "extproc-2.log"} <= files
    for name, line in lines:
        record = _parsed(name, line)
        assert set(record) >= LINE_FIELDS, f"{name}: {line[:300]}"
        assert record["ts"].endswith("Z")


def test_control_plane_lines_carry_the_request_id_envoy_gave_the_client(
    json_gateway: JsonGateway,
) -> None:
    logged = {
        record["request_id"]
        for name, line in json_gateway.lines()
        if name == "controlplane.log"
        for record in [_parsed(name, line)]
        if "request_id" in record
    }

    assert set(json_gateway.seen_request_ids) <= logged


def test_no_key_is_ever_logged(json_gateway: JsonGateway) -> None:
    text = "\n".join(line for _, line in json_gateway.lines())

    assert "sk-aig-" not in text
    for key in [*json_gateway.keys_handed_out, *PLATFORM_KEYS.values()]:
        assert key not in text


def test_metrics_sum_the_decisions_of_both_workers(json_gateway: JsonGateway) -> None:
    counted = {
        sample.labels["decision"]: sample.value
        for family in text_string_to_metric_families(json_gateway.metrics)
        for sample in family.samples
        if sample.name == "aigw_requests_total" and sample.value
    }

    assert counted == {"admitted": 3, "rejected_auth": 2}
