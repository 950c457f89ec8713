"""Webhook signing secrets: generated once, shown once, stored sealed.

    secret = generate_secret()                    # "whsec_" + base64 of 24 random bytes
    box = secret_box(config)                      # the master key of `aigw.secrets_box`
    stored = box.seal(secret, endpoint_id)        # what the database holds
    box.open(stored, endpoint_id) == secret

Sealing is the BYOK provider keys' (`aigw.secrets_box.Keyring`): AES-256-GCM under the master
key `secrets_key` (or the one `aigw up` keeps in `data_dir/secrets.key`), the token naming the
key that sealed it (so `secrets_previous_keys` still open it after a rotation), with
`webhook-secret/<endpoint id>` as associated data: a token copied onto another endpoint does not
open. Without any master key (a control plane started by hand without one) the secret is
stored as `plain:<secret>` and a warning is logged once; such rows keep working after a key is
configured. Secrets are never logged.
"""

from __future__ import annotations

import base64
import logging
import secrets

from aigw.config import GatewayConfig
from aigw.secrets_box import Keyring, SecretsError

log = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 24
_PLAIN = "plain:"
_warned = False


class SecretUnavailable(Exception):
    """A stored secret cannot be opened (sealed with a master key not configured)."""


def generate_secret() -> str:
    """`whsec_` + base64 of 24 CSPRNG bytes (Standard Webhooks: 24 to 64 bytes)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def _context(endpoint_id: str) -> str:
    return f"webhook-secret/{endpoint_id}"


class SecretBox:
    """Seals and opens endpoint secrets; without a keyring they are stored in the clear."""

    def __init__(self, keyring: Keyring | None) -> None:
        self._keyring = keyring

    @property
    def encrypts(self) -> bool:
        return self._keyring is not None

    def seal(self, secret: str, endpoint_id: str) -> str:
        if self._keyring is None:
            _warn_plain()
            return _PLAIN + secret
        return self._keyring.encrypt(secret, _context(endpoint_id))

    def open(self, stored: str, endpoint_id: str) -> str:
        if stored.startswith(_PLAIN):
            return stored[len(_PLAIN) :]
        if self._keyring is None:
            raise SecretUnavailable(f"the secret of {endpoint_id} is sealed; no master key is set")
        try:
            return self._keyring.decrypt(stored, _context(endpoint_id))
        except SecretsError as exc:
            raise SecretUnavailable(f"the secret of {endpoint_id}: {exc}") from None


def secret_box(config: GatewayConfig) -> SecretBox:
    """The box for a configuration (its master key, if any)."""
    return SecretBox(Keyring.from_config(config))


def _warn_plain() -> None:
    global _warned
    if not _warned:
        _warned = True
        log.warning("no master key (secrets_key): webhook secrets are stored unencrypted")
