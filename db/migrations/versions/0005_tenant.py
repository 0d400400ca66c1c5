"""Jobs belong to tenants; idempotency keys are unique per tenant; keyset-paging indexes.

Existing rows go to the default tenant. `(created_at, id)` replaces the index on `created_at`
alone: it is the page boundary of keyset paging, with or without a tenant in front.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

from db.models import DEFAULT_TENANT, TENANT_MAX_CHARS

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# 0001 left the unique constraint on idempotency_key unnamed; SQLite's batch mode needs a name for it.
_NAMING = {"uq": "uq_%(table_name)s_%(column_0_name)s"}
_OLD_UNIQUE = {"postgresql": "jobs_idempotency_key_key", "sqlite": "uq_jobs_idempotency_key"}


def upgrade() -> None:
    old_unique = _OLD_UNIQUE[op.get_bind().dialect.name]
    with op.batch_alter_table("jobs", naming_convention=_NAMING) as jobs:
        jobs.add_column(sa.Column("tenant", sa.String(TENANT_MAX_CHARS), nullable=False, server_default=DEFAULT_TENANT))
        jobs.drop_constraint(old_unique, type_="unique")
        jobs.create_unique_constraint("uq_jobs_tenant_idempotency_key", ["tenant", "idempotency_key"])
        jobs.drop_index("ix_jobs_created_at")
        jobs.create_index("ix_jobs_created_id", ["created_at", "id"])
        jobs.create_index("ix_jobs_tenant_created_id", ["tenant", "created_at", "id"])


def downgrade() -> None:
    old_unique = _OLD_UNIQUE[op.get_bind().dialect.name]
    with op.batch_alter_table("jobs", naming_convention=_NAMING) as jobs:
        jobs.drop_index("ix_jobs_tenant_created_id")
        jobs.drop_index("ix_jobs_created_id")
        jobs.create_index("ix_jobs_created_at", ["created_at"])
        jobs.drop_constraint("uq_jobs_tenant_idempotency_key", type_="unique")
        jobs.create_unique_constraint(old_unique, ["idempotency_key"])
        jobs.drop_column("tenant")
