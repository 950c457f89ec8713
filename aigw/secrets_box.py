"""Secrets at rest: AES-256-GCM under the operator's master key (`secrets_key`).

    Keyring.from_config(config) -> Keyring | None   the configured keys (or data_dir/secrets.key)
    keyring.encrypt(plaintext, context) -> str      `v1:<key id>:<base64url(nonce ‖ ciphertext)>`
    keyring.decrypt(token, context) -> str          raises `SecretsError`
    with_secrets_key(config) -> GatewayConfig       `aigw up`: generate the key on first start

A token names the key that sealed it (`key_id`: the first 8 hex digits of a SHA-256 of the key,
which reveals nothing of it), so a keyring holding the current key and earlier ones
(`secrets_previous_keys`) opens tokens of any of them while keys are rotated; new tokens are
always sealed with the current key. `context` (e.g. `provider-key/acct_…/openai`) is bound to the
token as associated data: a token copied to another account or provider does not open.

The master key is never logged and never appears in an error message.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from aigw.config import MASTER_KEY_BYTES, GatewayConfig, decode_master_key

log = logging.getLogger(__name__)

KEY_FILE = "secrets.key"
"""The generated master key of an `aigw up` without `secrets_key`, in `data_dir` (mode 0600)."""
_VERSION = "v1"
_NONCE_BYTES = 12


class SecretsError(Exception):
    """A token that cannot be opened: unknown key id, wrong context, tampered or malformed."""


def key_id(key: bytes) -> str:
    """The public name of a master key, stored in every token it seals."""
    return hashlib.sha256(b"aigw-secrets-key-id\x00" + key).hexdigest()[:8]


def generate_master_key() -> str:
    """A new master key, as the base64 text `secrets_key` takes."""
    return base64.b64encode(os.urandom(MASTER_KEY_BYTES)).decode("ascii")


def provider_key_context(parent_id: str, provider: str) -> str:
    """The associated data that binds a provider key's token to its parent and provider."""
    return f"provider-key/{parent_id}/{provider}"


@dataclass(frozen=True, slots=True)
class Keyring:
    """The current master key (seals) and earlier ones (open only)."""

    primary_id: str
    _ciphers: dict[str, AESGCM] = field(repr=False)

    @classmethod
    def from_keys(cls, primary: bytes, previous: tuple[bytes, ...] = ()) -> Keyring:
        ciphers = {key_id(key): AESGCM(key) for key in previous}
        ciphers[key_id(primary)] = AESGCM(primary)
        return cls(key_id(primary), ciphers)

    @classmethod
    def from_config(cls, config: GatewayConfig) -> Keyring | None:
        """`secrets_key` (+ `secrets_previous_keys`), else the key `aigw up` generated in the
        data dir, else None (provider keys can then be neither stored nor read)."""
        text = config.secrets_key or _read_key_file(config.data_path / KEY_FILE)
        if not text:
            return None
        previous = tuple(decode_master_key(key) for key in config.secrets_previous_keys)
        return cls.from_keys(decode_master_key(text), previous)

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._ciphers)

    def encrypt(self, plaintext: str, context: str) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._ciphers[self.primary_id].encrypt(
            nonce, plaintext.encode("utf-8"), context.encode("utf-8")
        )
        payload = base64.urlsafe_b64encode(nonce + sealed).decode("ascii")
        return f"{_VERSION}:{self.primary_id}:{payload}"

    def decrypt(self, token: str, context: str) -> str:
        kid = token_key_id(token)
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise SecretsError(
                f"sealed with master key {kid}, which is not configured "
                f"(configured: {', '.join(self._ciphers)})"
            )
        try:
            raw = base64.urlsafe_b64decode(token.split(":", 2)[2])
            opened = cipher.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], context.encode("utf-8"))
        except (InvalidTag, ValueError) as exc:
            raise SecretsError(f"does not open with master key {kid} (tampered or moved)") from exc
        return opened.decode("utf-8")


def token_key_id(token: str) -> str:
    """The key id a token was sealed with; SecretsError when it is not a token."""
    version, _, rest = token.partition(":")
    kid, _, payload = rest.partition(":")
    if version != _VERSION or not kid or not payload:
        raise SecretsError("not a sealed secret")
    return kid


def with_secrets_key(config: GatewayConfig) -> GatewayConfig:
    """`config` with a master key: the configured one, else `data_dir/secrets.key`, created
    (mode 0600) with a new random key on the first start."""
    if config.secrets_key:
        return config
    path = config.data_path / KEY_FILE
    text = _read_key_file(path)
    if text is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        text = generate_master_key()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another start won the race: use its key
            text = _read_key_file(path) or text
        else:
            with os.fdopen(fd, "w", encoding="ascii") as file:
                file.write(text + "\n")
            log.info("generated a master key for provider keys in %s", path)
    return config.model_copy(update={"secrets_key": text})


def _read_key_file(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    if not text:
        return None
    try:
        decode_master_key(text)
    except ValueError as exc:
        raise SecretsError(f"{path}: {exc}") from None
    return text
