"""One line of a batch input file: `{"custom_id", "method": "POST", "url": "/v1/jobs", "body": {a job request}}`.

`check_line` turns a line into the job it asks for, or into the reason it cannot be one (with its
line number and custom_id); `CustomIdSeen` finds repeated custom_ids in bounded memory.
"""

from __future__ import annotations

import hashlib
import json
from array import array
from dataclasses import dataclass
from typing import Any

from producer.contract import job_input_of, parse_request, resolve_model
from producer.errors import InvalidJobError
from producer.limits import Limits
from producer.registry import Registry

BATCH_ENDPOINT = "/v1/jobs"
MAX_CUSTOM_ID_CHARS = 255
_LINE_FIELDS = ("custom_id", "method", "url", "body")
# Set once per batch, so a line may not set them: the batch's priority and completion window rule
# its jobs, and its custom_ids deduplicate it.
_BATCH_LEVEL_FIELDS = ("priority", "timeout", "idempotency_key", "webhook_url")


@dataclass(frozen=True, slots=True)
class ValidLine:
    number: int
    custom_id: str
    model: str
    task: str
    input: dict[str, Any]


@dataclass(frozen=True, slots=True)
class BadLine:
    number: int
    custom_id: str | None
    code: str
    param: str | None
    problem: str

    @property
    def message(self) -> str:
        where = f"line {self.number}" + (f" (custom_id {self.custom_id!r})" if self.custom_id is not None else "")
        return f"{where}: {self.problem}"

    def as_error(self) -> dict[str, Any]:
        """The OpenAI batch error object."""
        return {"code": self.code, "line": self.number, "message": self.message, "param": self.param}


def check_line(number: int, raw: bytes, *, registry: Registry, limits: Limits) -> ValidLine | BadLine | None:
    """The job a line asks for, or why it cannot be one; None for a blank line (skipped)."""
    if not raw.strip():
        return None
    try:
        line = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, or bytes that are not UTF-8
        return BadLine(number, None, "invalid_json", None, f"is not valid JSON ({exc})")
    if not isinstance(line, dict):
        return BadLine(number, None, "invalid_json", None, "must be a JSON object with custom_id, method, url and body")
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id.strip():
        return BadLine(number, None, "missing_custom_id", "custom_id", "custom_id must be a non-empty string")
    if len(custom_id) > MAX_CUSTOM_ID_CHARS:
        return BadLine(number, custom_id[:40], "invalid_custom_id", "custom_id",
                       f"custom_id is longer than {MAX_CUSTOM_ID_CHARS} characters")
    problem = _envelope_problem(line)
    if problem is not None:
        return BadLine(number, custom_id, problem[0], problem[1], problem[2])
    body = line["body"]
    for name in _BATCH_LEVEL_FIELDS:
        if name in body:
            return BadLine(number, custom_id, "invalid_request", f"body.{name}",
                           f"body.{name}: is set per batch, not per line; remove it")
    try:
        request = parse_request(body, limits)
        spec = resolve_model(request, registry)
    except InvalidJobError as exc:
        return BadLine(number, custom_id, "invalid_request", f"body.{exc.errors[0].field}",
                       "; ".join(f"body.{e.field}: {e.message}" for e in exc.errors))
    return ValidLine(number, custom_id, spec.name, spec.task, job_input_of(request))


def _envelope_problem(line: dict[str, Any]) -> tuple[str, str, str] | None:
    unknown = sorted(set(line) - set(_LINE_FIELDS))
    if unknown:
        return "invalid_request", unknown[0], f"unknown field {unknown[0]!r}; a line has {', '.join(_LINE_FIELDS)}"
    if line.get("method") != "POST":
        return "invalid_method", "method", f"method must be 'POST', not {line.get('method')!r}"
    if line.get("url") != BATCH_ENDPOINT:
        return "invalid_url", "url", f"url {line.get('url')!r} is not served here; textq batches serve {BATCH_ENDPOINT}"
    if not isinstance(line.get("body"), dict):
        return "invalid_request", "body", "body must be a JSON object: a textq job request"
    return None


class CustomIdSeen:
    """Which custom_ids came before, in 8 bytes per line: an open-addressing table of 64-bit digests
    (a set of the strings would take ~90 bytes each: 90 MB for a million-line file).

    Two different ids may share a digest (about one chance in 10^8 for a million lines), so `add`
    only says "maybe seen"; the loader settles those few against the ids themselves.
    """

    def __init__(self, expected: int) -> None:
        size = 1 << max(4, (2 * expected + 1).bit_length())  # at most half full: short probes
        self._slots = array("Q", bytes(8 * size))
        self._mask = size - 1

    @staticmethod
    def digest(custom_id: str) -> int:
        # Never 0: that marks an empty slot.
        return int.from_bytes(hashlib.blake2b(custom_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()) or 1

    def add(self, custom_id: str) -> bool:
        """Record `custom_id`; True if its digest was seen before (the id probably was)."""
        digest = self.digest(custom_id)
        slot = digest & self._mask
        while self._slots[slot]:
            if self._slots[slot] == digest:
                return True
            slot = (slot + 1) & self._mask
        self._slots[slot] = digest
        return False


__all__ = ["BATCH_ENDPOINT", "BadLine", "CustomIdSeen", "ValidLine", "check_line"]
