"""What a web backend imports: the Client, the request/response contract and textq's errors."""

from producer.client import Client
from producer.contract import ClassifyRequest, JobView, SummarizeRequest
from producer.errors import (
    IdempotencyConflictError,
    InvalidJobError,
    JobNotFoundError,
    JobTimeoutError,
    TextqError,
)
from producer.registry import ModelSpec

__all__ = [
    "ClassifyRequest",
    "Client",
    "IdempotencyConflictError",
    "InvalidJobError",
    "JobNotFoundError",
    "JobTimeoutError",
    "JobView",
    "ModelSpec",
    "SummarizeRequest",
    "TextqError",
]
