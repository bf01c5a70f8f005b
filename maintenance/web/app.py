"""The crews' and workers' web app: server-rendered pages for phones and tablets and a JSON API
(OpenAPI at /api/openapi.json, docs at /api/docs), over the ticket store and the stops in InfluxDB.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from collector.config import Config
from collector.influxql import InfluxQL
from collector.sinks import Sink
from maintenance.store import TicketStore
from maintenance.web import api, pages
from maintenance.web.auth import MIN_SECRET_CHARS, LoginLimiter, Sessions, Tokens
from maintenance.web.core import Publisher, Refusal, Web

__all__ = ["create_app"]

_HERE: Final = Path(__file__).parent


def create_app(
    config: Config,
    store: TicketStore,
    publisher: Publisher,
    *,
    db_factory: Callable[[], InfluxQL],
    sink: Sink,
    tokens: Mapping[str, tuple[str, str | None]],
    secret_key: str | None,
    clock: Callable[[], float] = time.time,
    demo: bool = False,
) -> FastAPI:
    """The web app. `sink` must be entered (`async with sink:`) for as long as the app runs;
    `tokens` maps a token to (person's name, crew id, or None for a worker). Without a secret
    key it refuses to start, unless `demo` (then sessions end when the process does)."""
    if not secret_key:
        if not demo:
            raise ValueError(
                "the web app needs a secret key to sign its sessions: set AGUANTE_SECRET_KEY "
                "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
            )
        secret_key = secrets.token_urlsafe(32)
    if len(secret_key) < MIN_SECRET_CHARS:
        raise ValueError(
            f"AGUANTE_SECRET_KEY is {len(secret_key)} characters long; "
            f"give at least {MIN_SECRET_CHARS} random ones"
        )

    web = Web(
        config=config,
        store=store,
        publisher=publisher,
        db_factory=db_factory,
        sink=sink,
        tokens=Tokens(config, tokens),
        sessions=Sessions(secret_key, clock),
        limiter=LoginLimiter(clock),
        clock=clock,
        zone=ZoneInfo(config.timezone),
    )
    app = FastAPI(
        title=f"aguante — {config.factory}",
        summary="Maintenance tickets and stops of a worker-run factory.",
        openapi_url="/api/openapi.json",
        docs_url="/api/docs",
        redoc_url=None,
    )
    app.state.web = web
    app.mount("/static", StaticFiles(directory=_HERE / "static"), name="static")
    app.include_router(api.router)
    app.include_router(pages.router)

    @app.exception_handler(Refusal)
    async def refused(request: Request, exc: Refusal) -> Any:
        if request.url.path.startswith("/api/"):
            headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
            return JSONResponse({"detail": exc.message}, exc.status, headers=headers)
        return pages.error_page(request, exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error.get("loc", ()))
            problems.append(f"{where}: {error.get('msg', 'invalid')}")
        return JSONResponse({"detail": "; ".join(problems)}, 422)

    @app.get("/", include_in_schema=False)
    async def home() -> RedirectResponse:
        return RedirectResponse("/tickets", 303)

    return app
