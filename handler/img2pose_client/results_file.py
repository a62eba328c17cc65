"""The backfill results file: one JSON object per line, appended by a single writer.

A line is ``{"path": ..., "faces": [...]}`` or ``{"path": ..., "error": ..., "status": ...}``.
Only newline-terminated lines count: a crash in the middle of a write leaves a torn last line,
which readers ignore and ``ResultWriter.cut_after`` removes before appending. When a path has several
lines (``--retry-errors`` appends new results), the last one wins.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


def iter_records(path: str | Path) -> Iterator[dict[str, Any]]:
    """The complete, well-formed lines of a results file, in order (a missing file: none)."""
    for record, _ in _iter_lines(path):
        if record is not None:
            yield record


def _iter_lines(path: str | Path) -> Iterator[tuple[dict | None, int]]:
    """(record or None for an unusable line, offset just after the line) for each complete line."""
    try:
        file = open(path, "rb")
    except FileNotFoundError:
        return
    with file:
        offset = 0
        for raw in file:
            if not raw.endswith(b"\n"):
                return  # torn last line
            offset += len(raw)
            try:
                record = json.loads(raw)
            except ValueError:
                record = None
            if not (isinstance(record, dict) and isinstance(record.get("path"), str)):
                record = None
            yield record, offset


def path_key(path: str) -> int:
    """A 64-bit hash of a path: the resume index holds 8 bytes a path, not the path."""
    digest = hashlib.blake2b(path.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


@dataclass
class ResumeIndex:
    """What an existing results file already holds, as sorted arrays of path keys."""

    done: np.ndarray  # keys whose last line is a success
    failed: np.ndarray  # keys whose last line is an error
    end_offset: int  # where the last complete line ends: the writer cuts anything after it
    bad_lines: int  # complete lines that are not a results record (skipped)

    @classmethod
    def load(cls, path: str | Path) -> ResumeIndex:
        keys, errors = array("Q"), array("b")  # 9 bytes a line: millions of lines are fine
        end_offset = bad_lines = 0
        for record, end_offset in _iter_lines(path):  # noqa: B007 - its last value is used after the loop
            if record is None:
                bad_lines += 1
                continue
            keys.append(path_key(record["path"]))
            errors.append("faces" not in record)
        # The last line of a path wins: unique over the reversed arrays finds last occurrences.
        unique, first = np.unique(np.frombuffer(keys, dtype=np.uint64)[::-1], return_index=True)
        last_is_error = np.frombuffer(errors, dtype=np.int8)[::-1][first].astype(bool)
        return cls(unique[~last_is_error], unique[last_is_error], end_offset, bad_lines)

    @staticmethod
    def _holds(keys: np.ndarray, key: int) -> bool:
        at = int(np.searchsorted(keys, np.uint64(key)))
        return at < len(keys) and int(keys[at]) == key

    def should_skip(self, path: str, retry_errors: bool) -> bool:
        key = path_key(path)
        return self._holds(self.done, key) or (not retry_errors and self._holds(self.failed, key))

    def last_is_error(self, path: str) -> bool:
        return self._holds(self.failed, path_key(path))


class ResultWriter:
    """Appends result lines: each flushed at once (a killed process loses nothing written),
    fsync'd at most once every ``fsync_interval`` seconds and on close (an OS crash or power loss
    loses at most the lines since the last fsync, which a resumed run redoes).

    Holds an exclusive lock on the file: a second run on the same file would send everything twice
    and could cut a line the first one is writing.
    """

    def __init__(self, path: str | Path, fsync_interval: float = 1.0) -> None:
        self._file = open(path, "ab")
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise OSError(f"{path} is being written by another run (it is locked)") from None
        self._fsync_interval = fsync_interval
        self._last_fsync = time.monotonic()

    def cut_after(self, end_offset: int) -> None:
        """Drop a torn last line (a crash in mid-write): everything after ``end_offset``."""
        if self._file.tell() > end_offset:
            self._file.truncate(end_offset)

    def write(self, record: dict[str, Any]) -> None:
        # ASCII JSON: undecodable file names (lone surrogates) survive as \udcXX escapes.
        self._file.write((json.dumps(record, separators=(",", ":")) + "\n").encode("ascii"))
        self._file.flush()
        if time.monotonic() - self._last_fsync >= self._fsync_interval:
            self._sync()

    def _sync(self) -> None:
        os.fsync(self._file.fileno())
        self._last_fsync = time.monotonic()

    def close(self) -> None:
        if not self._file.closed:
            self._sync()
            self._file.close()

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
