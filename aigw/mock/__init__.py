"""A local OpenAI- and Anthropic-compatible provider with deterministic text and usage, for
demos (`aigw up --demo`, `aigw mock-provider`) and tests. See `aigw.mock.app` for the paths and
the test-control headers, `aigw.mock.text` for how tokens are counted."""

from aigw.mock.app import create_mock_app
from aigw.mock.server import MockServer, serve

__all__ = ["MockServer", "create_mock_app", "serve"]
