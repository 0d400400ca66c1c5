"""A batch's jobs by status: finding an unfinished one and counting them stay index reads at a million lines.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

IN_A_BATCH = sa.text("batch_id IS NOT NULL")


def upgrade() -> None:
    op.create_index("ix_jobs_batch_status", "jobs", ["batch_id", "status"],
                    postgresql_where=IN_A_BATCH, sqlite_where=IN_A_BATCH)


def downgrade() -> None:
    op.drop_index("ix_jobs_batch_status", table_name="jobs")
