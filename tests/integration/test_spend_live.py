"""Live spend in GET /v1/sub-accounts/{id}, the list and GET /v1/me: read from Redis as settled,
before the ledger has it; cents as JSON numbers with up to six exact decimals; remaining never
negative; the ledger's sum while Redis is not ready."""

from __future__ import annotations

from decimal import Decimal

import orjson

from aigw import keyspace
from tests.integration.test_spend_rebuild import Plane, plane, usage

__all__ = ["plane"]


async def test_spend_is_live_from_redis_before_ingestion(plane: Plane) -> None:
    sub = await plane.create(spend_cap_cents=5000)
    await plane.settle(sub, "req-1", 312_500, 15_625)
    await plane.settle(sub, "req-2", 1, 0)
    assert await plane.ledger_ids() == []  # nothing ingested (the ingester is off here)

    response = await plane.call("GET", f"/v1/sub-accounts/{sub['id']}")
    assert b'"spent_cents":0.328126,"remaining_cents":4999.671874}' in response.content
    spend = response.json()["spend"]
    assert isinstance(spend["spent_cents"], float) and spend["spent_cents"] == 0.328126
    assert spend["remaining_cents"] == 4999.671874

    me = await plane.call("GET", "/v1/me", key=sub["key"])
    assert me.json()["spend"] == spend
    assert b'"spent_cents":0.328126' in me.content

    listing = await plane.call("GET", "/v1/sub-accounts")
    assert listing.json()["data"][0]["spend"] == spend


async def test_amounts_stay_exact_beyond_float_precision(plane: Plane) -> None:
    # 8999999999.999999 cents: exact as micro-cents (< 2**53), not as a binary float of cents
    sub = await plane.create(spend_cap_cents=10_000_000_000)
    await plane.settle(sub, "req-1", 8_999_999_999_999_999, 0)
    response = await plane.call("GET", f"/v1/sub-accounts/{sub['id']}")
    assert (
        b'"spent_cents":8999999999.999999,"remaining_cents":1000000000.000001}' in response.content
    )
    spend = orjson.loads(response.content)["spend"]  # a number, not a string
    assert isinstance(spend["spent_cents"], float)
    exact = orjson.loads(response.content.replace(b"8999999999.999999", b'"x"'))
    assert exact["spend"]["spent_cents"] == "x"  # the digits are there verbatim
    parsed = response.json(parse_float=Decimal)["spend"]
    assert parsed["spent_cents"] == Decimal("8999999999.999999")
    assert parsed["remaining_cents"] == Decimal("1000000000.000001")


async def test_whole_cents_are_integers_and_remaining_is_never_negative(plane: Plane) -> None:
    sub = await plane.create(spend_cap_cents=1)
    await plane.settle(sub, "req-1", 2_000_000, 0)
    response = await plane.call("GET", f"/v1/sub-accounts/{sub['id']}")
    assert b'"spent_cents":2,"remaining_cents":0}' in response.content
    uncapped = await plane.create()
    await plane.settle(uncapped, "req-2", 500_000, 0)
    spend = (await plane.call("GET", f"/v1/sub-accounts/{uncapped['id']}")).json()["spend"]
    assert spend == {
        "period_start": "2026-11-01T00:00:00Z",
        "resets_at": "2026-12-01T00:00:00Z",
        "spent_cents": 0.5,
        "remaining_cents": None,
    }


async def test_while_redis_is_not_ready_the_ledger_answers(plane: Plane) -> None:
    sub = await plane.create(spend_cap_cents=5000)
    await plane.add(usage(sub["id"], plane.parent_id, "req-1", "2026-11", 1_250_000, 62_500))
    await plane.ingester().run_once()
    await plane.redis.delete(keyspace.owner_state(sub["id"]))
    await plane.redis.hset(keyspace.owner_spend(sub["id"], "2026-11"), "spent", "99")
    assert (await plane.spend(sub["id"]))["spent_cents"] == 1.3125


async def test_a_sub_account_key_sees_its_own_live_spend_in_me(plane: Plane) -> None:
    first = await plane.create(spend_cap_cents=300, budget_period="daily")
    second = await plane.create(spend_cap_cents=300)
    await plane.settle(first, "req-1", 100_000_000, 5_000_000)
    body = (await plane.call("GET", "/v1/me", key=first["key"])).json()
    assert "key" not in body
    assert body["id"] == first["id"]
    assert body["spend"] == {
        "period_start": "2026-11-27T00:00:00Z",
        "resets_at": "2026-11-28T00:00:00Z",
        "spent_cents": 105,
        "remaining_cents": 195,
    }
    other = (await plane.call("GET", "/v1/me", key=second["key"])).json()
    assert other["spend"]["spent_cents"] == 0
