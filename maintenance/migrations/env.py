"""How alembic reaches the ticket store: the connection `TicketStore.migrate` hands over, inside
its own transaction (and lock), or a URL for a developer's `alembic` command line."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from maintenance.store import METADATA


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=METADATA,
        render_as_batch=True,  # SQLite alters a table by copying it; batch mode writes that
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


given = context.config.attributes.get("connection")
if given is not None:
    _run(given)
else:
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit(
            "no ticket store to migrate: open it with TicketStore(url), which migrates it, "
            "or set sqlalchemy.url in the alembic config"
        )
    with create_engine(url).connect() as connection:
        _run(connection)
        connection.commit()
