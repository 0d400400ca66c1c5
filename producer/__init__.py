"""What a web backend imports: the Client, the request/response contract and textq's errors."""

from producer.client import Client
from producer.contract import AnswerRequest, ClassifyRequest, EmbedRequest, JobView, SummarizeRequest, TranslateRequest
from producer.errors import (
    IdempotencyConflictError,
    InvalidJobError,
    JobNotFoundError,
    JobTimeoutError,
    TextqError,
)
from producer.registry import ModelSpec

__all__ = [
    "AnswerRequest",
    "ClassifyRequest",
    "Client",
    "EmbedRequest",
    "IdempotencyConflictError",
    "InvalidJobError",
    "JobNotFoundError",
    "JobTimeoutError",
    "JobView",
    "ModelSpec",
    "SummarizeRequest",
    "TextqError",
    "TranslateRequest",
]
