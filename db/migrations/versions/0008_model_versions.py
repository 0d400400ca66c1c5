"""Model versions, feedback, and the version that computed each job.

`model_versions`: the versions of fine-tuned models (one active per model); `feedback`: corrected
labels for finished classification jobs; `jobs.model_version`: the weights a job ran on.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

from db.models import JSONType, UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("model_version", sa.String(128), nullable=True))
    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("base", sa.Text(), nullable=False),
        sa.Column("data_hash", sa.String(80), nullable=False),
        sa.Column("labels", JSONType, nullable=False),
        sa.Column("metrics", JSONType, nullable=False),
        sa.Column("training_seconds", sa.Float(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("deployed_at", UTCDateTime(), nullable=True),
        sa.Column("deleted_at", UTCDateTime(), nullable=True),
        sa.UniqueConstraint("model", "version", name="uq_model_versions_model_version"),
    )
    op.create_index("ux_model_versions_active", "model_versions", ["model"], unique=True,
                    postgresql_where=sa.text("active"), sqlite_where=sa.text("active"))
    op.create_table(
        "feedback",
        sa.Column("job_id", sa.Uuid(), primary_key=True),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("model_version", sa.String(128), nullable=True),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("label", sa.String(255), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_feedback_model_created", "feedback", ["model", "created_at"])


def downgrade() -> None:
    op.drop_table("feedback")
    op.drop_table("model_versions")
    with op.batch_alter_table("jobs") as batch:  # SQLite drops a column by rebuilding the table
        batch.drop_column("model_version")
