"""Gateway configuration: YAML read raw, `${ENV}` expanded, checked against the known keys and
compiled into typed, immutable objects (API.md §7).

A bad file never half-loads: `load_config` raises `ConfigError` whose message names the file and
the dotted key at fault (`config/gateway.yaml: tiers.free.spend_cap_cent: unknown key`).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from aigw.redis_client import check_url as check_redis_url

DEFAULT_CONFIG_PATH = Path("config/gateway.yaml")
ENV_CONFIG_VAR = "AIGW_CONFIG"
RUNTIME_CONFIG_VAR = "AIGW_CONFIG_JSON"
BudgetPeriod = Literal["monthly", "weekly", "daily", "total"]
AuthStyle = Literal["bearer", "x-api-key"]

_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
MASTER_KEY_BYTES = 32
GENERATE_MASTER_KEY = (
    'python -c "import os,base64;print(base64.b64encode(os.urandom(32)).decode())"'
)


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    controlplane_port: int = Field(8081, ge=1, le=65535)
    extproc_port: int = Field(50051, ge=1, le=65535)
    envoy_admin_port: int = Field(9901, ge=1, le=65535)
    # Where Envoy finds its upstreams, `host:port` each (docs/deployment.md). Empty: this host,
    # on `extproc_port` / `controlplane_port`. Several extproc endpoints, or one DNS name that
    # resolves to several replicas, are balanced over.
    extproc_endpoints: tuple[str, ...] = ()
    controlplane_endpoint: str = ""

    @field_validator("extproc_endpoints")
    @classmethod
    def _check_extproc_endpoints(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for endpoint in value:
            split_endpoint(endpoint)
        return value

    @field_validator("controlplane_endpoint")
    @classmethod
    def _check_controlplane_endpoint(cls, value: str) -> str:
        if value:
            split_endpoint(value)
        return value


class ProviderConfig(_Strict):
    """One upstream: where it lives, how it authenticates, the platform's own key (may be empty)."""

    base_url: str
    auth: AuthStyle = "bearer"
    api_key: str = ""
    models: tuple[str, ...] = ()
    ca_file: str | None = None

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError("must not carry credentials, a query or a fragment")
        return value.rstrip("/")

    @property
    def scheme(self) -> str:
        return urlsplit(self.base_url).scheme

    @property
    def hostname(self) -> str:
        return urlsplit(self.base_url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.base_url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def base_path(self) -> str:
        """The path prefix every request is rewritten under, without a trailing slash."""
        return urlsplit(self.base_url).path.rstrip("/")


class TierConfig(_Strict):
    """Defaults for sub-accounts created with this tier; explicit fields win."""

    spend_cap_cents: int | None = Field(None, ge=0)
    budget_period: BudgetPeriod = "monthly"
    rate_limit_rpm: int | None = Field(None, ge=1)
    rate_limit_rpd: int | None = Field(None, ge=1)
    rate_limit_tpm: int | None = Field(None, ge=1)
    allowed_models: tuple[str, ...] = ("*",)
    byok: bool = True


class PriceConfig(_Strict):
    """USD per million tokens; Decimal so no price is ever a binary float."""

    input: Decimal = Field(ge=0)
    cached_input: Decimal | None = Field(None, ge=0)
    output: Decimal = Field(Decimal(0), ge=0)
    max_output_tokens: int | None = Field(None, ge=1)


class GatewayConfig(_Strict):
    server: ServerConfig = ServerConfig()
    redis_url: str | None = None
    database_url: str | None = None
    data_dir: str = ".aigw"
    fee_percent: Decimal = Field(Decimal(5), ge=0, le=100)
    max_request_bytes: int = Field(10 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    providers: dict[str, ProviderConfig] = {}
    tiers: dict[str, TierConfig] = {}
    pricing: dict[str, PriceConfig] = {}
    # The master key that encrypts BYOK provider keys at rest (docs/provider-keys.md): base64 of
    # 32 random bytes. Empty: `aigw up` keeps a generated one in `data_dir/secrets.key`.
    secrets_key: str | None = Field(None, repr=False)
    # Earlier master keys, still accepted for decryption while keys are rotated.
    secrets_previous_keys: tuple[str, ...] = Field((), repr=False)
    # `text` for a terminal, `json` (one object a line) for containers; $AIGW_LOG_FORMAT wins.
    log_format: Literal["text", "json"] = "text"

    @field_validator("redis_url", "database_url")
    @classmethod
    def _blank_is_embedded(cls, value: str | None) -> str | None:
        return value.strip() or None if value else None

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        """One server (`redis://`…) or a Redis Cluster (`redis+cluster://`, docs/scaling.md)."""
        return check_redis_url(value) if value else None

    @field_validator("secrets_key")
    @classmethod
    def _check_secrets_key(cls, value: str | None) -> str | None:
        value = value.strip() if value else ""
        if not value:
            return None
        decode_master_key(value)
        return value

    @field_validator("secrets_previous_keys")
    @classmethod
    def _check_previous_keys(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        keys = tuple(key.strip() for key in value if key and key.strip())
        for key in keys:
            decode_master_key(key)
        return keys

    @field_validator("providers", "tiers")
    @classmethod
    def _check_names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            if not _NAME_PATTERN.match(name):
                raise ValueError(f"{name!r} is not a valid name (a-z, 0-9, - and _)")
        return value

    @field_validator("pricing")
    @classmethod
    def _check_priced_models(cls, value: dict[str, PriceConfig]) -> dict[str, PriceConfig]:
        for model in value:
            if "/" not in model:
                raise ValueError(f"{model!r} must be written provider/model")
        return value

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()


def split_endpoint(endpoint: str) -> tuple[str, int]:
    """`(host, port)` of `host:port` (`[v6]:port` for IPv6); ValueError naming what is wrong."""
    host, colon, port = endpoint.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not colon or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{endpoint!r} must be host:port")
    return host, int(port)


def decode_master_key(text: str) -> bytes:
    """The 32 bytes of a base64 master key; ValueError (never showing the value) otherwise."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != MASTER_KEY_BYTES:
        raise ValueError(
            f"must be {MASTER_KEY_BYTES} random bytes in base64; generate one with: "
            + GENERATE_MASTER_KEY
        )
    return key


def expand_env(text: str, environ: dict[str, str] | os._Environ[str] = os.environ) -> str:
    """Replace `${NAME}` (or `${NAME:-default}`) with the environment's value, '' when unset."""

    def replace(match: re.Match[str]) -> str:
        value = environ.get(match.group(1))
        if value:
            return value
        return match.group(2) or ""

    return _ENV_PATTERN.sub(replace, text)


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The file to read: `--config`, else `$AIGW_CONFIG`, else `config/gateway.yaml`."""
    if explicit:
        return Path(explicit)
    return Path(os.environ.get(ENV_CONFIG_VAR) or DEFAULT_CONFIG_PATH)


def parse_config(text: str, source: str = "<config>") -> GatewayConfig:
    """Check and compile YAML text; raise ConfigError naming `source` and the key at fault."""
    try:
        raw = yaml.safe_load(expand_env(text))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys")
    try:
        return GatewayConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(source, exc)) from None


def load_config(path: str | os.PathLike[str] | None = None) -> GatewayConfig:
    """Read the configuration file chosen by `config_path`."""
    file = config_path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read the configuration: {exc.strerror}") from None
    return parse_config(text, str(file))


def runtime_config(path: str | os.PathLike[str] | None = None) -> GatewayConfig:
    """The configuration of a process started by `aigw up`.

    The supervisor resolves the file once (embedded database URLs, `--demo` providers) and hands
    the result to its children as JSON in `$AIGW_CONFIG_JSON`; a process started by hand reads the
    file as usual.
    """
    handed_down = os.environ.get(RUNTIME_CONFIG_VAR)
    if handed_down:
        return GatewayConfig.model_validate_json(handed_down)
    return load_config(path)


def _describe(source: str, exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
        lines.append(f"{source}: {key}: {message}")
    return "\n".join(lines)
