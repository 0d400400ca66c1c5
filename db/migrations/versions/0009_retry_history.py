"""Operator retries: the error a retried job had, and the attempts it used before (its history).

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

from db.models import UTCDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("previous_error", sa.Text(), nullable=True))
        batch.add_column(sa.Column("retried_attempts", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("retried_at", UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("retried_at")
        batch.drop_column("retried_attempts")
        batch.drop_column("previous_error")
