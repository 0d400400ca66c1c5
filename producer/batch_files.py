"""The file store of batches: input, output and error files as database rows in chunks of whole lines.

Files live in the database, not a directory: every gateway replica and every Client already share
it, a file and the batch that refers to it commit together, and no shared volume is needed. A file
is cut into chunks of about CHUNK_BYTES of whole lines, so files go in and out a chunk at a time
(the gateway's memory stays bounded) and a loader can restart at the chunk holding a given line.
A file belongs to a tenant: with `visible_tenant`, another tenant's file is as if it did not exist
(None: every tenant's).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from typing import Literal

from pydantic import BaseModel
from sqlalchemy.orm import Session, sessionmaker

from db import batches as store
from db.models import StoredFile, utcnow
from producer.batch_errors import BatchInputError, BatchNotFoundError, FileTooLargeError

CHUNK_BYTES = 1024 * 1024
# A longer line is refused at upload: a line is parsed whole, and no request needs this much text.
MAX_LINE_BYTES = 8 * 1024 * 1024
UPLOAD_PURPOSES = ("batch",)


class FileView(BaseModel):
    """A file as the OpenAI Files API shows it (timestamps in Unix seconds)."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["processed"] = "processed"
    status_details: str | None = None
    expires_at: int | None = None

    @classmethod
    def of(cls, file: StoredFile) -> FileView:
        return cls(id=file.id, bytes=file.bytes, created_at=int(file.created_at.timestamp()), filename=file.filename,
                   purpose=file.purpose)


class ChunkWriter:
    """Writes a new file's bytes as chunks of whole lines in the caller's transaction."""

    def __init__(self, session: Session, *, filename: str, purpose: str, tenant: str, max_bytes: int | None = None,
                 max_lines: int | None = None) -> None:
        self.session = session
        self.file = StoredFile(id=f"file-{uuid.uuid4().hex}", purpose=purpose, filename=filename[:255], bytes=0, lines=0,
                               tenant=tenant, created_at=utcnow())
        self.max_bytes = max_bytes
        self.max_lines = max_lines
        self._buffer = bytearray()
        self._seq = 0
        self._next_line = 1
        self._last_byte = b""
        # The file row first: chunks refer to it.
        store.add_file(session, file=self.file)

    def write(self, data: bytes) -> None:
        if not data:
            return
        self.file.bytes += len(data)
        if self.max_bytes is not None and self.file.bytes > self.max_bytes:
            raise FileTooLargeError(f"file is larger than {self.max_bytes:,} bytes (TEXTQ_BATCH_MAX_FILE_BYTES)",
                                    param="file")
        self._buffer += data
        self._last_byte = data[-1:]
        if len(self._buffer) >= CHUNK_BYTES:
            cut = self._buffer.rfind(b"\n") + 1
            if cut:
                self._flush(cut)
            elif len(self._buffer) > MAX_LINE_BYTES:
                raise BatchInputError(f"line {self._next_line} is longer than {MAX_LINE_BYTES:,} bytes", param="file")

    def close(self) -> StoredFile:
        """Write the last chunk and the file's size; returns the file row (not yet committed)."""
        if len(self._buffer) > MAX_LINE_BYTES:
            raise BatchInputError(f"line {self._next_line} is longer than {MAX_LINE_BYTES:,} bytes", param="file")
        if self._buffer:
            self._flush(len(self._buffer))
        self.file.lines = self._next_line - 1 + (1 if self._last_byte not in (b"", b"\n") else 0)
        self._check_lines(self.file.lines)
        self.session.flush()
        return self.file

    def _flush(self, cut: int) -> None:
        chunk = bytes(self._buffer[:cut])
        del self._buffer[:cut]
        store.add_chunk(self.session, file_id=self.file.id, seq=self._seq, first_line=self._next_line, data=chunk)
        self._seq += 1
        self._next_line += chunk.count(b"\n")
        self._check_lines(self._next_line - 1)

    def _check_lines(self, lines: int) -> None:
        if self.max_lines is not None and lines > self.max_lines:
            raise FileTooLargeError(f"file has more than {self.max_lines:,} lines (TEXTQ_BATCH_MAX_LINES)", param="file")


def store_upload(sessions: sessionmaker[Session], blocks: Iterable[bytes], *, filename: str, purpose: str, tenant: str,
                 max_bytes: int, max_lines: int) -> FileView:
    """Store `tenant`'s uploaded file (read block by block) in one transaction: all of it or, on an error, nothing."""
    if purpose not in UPLOAD_PURPOSES:
        raise BatchInputError(f"purpose must be one of {', '.join(UPLOAD_PURPOSES)}, not {purpose!r}", param="purpose")
    with sessions.begin() as session:
        writer = ChunkWriter(session, filename=filename, purpose=purpose, tenant=tenant, max_bytes=max_bytes,
                             max_lines=max_lines)
        blank = True
        for block in blocks:
            blank = blank and not block.strip()
            writer.write(block)
        if blank:
            raise BatchInputError("file is empty: give one JSON request per line", param="file")
        return FileView.of(writer.close())


def get_file(sessions: sessionmaker[Session], file_id: str, *, visible_tenant: str | None) -> FileView:
    with sessions() as session:
        found = store.get_file(session, file_id=file_id, tenant=visible_tenant)
        if found is None:
            raise file_not_found(file_id)
        return FileView.of(found)


def delete_file(sessions: sessionmaker[Session], file_id: str, *, visible_tenant: str | None) -> None:
    with sessions.begin() as session:
        if not store.delete_file(session, file_id=file_id, tenant=visible_tenant):
            raise file_not_found(file_id)


def file_content(sessions: sessionmaker[Session], file_id: str, *, visible_tenant: str | None) -> Iterator[bytes]:
    """The file's bytes, a chunk at a time (each read in a short session of its own)."""
    get_file(sessions, file_id, visible_tenant=visible_tenant)  # a missing file raises now, before a response starts
    return _chunks(sessions, file_id, 0)


def file_not_found(file_id: str, param: str = "file_id") -> BatchNotFoundError:
    """The error for an unknown file and for another tenant's alike: the answer tells nothing about it."""
    return BatchNotFoundError(f"no file with id {file_id!r}", param=param)


def _chunks(sessions: sessionmaker[Session], file_id: str, seq: int) -> Iterator[bytes]:
    while True:
        with sessions() as session:
            chunk = store.read_chunk(session, file_id=file_id, seq=seq)
            if chunk is None:
                return
            data = chunk.data
        yield data
        seq += 1


def file_lines(sessions: sessionmaker[Session], file_id: str, *, start_line: int = 1) -> Iterator[tuple[int, bytes]]:
    """(line number, line without its newline) from `start_line` on (1-based), a chunk at a time."""
    with sessions() as session:
        seq = store.chunk_with_line(session, file_id=file_id, line=start_line)
        chunk = store.read_chunk(session, file_id=file_id, seq=seq)
        first = chunk.first_line if chunk is not None else 1
    number = first
    for data in _chunks(sessions, file_id, seq):
        lines = data.split(b"\n")
        if lines[-1] == b"":  # the newline ending the chunk ends its last line
            lines.pop()
        for line in lines:
            if number >= start_line:
                yield number, line
            number += 1


__all__ = ["CHUNK_BYTES", "ChunkWriter", "FileView", "delete_file", "file_content", "file_lines", "file_not_found", "get_file",
           "store_upload"]
