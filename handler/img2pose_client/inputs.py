"""Enumerate the images of backfill's INPUT arguments, lazily and in a deterministic order.

* A directory is walked recursively; entries are sorted by name in each directory and only files
  with an image extension are taken. Symlinked directories are not followed (no cycles).
* A file named ``*.txt`` / ``*.lst`` (any case) or given as ``@FILE`` lists paths, one per line
  (blank lines skipped; relative paths are relative to the current directory, as with ``tar -T``);
  each line is then handled like a command-line INPUT (a file or a directory, not another list).
* Any other path is taken as an image, whatever its extension: it was named explicitly.

Paths come out absolute: ``os.path.realpath`` of each INPUT / list line, with directory entries
joined below it. A directory that cannot be listed comes out as an ``Item`` with an ``error``.

``Shard`` splits the inputs among N processes by a stable hash of that absolute path (the one
recorded in the results file), so every process given the same INPUTs takes a disjoint part and
together they take every input once.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
LIST_SUFFIXES = (".txt", ".lst")


@dataclass(frozen=True)
class Item:
    path: str  # absolute
    error: str | None = None  # set when the path could not be enumerated


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (``backfill --shard I/N``, 0 <= I < N)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index}/{self.count}: need 0 <= I < N")

    @classmethod
    def parse(cls, text: str) -> Shard:
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if match is None:
            raise ValueError(f"shard must be I/N (e.g. 0/4), got {text!r}")
        return cls(int(match[1]), int(match[2]))

    def owns(self, path: str) -> bool:
        return shard_of(path, self.count) == self.index


def shard_of(path: str, count: int) -> int:
    """The shard of ``path`` among ``count``: a keyed BLAKE2b hash of its bytes, the same in every
    process and Python version (unlike the salted built-in ``hash``)."""
    digest = hashlib.blake2b(path.encode("utf-8", "surrogateescape"), digest_size=8,
                             person=b"img2pose-shard").digest()
    return int.from_bytes(digest, "big") % count


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def is_list_argument(argument: str) -> bool:
    return argument.startswith("@") or argument.lower().endswith(LIST_SUFFIXES)


def iter_inputs(arguments: Iterable[str]) -> Iterator[Item]:
    """The images of all INPUT arguments, in argument order. A list file that cannot be opened
    raises OSError: that is a usage error, not an item's."""
    for argument in arguments:
        if is_list_argument(argument):
            yield from _iter_list_file(argument[1:] if argument.startswith("@") else argument)
        else:
            yield from _expand(argument)


def _iter_list_file(list_path: str) -> Iterator[Item]:
    with open(list_path, encoding="utf-8", errors="surrogateescape", newline="") as lines:
        for line in lines:
            path = line.rstrip("\r\n")
            if path.strip():
                yield from _expand(path)


def _expand(path: str) -> Iterator[Item]:
    path = os.path.realpath(path)
    if os.path.isdir(path):
        yield from _walk(path)
    else:
        yield Item(path)


def _walk(directory: str) -> Iterator[Item]:
    try:
        with os.scandir(directory) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
    except OSError as error:  # permission denied, vanished meanwhile, ...
        yield Item(directory, f"cannot list directory: {error.strerror or error}")
        return
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                yield from _walk(entry.path)
            elif is_image_name(entry.name) and entry.is_file():
                yield Item(entry.path)
        except OSError as error:
            yield Item(entry.path, f"cannot read: {error.strerror or error}")
