"""notifications: messages sent per channel, once-per-incident notices, acknowledgements

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("incident") as b:
        b.add_column(sa.Column("acknowledged_at", sa.DateTime(timezone=True), nullable=True))
        b.add_column(sa.Column("acknowledged_by", sa.String(), nullable=True))
    op.create_index("ix_incident_status_acknowledged", "incident", ["status", "acknowledged_at"])
    op.create_table(
        "notification",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("incident_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("channel", sa.String(), nullable=False),
        sa.Column("address", sa.String(), nullable=False, server_default=""),
        sa.Column("status", sa.String(), nullable=False, server_default="sent"),
        sa.Column("external_id", sa.String(), nullable=True),
        sa.Column("thread_id", sa.String(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("error", sa.String(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["incident_id"], ["incident.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_notification_incident_id", "notification", ["incident_id"])
    op.create_table(
        "incidentnotice",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("incident_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["incident_id"], ["incident.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("incident_id", "key", name="uq_incident_notice"),
    )
    op.create_index("ix_incidentnotice_incident_id", "incidentnotice", ["incident_id"])


def downgrade() -> None:
    op.drop_index("ix_incidentnotice_incident_id", table_name="incidentnotice")
    op.drop_table("incidentnotice")
    op.drop_index("ix_notification_incident_id", table_name="notification")
    op.drop_table("notification")
    op.drop_index("ix_incident_status_acknowledged", table_name="incident")
    with op.batch_alter_table("incident") as b:
        b.drop_column("acknowledged_by")
        b.drop_column("acknowledged_at")
