"""Persistence for textq: the jobs table, its migrations and the store API. No Celery, no torch."""

from db.engine import make_engine, redact_url, session_factory
from db.migrate import upgrade
from db.models import FINISHED_STATUSES, Job, JobStatus
from db.settings import DatabaseSettings

__all__ = [
    "FINISHED_STATUSES",
    "DatabaseSettings",
    "Job",
    "JobStatus",
    "make_engine",
    "redact_url",
    "session_factory",
    "upgrade",
]
