"""Several extproc workers share the load: with `aigw up --extproc-workers 2`, requests that run
at the same time are decided by both workers, not all by one (Envoy would otherwise multiplex
every ext_proc stream on its single HTTP/2 connection to one worker).

Each worker's decisions are read from its own file in the multiprocess metrics directory
(`counter_<pid>.db`, aigw/metrics_registry.py), before and after the load."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from prometheus_client.multiprocess import MultiProcessCollector

from aigw._envoy_clusters import STREAMS_PER_EXTPROC_CONNECTION
from tests.e2e.conftest import E2E, Parent

MODEL = "openai/gpt-5.4-mini"
# Enough streams at once for 16 connections to extproc: the kernel puts each on one of the two
# workers, so all of them on the same one has a chance of 2^-15.
CONCURRENT_REQUESTS = 16 * STREAMS_PER_EXTPROC_CONNECTION
ROUNDS = 2
# Every request is held this long by the mock provider, so the requests of a round overlap and
# Envoy needs that many ext_proc streams at once.
PROVIDER_DELAY_MS = "500"


def admitted_by_worker(metrics_dir: Path) -> dict[str, float]:
    """Requests admitted so far, by the pid in the name of each process's counter file."""
    admitted: dict[str, float] = {}
    for path in metrics_dir.glob("counter_*.db"):
        for metric in MultiProcessCollector.merge([str(path)], accumulate=False):
            for sample in metric.samples:
                if sample.name == "aigw_requests_total" and sample.labels == {
                    "decision": "admitted"
                }:
                    admitted[path.stem.removeprefix("counter_")] = sample.value
    return admitted


async def test_concurrent_requests_are_decided_by_more_than_one_worker(
    e2e: E2E, parent: Parent
) -> None:
    account = parent.create_sub_account(allowed_models=["openai/*"])
    metrics_dir = Path(e2e.gateway.config["data_dir"]) / "metrics"
    before = admitted_by_worker(metrics_dir)
    headers = {"Authorization": f"Bearer {account['key']}", "x-mock-delay-ms": PROVIDER_DELAY_MS}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5}
    limits = httpx.Limits(max_connections=CONCURRENT_REQUESTS)
    async with httpx.AsyncClient(timeout=30, limits=limits) as http:
        for _ in range(ROUNDS):
            answers = await asyncio.gather(
                *(
                    http.post(f"{e2e.base_url}/chat/completions", headers=headers, json=body)
                    for _ in range(CONCURRENT_REQUESTS)
                )
            )
            refused = [answer.text for answer in answers if answer.status_code != 200]
            assert not refused, f"{len(refused)} not answered 200, first: {refused[0]}"

    after = admitted_by_worker(metrics_dir)
    gained = {pid: count - before.get(pid, 0.0) for pid, count in after.items()}
    assert sum(gained.values()) == ROUNDS * CONCURRENT_REQUESTS
    busy_workers = [pid for pid, count in gained.items() if count > 0]
    assert len(busy_workers) >= 2, gained
