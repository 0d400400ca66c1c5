"""A released job's earliest next try.

A job released for a retry (out of memory, or a runner's Retry) goes back to queued with
`retry_at`; the claim leaves it alone until then.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

from db.models import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("retry_at", UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:  # SQLite drops a column by rebuilding the table
        batch.drop_column("retry_at")
