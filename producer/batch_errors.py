"""The errors of batches and their files. Each carries the HTTP status the gateway answers with."""

from __future__ import annotations

from producer.errors import TextqError


class BatchError(TextqError):
    """Base of the batch errors; `status_code` is the gateway's answer, `code` and `param` the OpenAI error's."""

    status_code = 400
    code = "invalid_request"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class BatchInputError(BatchError, ValueError):
    """A file or batch request broke a rule (named in the message); nothing was stored or enqueued."""


class FileTooLargeError(BatchInputError):
    """An upload is over TEXTQ_BATCH_MAX_FILE_BYTES or TEXTQ_BATCH_MAX_LINES; nothing was stored."""

    status_code = 413
    code = "file_too_large"


class BatchNotFoundError(BatchError, LookupError):
    """No batch or file has this id (never created, or deleted)."""

    status_code = 404
    code = "not_found"


class BatchStateError(BatchError, RuntimeError):
    """The batch is in a state that does not allow this (e.g. cancelling a finished batch)."""

    status_code = 409
    code = "invalid_state"


__all__ = ["BatchError", "BatchInputError", "BatchNotFoundError", "BatchStateError", "FileTooLargeError"]
