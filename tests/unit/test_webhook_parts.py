"""Webhook pieces without servers: the retry schedule, the body of a delivery, sealed secrets,
the URL rules."""

from __future__ import annotations

import base64
import os
from datetime import UTC, datetime

import orjson
import pytest
from pydantic import ValidationError
from standardwebhooks import Webhook

from aigw.secrets_box import Keyring
from controlplane.dispatcher import DEFAULT_SCHEDULE, DispatchSettings, retry_delay
from controlplane.webhook_events import event_body
from controlplane.webhook_schemas import WebhookCreate
from controlplane.webhook_secrets import SecretBox, SecretUnavailable, generate_secret


def test_the_schedule_is_bounded_and_jittered() -> None:
    settings = DispatchSettings()
    assert retry_delay(1, settings, lambda: 0.0) == pytest.approx(5 * 0.8)
    assert retry_delay(1, settings, lambda: 1.0) == pytest.approx(5 * 1.2)
    assert retry_delay(len(DEFAULT_SCHEDULE), settings, lambda: 0.5) == DEFAULT_SCHEDULE[-1]
    assert retry_delay(len(DEFAULT_SCHEDULE) + 1, settings) is None  # then: failed
    assert 20 * 3600 < sum(DEFAULT_SCHEDULE) < 28 * 3600
    assert retry_delay(2, DispatchSettings(schedule=(0.01, 0.02), jitter=0)) == 0.02


def test_the_body_is_the_event_and_signs_as_standard_webhooks() -> None:
    at = datetime(2026, 11, 27, 10, 0, 0, 123000, tzinfo=UTC)
    body = event_body("sub_account.rate_limited", at, '{"limit": "rpm", "cents": 0.000001}')
    assert orjson.loads(body) == {
        "type": "sub_account.rate_limited",
        "timestamp": "2026-11-27T10:00:00Z",
        "data": {"limit": "rpm", "cents": 0.000001},
    }
    assert '"cents": 0.000001' in body  # numbers as stored, never through a float
    secret, now = generate_secret(), datetime.now(UTC)
    signature = Webhook(secret).sign("evt_1", now, body)
    headers = {
        "webhook-id": "evt_1",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
    }
    assert Webhook(secret).verify(body, headers)["type"] == "sub_account.rate_limited"


def test_secrets_are_sealed_per_endpoint() -> None:
    secret = generate_secret()
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 24
    box = SecretBox(Keyring.from_keys(os.urandom(32)))
    sealed = box.seal(secret, "wh_a")
    assert secret[6:] not in sealed and box.open(sealed, "wh_a") == secret
    with pytest.raises(SecretUnavailable):
        box.open(sealed, "wh_b")  # copied onto another endpoint
    with pytest.raises(SecretUnavailable):
        SecretBox(Keyring.from_keys(os.urandom(32))).open(sealed, "wh_a")
    with pytest.raises(SecretUnavailable):
        SecretBox(None).open(sealed, "wh_a")
    plain = SecretBox(None).seal(secret, "wh_a")
    assert box.open(plain, "wh_a") == secret  # still readable once a key is configured


@pytest.mark.parametrize(
    "url",
    ["https://hooks.example.com/x?token=1", "http://127.0.0.1:8000/", "HTTPS://EXAMPLE.COM"],
)
def test_good_urls(url: str) -> None:
    assert WebhookCreate(url=url, events=["*"]).url == url


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/",
        "https://u@example.com/",
        "https://u:p@example.com/",
        "https://example.com:99999/",
        "https://example.com:0/",
        "https://exa\tmple.com/",
        "https://example.com/\x00",
        "mailto:a@example.com",
        "https://[::1/",
    ],
)
def test_bad_urls(url: str) -> None:
    with pytest.raises(ValidationError):
        WebhookCreate(url=url, events=["*"])
