"""outbox claims: several intake replicas on one database send each event once

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outboxevent") as b:
        # Which replica is sending the event, and until when; a replica that dies mid-send
        # leaves its claim to lapse and another sends the event.
        b.add_column(sa.Column("claimed_by", sa.String(), nullable=True))
        b.add_column(sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outboxevent") as b:
        b.drop_column("claimed_until")
        b.drop_column("claimed_by")
