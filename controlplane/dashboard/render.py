"""Rendering dashboard pages: the Jinja2 templates of this package (autoescaped), their filters,
and the headers every page carries.

Pages are never cached (they show live money) and may not be framed; the Content-Security-Policy
allows scripts, styles and everything else from the dashboard's own origin only, so the page
loads nothing from elsewhere and runs no inline script (the charts read their numbers from
`<script type="application/json">` blocks, which are data, not code).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse
from starlette.templating import Jinja2Templates

from controlplane.dashboard import formatting

PACKAGE_DIR = Path(__file__).parent
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        " object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(PACKAGE_DIR / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters |= {
        "dollars": formatting.dollars,
        "dollars_title": formatting.dollars_title,
        "percent": formatting.percent_text,
        "count": formatting.count,
        "script_json": formatting.script_json,
    }
    return environment


templates = Jinja2Templates(env=_environment())


def page(
    request: Request,
    template: str,
    context: Mapping[str, Any],
    status_code: int = 200,
    headers: Mapping[str, str] | None = None,
) -> HTMLResponse:
    response = templates.TemplateResponse(request, template, dict(context), status_code=status_code)
    response.headers.update(SECURITY_HEADERS | dict(headers or {}))
    return response
