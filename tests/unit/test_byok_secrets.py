"""The master key and sealed secrets (`aigw.secrets_box`) and their configuration keys."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from aigw.config import ConfigError, parse_config
from aigw.secrets_box import (
    KEY_FILE,
    Keyring,
    SecretsError,
    generate_master_key,
    key_id,
    provider_key_context,
    token_key_id,
    with_secrets_key,
)

SECRET = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789"
CONTEXT = provider_key_context("acct_1", "openai")


def keyring(*keys: bytes) -> Keyring:
    return Keyring.from_keys(keys[0], keys[1:])


def test_a_sealed_secret_opens_only_with_its_key_and_context() -> None:
    key = os.urandom(32)
    ring = keyring(key)

    token = ring.encrypt(SECRET, CONTEXT)

    assert SECRET not in token and SECRET[-12:] not in token
    assert base64.b64encode(SECRET.encode()).decode()[:16] not in token
    assert token.startswith(f"v1:{key_id(key)}:")
    assert ring.decrypt(token, CONTEXT) == SECRET
    assert ring.encrypt(SECRET, CONTEXT) != token  # a fresh nonce every time
    with pytest.raises(SecretsError, match="tampered or moved"):
        ring.decrypt(token, provider_key_context("acct_2", "openai"))
    with pytest.raises(SecretsError, match="tampered or moved"):
        ring.decrypt(token, provider_key_context("acct_1", "anthropic"))
    tampered = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    with pytest.raises(SecretsError):
        ring.decrypt(tampered, CONTEXT)


def test_an_unknown_key_id_is_named_and_the_key_never_shown() -> None:
    old, new = os.urandom(32), os.urandom(32)
    token = keyring(old).encrypt(SECRET, CONTEXT)

    with pytest.raises(SecretsError) as raised:
        keyring(new).decrypt(token, CONTEXT)

    assert key_id(old) in str(raised.value) and key_id(new) in str(raised.value)
    assert base64.b64encode(old).decode() not in str(raised.value)
    with pytest.raises(SecretsError, match="not a sealed secret"):
        keyring(new).decrypt("plaintext-key", CONTEXT)


def test_rotation_opens_old_tokens_and_seals_with_the_new_key() -> None:
    old, new = os.urandom(32), os.urandom(32)
    token = keyring(old).encrypt(SECRET, CONTEXT)
    rotating = keyring(new, old)

    assert rotating.decrypt(token, CONTEXT) == SECRET
    resealed = rotating.encrypt(SECRET, CONTEXT)
    assert token_key_id(resealed) == key_id(new) == rotating.primary_id
    assert keyring(new).decrypt(resealed, CONTEXT) == SECRET


def test_key_id_reveals_nothing_and_is_stable() -> None:
    key = os.urandom(32)
    assert key_id(key) == key_id(key)
    assert len(key_id(key)) == 8
    assert key_id(key) not in key.hex()


def test_config_takes_a_base64_master_key_and_hides_it() -> None:
    key = generate_master_key()
    config = parse_config(f"secrets_key: {key}\nsecrets_previous_keys: ['{generate_master_key()}']")

    assert config.secrets_key == key
    assert key not in repr(config)
    assert parse_config("secrets_key: ''").secrets_key is None
    assert parse_config("secrets_key: ${AIGW_TEST_UNSET_VARIABLE}").secrets_key is None


@pytest.mark.parametrize(
    "text",
    [
        "secrets_key: not-base64!",
        f"secrets_key: {base64.b64encode(os.urandom(16)).decode()}",
        "secrets_previous_keys: [short]",
    ],
)
def test_a_bad_master_key_stops_loading_naming_the_key(text: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(text, "gateway.yaml")
    message = str(raised.value)
    assert message.startswith("gateway.yaml: secrets_")
    assert "32 random bytes in base64" in message and "os.urandom(32)" in message
    assert text.split(": ", 1)[1] not in message


def test_aigw_up_generates_the_key_once_into_the_data_dir(tmp_path: Path) -> None:
    config = parse_config(f"data_dir: {tmp_path / 'data'}")

    first = with_secrets_key(config)
    second = with_secrets_key(config)

    path = tmp_path / "data" / KEY_FILE
    assert first.secrets_key and first.secrets_key == second.secrets_key
    assert path.read_text().strip() == first.secrets_key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(base64.b64decode(first.secrets_key)) == 32
    # A process started by hand finds the same key there.
    found = Keyring.from_config(config)
    assert found is not None
    assert found.primary_id == key_id(base64.b64decode(first.secrets_key))


def test_a_configured_key_wins_and_no_file_is_written(tmp_path: Path) -> None:
    key = generate_master_key()
    config = parse_config(f"data_dir: {tmp_path}\nsecrets_key: {key}")

    assert with_secrets_key(config).secrets_key == key
    assert not (tmp_path / KEY_FILE).exists()
    assert Keyring.from_config(parse_config(f"data_dir: {tmp_path}")) is None


def test_a_damaged_key_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE).write_text("garbage\n")
    with pytest.raises(SecretsError, match="32 random bytes"):
        with_secrets_key(parse_config(f"data_dir: {tmp_path}"))
