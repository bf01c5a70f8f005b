"""Fixtures for the maintenance tests: a ticket store on SQLite and on the real PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

from maintenance.store import TicketStore

# The server the PostgreSQL tests use (a throwaway database each): trust auth on loopback here.
POSTGRES_URL = os.environ.get(
    "AGUANTE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture(scope="session")
def postgres_admin() -> str:
    """The URL of a database to create and drop test databases from; skips when unreachable."""
    try:
        psycopg.connect(POSTGRES_URL, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[0]
        pytest.skip(f"no PostgreSQL at {POSTGRES_URL} (AGUANTE_TEST_POSTGRES_URL): {reason}")
    return POSTGRES_URL


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of an empty ticket store of this test's own (nothing migrated yet)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'tickets.db'}"
        return
    admin: str = request.getfixturevalue("postgres_admin")
    name = f"aguante_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_url(admin).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture
def store(store_url: str) -> Iterator[TicketStore]:
    with TicketStore(store_url) as opened:
        yield opened
