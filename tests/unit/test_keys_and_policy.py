"""Key generation and hashing, and what a key policy allows."""

from __future__ import annotations

import re

import pytest

from aigw.keys import KEY_PREFIX, generate_key, hash_key, looks_like_key, new_id
from aigw.policy import KeyPolicy


def test_keys_are_long_random_and_distinct() -> None:
    keys = {generate_key() for _ in range(1000)}
    assert len(keys) == 1000
    for key in keys:
        assert key.startswith(KEY_PREFIX)
        assert re.fullmatch(r"sk-aig-[A-Za-z0-9_-]{43}", key)
        assert looks_like_key(key)


def test_hash_is_stable_one_way_and_not_the_key() -> None:
    key = generate_key()
    assert hash_key(key) == hash_key(key)
    assert hash_key(key) != hash_key(generate_key())
    assert key not in hash_key(key)
    assert re.fullmatch(r"[0-9a-f]{64}", hash_key(key))


@pytest.mark.parametrize("value", ["", "sk-aig-", "sk-aig-short", "sk-live-" + "a" * 40])
def test_shape_check_rejects_non_keys(value: str) -> None:
    assert not looks_like_key(value)


def test_ids_have_their_prefix() -> None:
    assert re.fullmatch(r"sa_[0-9a-f]{24}", new_id("sa"))
    assert new_id("acct") != new_id("acct")


def policy(**fields: object) -> KeyPolicy:
    return KeyPolicy(
        kind="sub_account", parent_id="acct_1", sub_account_id="sa_1", name="c", **fields
    )  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("patterns", "model", "allowed"),
    [
        (("openai/gpt-5.4-mini",), "openai/gpt-5.4-mini", True),
        (("openai/gpt-5.4-mini",), "openai/gpt-5.4-mini-2026", False),
        (("openai/*",), "openai/gpt-5.4", True),
        (("openai/*",), "anthropic/claude-haiku-4.5", False),
        (("google/gemini-*-flash*",), "google/gemini-2.5-flash-lite", True),
        (("google/gemini-*-flash*",), "google/gemini-2.5-pro", False),
        (("*",), "anything/at-all", True),
        ((), "openai/gpt-5.4", False),
        (("OpenAI/*",), "openai/gpt-5.4", False),
    ],
)
def test_allow_list_globs(patterns: tuple[str, ...], model: str, allowed: bool) -> None:
    assert policy(allowed_models=patterns).allows(model) is allowed


def test_usable_respects_status_expiry_and_grace() -> None:
    assert policy().usable_at(100.0)
    assert not policy(status="disabled").usable_at(100.0)
    assert not policy(expires_at=100.0).usable_at(100.0)
    assert policy(key_expires_at=101.0).usable_at(100.0)
    assert not policy(key_expires_at=100.0).usable_at(100.5)


def test_policy_json_round_trip() -> None:
    original = policy(allowed_models=("openai/*",), rate_limit_rpm=60, key_expires_at=5.0)
    assert KeyPolicy.from_json(original.to_json()) == original
    assert original.owner_id == "sa_1"
