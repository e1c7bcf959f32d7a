"""triage: suppression, classification, routing, criticality; silences

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # batch_alter_table: SQLite cannot ALTER most things in place; Alembic copies the table.
    with op.batch_alter_table("incident") as b:
        b.add_column(sa.Column("category", sa.String(), nullable=True))
        b.add_column(sa.Column("criticality", sa.Float(), nullable=True))
        b.add_column(sa.Column("route", sa.JSON(), nullable=True))
        b.add_column(sa.Column("context", sa.JSON(), nullable=True))
        b.add_column(sa.Column("last_alert_at", sa.DateTime(timezone=True), nullable=True))
        b.add_column(sa.Column("triage_run", sa.String(), nullable=True))
    with op.batch_alter_table("alert") as b:
        b.add_column(sa.Column("suppressed_reason", sa.String(), nullable=True))
        b.add_column(sa.Column("category", sa.String(), nullable=True))
        b.add_column(sa.Column("type", sa.String(), nullable=True))
        b.create_index("ix_alert_received_at", ["received_at"])
    op.create_table(
        "silence",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("matchers", sa.JSON(), nullable=False),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(), nullable=False),
        sa.Column("comment", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_silence_ends_at", "silence", ["ends_at"])


def downgrade() -> None:
    op.drop_index("ix_silence_ends_at", table_name="silence")
    op.drop_table("silence")
    with op.batch_alter_table("alert") as b:
        b.drop_index("ix_alert_received_at")
        b.drop_column("type")
        b.drop_column("category")
        b.drop_column("suppressed_reason")
    with op.batch_alter_table("incident") as b:
        for c in ("triage_run", "last_alert_at", "context", "route", "criticality", "category"):
            b.drop_column(c)
