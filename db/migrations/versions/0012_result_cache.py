"""Result cache: the `result_cache` table, and `jobs.cached_from` (the job whose output a cache hit reused).

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

from db.models import JSONType, UTCDateTime

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("cached_from", sa.Uuid(), nullable=True))
    op.create_table(
        "result_cache",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("model_version", sa.String(128), nullable=True),
        sa.Column("source_job_id", sa.Uuid(), nullable=False),
        sa.Column("output", JSONType, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_result_cache_model_created", "result_cache", ["model", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_result_cache_model_created", table_name="result_cache")
    op.drop_table("result_cache")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("cached_from")
