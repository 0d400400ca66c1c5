"""Batches in the OpenAI Batch API's shape: stored files in chunks, batches, and jobs that know their batch.

Files and batches belong to a tenant, as jobs do (0005): a tenant sees only its own.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

from db.models import DEFAULT_TENANT, TENANT_MAX_CHARS, JSONType, UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

IN_A_BATCH = sa.text("batch_id IS NOT NULL")
UNFINISHED_BATCH = sa.text("status IN ('validating', 'in_progress', 'finalizing', 'cancelling')")


def _tenant() -> sa.Column[str]:
    return sa.Column("tenant", sa.String(TENANT_MAX_CHARS), nullable=False, server_default=DEFAULT_TENANT)


def upgrade() -> None:
    op.create_table(
        "files",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("lines", sa.Integer(), nullable=False),
        _tenant(),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "file_chunks",
        sa.Column("file_id", sa.String(64), sa.ForeignKey("files.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("seq", sa.Integer(), primary_key=True),
        sa.Column("first_line", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
    )
    op.create_table(
        "batches",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("endpoint", sa.String(64), nullable=False),
        sa.Column("input_file_id", sa.String(64), nullable=False),
        _tenant(),
        sa.Column("completion_window", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("skip_invalid_lines", sa.Boolean(), nullable=False),
        sa.Column("webhook_url", sa.Text(), nullable=True),
        sa.Column("metadata", JSONType, nullable=True),
        sa.Column("errors", JSONType, nullable=True),
        sa.Column("output_file_id", sa.String(64), nullable=True),
        sa.Column("error_file_id", sa.String(64), nullable=True),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("loaded_lines", sa.Integer(), nullable=False),
        sa.Column("loaded", sa.Boolean(), nullable=False),
        sa.Column("completed", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("lease_owner", sa.String(64), nullable=True),
        sa.Column("lease_until", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        *(sa.Column(f"{state}_at", UTCDateTime(), nullable=True)
          for state in ("in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled")),
    )
    op.create_index("ix_batches_created_at", "batches", ["created_at"])
    op.create_index("ix_batches_tenant_created_id", "batches", ["tenant", "created_at", "id"])
    op.create_index("ix_batches_unfinished", "batches", ["status"],
                    postgresql_where=UNFINISHED_BATCH, sqlite_where=UNFINISHED_BATCH)
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("batch_id", sa.String(64), nullable=True))
        batch.add_column(sa.Column("batch_line", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("custom_id", sa.String(255), nullable=True))
    op.create_index("ix_jobs_batch_line", "jobs", ["batch_id", "batch_line"],
                    postgresql_where=IN_A_BATCH, sqlite_where=IN_A_BATCH)


def downgrade() -> None:
    op.drop_index("ix_jobs_batch_line", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:  # SQLite drops columns by rebuilding the table
        batch.drop_column("custom_id")
        batch.drop_column("batch_line")
        batch.drop_column("batch_id")
    op.drop_table("batches")
    op.drop_table("file_chunks")
    op.drop_table("files")
