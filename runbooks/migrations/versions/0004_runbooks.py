"""runbooks: lock leases, runbook starts, the kill switch, needs-human

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("remediationlock") as b:
        b.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("incident") as b:
        b.add_column(sa.Column("needs_human", sa.String(), nullable=True))
    with op.batch_alter_table("approval") as b:
        b.add_column(sa.Column("approvers", sa.JSON(), nullable=False, server_default="[]"))
        b.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        b.add_column(
            sa.Column("on_timeout", sa.String(), nullable=False, server_default="escalate")
        )
    op.create_table(
        "runbookrun",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("incident_id", sa.Integer(), nullable=False),
        sa.Column("runbook", sa.String(), nullable=False),
        sa.Column("decision", sa.String(), nullable=False),
        sa.Column("flow_run_id", sa.String(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(), nullable=True),
        sa.ForeignKeyConstraint(["incident_id"], ["incident.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("incident_id", "runbook", "decision", name="uq_runbook_run"),
    )
    op.create_index("ix_runbookrun_incident_id", "runbookrun", ["incident_id"])
    op.create_table(
        "automationpause",
        sa.Column("scope", sa.String(), nullable=False),
        sa.Column("comment", sa.String(), nullable=False),
        sa.Column("paused_by", sa.String(), nullable=False),
        sa.Column("paused_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("scope"),
    )


def downgrade() -> None:
    op.drop_table("automationpause")
    op.drop_index("ix_runbookrun_incident_id", table_name="runbookrun")
    op.drop_table("runbookrun")
    with op.batch_alter_table("approval") as b:
        b.drop_column("on_timeout")
        b.drop_column("expires_at")
        b.drop_column("approvers")
    with op.batch_alter_table("incident") as b:
        b.drop_column("needs_human")
    with op.batch_alter_table("remediationlock") as b:
        b.drop_column("expires_at")
