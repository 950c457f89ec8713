"""The dashboard at `/dashboard`: server-rendered pages for a parent account's people (spend
against caps, usage by model and day, top customers, the request log), signed in with the
parent key. See docs/dashboard.md."""

from controlplane.dashboard.routes import router

__all__ = ["router"]
