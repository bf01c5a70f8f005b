"""The crews' and workers' web app (docs/maintenance.md): `create_app(...)` builds it."""

from maintenance.web.app import create_app

__all__ = ["create_app"]
