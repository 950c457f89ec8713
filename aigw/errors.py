"""The OpenAI error envelope, shared by both planes (API.md §4 "Errors").

    GatewayError            one error the gateway itself answers, with status and code
    └─ built by the helpers below, one per row of the contract's table

Errors are raised where they are found and turned into a response only at the edge
(extproc's ImmediateResponse, the control plane's exception handler).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson


class GatewayError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        error_type: str,
        message: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.error_type = error_type
        self.message = message
        self.param = param
        self.headers = headers or {}
        self.extra = extra

    def body(self) -> dict[str, Any]:
        error = {"message": self.message, "type": self.error_type, "code": self.code}
        error["param"] = self.param
        error.update(self.extra)
        return {"error": error}

    def body_bytes(self) -> bytes:
        """JSON; a Decimal amount is written as a number (exact up to 15 significant digits)."""
        return orjson.dumps(self.body(), default=_decimal_as_number)


def _decimal_as_number(value: object) -> float:
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def invalid_request(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(400, "invalid_request", "invalid_request_error", message, param=param)


def request_too_large(limit: int) -> GatewayError:
    return GatewayError(
        413,
        "request_too_large",
        "invalid_request_error",
        f"The request body is larger than the gateway's limit of {limit} bytes.",
    )


def invalid_api_key(
    message: str = "Invalid API key. Pass an sk-aig- key as "
    "'Authorization: Bearer <key>' or 'x-api-key: <key>'.",
) -> GatewayError:
    return GatewayError(401, "invalid_api_key", "authentication_error", message)


def model_not_allowed(model: str) -> GatewayError:
    return GatewayError(
        403,
        "model_not_allowed",
        "permission_error",
        f"The model '{model}' is not in this key's list of allowed models.",
        param="model",
        model=model,
    )


def model_not_found(model: str, message: str | None = None) -> GatewayError:
    return GatewayError(
        404,
        "model_not_found",
        "invalid_request_error",
        message or f"The model '{model}' does not exist or is not available on this gateway.",
        param="model",
        model=model,
    )


def provider_not_configured(provider: str) -> GatewayError:
    return GatewayError(
        400,
        "provider_not_configured",
        "invalid_request_error",
        f"The provider '{provider}' has no API key on this gateway: the operator must set one "
        "in the configuration, or the parent account must attach its own provider key.",
        provider=provider,
    )


def unknown_url(method: str, path: str) -> GatewayError:
    return GatewayError(
        404, "unknown_url", "invalid_request_error", f"Invalid URL ({method} {path})."
    )


def gateway_unavailable(
    message: str = "The gateway cannot check limits right now; "
    "the request was not sent. Retry shortly.",
) -> GatewayError:
    return GatewayError(503, "gateway_unavailable", "api_error", message)
