"""Partial index over unfinished jobs, in the sweeper's order.

The sweeper looks only at queued and running jobs, oldest first by priority; on a table of a
million mostly finished rows this index lets it read just the rows it returns.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UNFINISHED = sa.text("status IN ('queued', 'running')")


def upgrade() -> None:
    op.create_index(
        "ix_jobs_unfinished_priority_created",
        "jobs",
        ["priority", "created_at"],
        postgresql_where=UNFINISHED,
        sqlite_where=UNFINISHED,
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_unfinished_priority_created", table_name="jobs")
