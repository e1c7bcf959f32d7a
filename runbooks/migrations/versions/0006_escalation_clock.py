"""escalation clock: when the sweep must next look at an incident, and under which policy

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("incident") as b:
        b.add_column(sa.Column("next_due_at", sa.DateTime(timezone=True), nullable=True))
        b.add_column(sa.Column("clock_policy", sa.String(), nullable=True))
    # Every incident already there is looked at by the next sweep (clock_policy NULL).


def downgrade() -> None:
    with op.batch_alter_table("incident") as b:
        b.drop_column("clock_policy")
        b.drop_column("next_due_at")
