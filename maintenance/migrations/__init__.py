"""The ticket store's schema migrations (alembic), run by `TicketStore` when it opens."""
