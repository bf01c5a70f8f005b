"""Tickets, their history, notes, readings, and the notification outbox.

Revision ID: 0001
Revises:
Create Date: 2026-05-20
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_OPEN = sa.text("status <> 'resolved'")


def _ticket_id(table: str) -> sa.Column[int]:
    return sa.Column(
        "ticket_id",
        sa.Integer,
        sa.ForeignKey("tickets.id", name=f"fk_{table}_ticket_id_tickets", ondelete="CASCADE"),
        nullable=False,
    )


def upgrade() -> None:
    op.create_table(
        "tickets",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("machine", sa.String, nullable=False),
        sa.Column("sector", sa.String, nullable=False),
        sa.Column("rule", sa.String, nullable=False),
        sa.Column("severity", sa.String, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("crew", sa.String),
        sa.Column("assignee", sa.String),
        sa.Column("opened_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
        sa.Column("resolved_ms", sa.BigInteger),
        sa.Column("condition_cleared_ms", sa.BigInteger),
        sa.CheckConstraint(
            "status IN ('open', 'acknowledged', 'in_progress', 'resolved')",
            name="ck_tickets_status",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_tickets"),
    )
    op.create_index(
        "uq_tickets_open_machine_rule",
        "tickets",
        ["machine", "rule"],
        unique=True,
        sqlite_where=_OPEN,
        postgresql_where=_OPEN,
    )
    op.create_index(
        "ix_tickets_machine_rule_resolved_ms", "tickets", ["machine", "rule", "resolved_ms"]
    )
    op.create_index("ix_tickets_opened_ms", "tickets", ["opened_ms"])

    op.create_table(
        "ticket_history",
        sa.Column("id", sa.Integer),
        _ticket_id("ticket_history"),
        sa.Column("at_ms", sa.BigInteger, nullable=False),
        sa.Column("actor", sa.String, nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("changes", sa.JSON, nullable=False),
        sa.Column("note", sa.Text),
        sa.PrimaryKeyConstraint("id", name="pk_ticket_history"),
    )
    op.create_index("ix_ticket_history_ticket_id_at_ms", "ticket_history", ["ticket_id", "at_ms"])

    op.create_table(
        "ticket_notes",
        sa.Column("id", sa.Integer),
        _ticket_id("ticket_notes"),
        sa.Column("at_ms", sa.BigInteger, nullable=False),
        sa.Column("actor", sa.String, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("parts", sa.Text),
        sa.Column("minutes", sa.Integer),
        sa.CheckConstraint("minutes IS NULL OR minutes > 0", name="ck_ticket_notes_minutes"),
        sa.PrimaryKeyConstraint("id", name="pk_ticket_notes"),
    )
    op.create_index("ix_ticket_notes_ticket_id_at_ms", "ticket_notes", ["ticket_id", "at_ms"])

    op.create_table(
        "ticket_readings",
        sa.Column("id", sa.Integer),
        _ticket_id("ticket_readings"),
        sa.Column("time_ms", sa.BigInteger, nullable=False),
        sa.Column("signal", sa.String, nullable=False),
        sa.Column("value", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ticket_readings"),
        sa.UniqueConstraint(
            "ticket_id", "signal", "time_ms", name="uq_ticket_readings_ticket_id_signal_time_ms"
        ),
    )

    op.create_table(
        "notice_outbox",
        sa.Column("id", sa.Integer),
        _ticket_id("notice_outbox"),
        sa.Column("target", sa.String, nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("next_attempt_ms", sa.BigInteger),
        sa.Column("last_attempt_ms", sa.BigInteger),
        sa.Column("sent_ms", sa.BigInteger),
        sa.Column("last_error", sa.Text),
        sa.CheckConstraint(
            "status IN ('pending', 'sent', 'failed')", name="ck_notice_outbox_status"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_notice_outbox"),
    )
    op.create_index(
        "ix_notice_outbox_status_next_attempt_ms", "notice_outbox", ["status", "next_attempt_ms"]
    )
    op.create_index("ix_notice_outbox_ticket_id", "notice_outbox", ["ticket_id"])


def downgrade() -> None:
    for table in ("notice_outbox", "ticket_readings", "ticket_notes", "ticket_history"):
        op.drop_table(table)
    op.drop_table("tickets")
