"""The data-plane endpoints (API.md §4): the only method and path pairs extproc lets through.

Anything else answers 404 `unknown_url`, like OpenAI's "Invalid URL (POST /v1/foo)".
"""

from __future__ import annotations

from enum import Enum
from urllib.parse import unquote

from aigw.errors import unknown_url


class Endpoint(Enum):
    CHAT_COMPLETIONS = "/v1/chat/completions"
    COMPLETIONS = "/v1/completions"
    EMBEDDINGS = "/v1/embeddings"
    RESPONSES = "/v1/responses"
    MESSAGES = "/v1/messages"
    LIST_MODELS = "/v1/models"
    RETRIEVE_MODEL = "/v1/models/{model}"


_POSTED = (
    Endpoint.CHAT_COMPLETIONS,
    Endpoint.COMPLETIONS,
    Endpoint.EMBEDDINGS,
    Endpoint.RESPONSES,
    Endpoint.MESSAGES,
)
_ENDPOINTS = {("POST", endpoint.value): endpoint for endpoint in _POSTED}
_ENDPOINTS["GET", Endpoint.LIST_MODELS.value] = Endpoint.LIST_MODELS
_MODEL_PREFIX = "/v1/models/"


def match_endpoint(method: str, path: str) -> tuple[Endpoint, str]:
    """The endpoint of a request, and the model id for GET /v1/models/{model} ('' otherwise).

    The query string is ignored; a model id may hold a slash (`openai/gpt-5.4-mini`), escaped or
    not. Raises GatewayError 404 `unknown_url`.
    """
    path = path.partition("?")[0]
    endpoint = _ENDPOINTS.get((method, path))
    if endpoint is not None:
        return endpoint, ""
    if method == "GET" and path.startswith(_MODEL_PREFIX) and len(path) > len(_MODEL_PREFIX):
        return Endpoint.RETRIEVE_MODEL, unquote(path[len(_MODEL_PREFIX) :])
    raise unknown_url(method, path)
