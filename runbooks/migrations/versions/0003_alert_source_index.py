"""alert: index (alertname, status) for the inhibition-source lookup of every post

Without it the intake scanned every firing alert on each post to find the few that could
inhibit (alertname="ModelServerDown" and the like): a storm got slower as it went.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_alert_alertname_status", "alert", ["alertname", "status"])


def downgrade() -> None:
    op.drop_index("ix_alert_alertname_status", table_name="alert")
