"""close the loop: reopening, the post-mortem on the incident, root-cause labels

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("incident") as b:
        b.add_column(sa.Column("reopened_at", sa.DateTime(timezone=True), nullable=True))
        b.add_column(sa.Column("onset_at", sa.DateTime(timezone=True), nullable=True))
        b.add_column(sa.Column("reopened_count", sa.Integer(), nullable=False, server_default="0"))
        b.add_column(sa.Column("postmortem", sa.JSON(), nullable=True))
        b.add_column(sa.Column("postmortem_accepted_by", sa.String(), nullable=True))
    # The report reads incidents by when they opened.
    op.create_index("ix_incident_opened_at", "incident", ["opened_at"])
    # What was there: onset from each incident's first alert that carried a startsAt (a
    # generic alert without one is stored at 1970-01-01, the dedup placeholder).
    op.execute(
        "UPDATE incident SET onset_at = (SELECT min(alert.starts_at) FROM alert "
        "WHERE alert.incident_id = incident.id AND alert.starts_at > '1970-01-02')"
    )
    op.create_table(
        "rootcauselabel",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("incident_id", sa.Integer(), nullable=False),
        sa.Column("root_cause", sa.String(), nullable=False),
        sa.Column("component", sa.String(), nullable=False, server_default=""),
        sa.Column("confidence", sa.Float(), nullable=False, server_default="1.0"),
        sa.Column("labeled_by", sa.String(), nullable=False),
        sa.Column("comment", sa.String(), nullable=False, server_default=""),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["incident_id"], ["incident.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_rootcauselabel_incident_id", "rootcauselabel", ["incident_id"])


def downgrade() -> None:
    op.drop_index("ix_rootcauselabel_incident_id", "rootcauselabel")
    op.drop_table("rootcauselabel")
    op.drop_index("ix_incident_opened_at", "incident")
    with op.batch_alter_table("incident") as b:
        for c in (
            "postmortem_accepted_by",
            "postmortem",
            "onset_at",
            "reopened_count",
            "reopened_at",
        ):
            b.drop_column(c)
