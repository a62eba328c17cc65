"""Aligned face crops as PNG files beside a results file (``--align 112|224 --crops-dir DIR``).

Names: the crops of the image recorded as ``path`` are ``DIR/ab/cd/<h>-<n>.png``, where ``<h>`` is
the 32 hex digits of a BLAKE2b-128 hash of ``path`` (the absolute path the result line records), ``ab``
and ``cd`` its first four, and ``n`` the face's place in the line's ``faces`` (0: the best). Only a face
with a crop has a file (the server crops the best ``max_aligned_faces`` faces, so files are 0..k-1).
The line records each name relative to DIR (``"aligned": "ab/cd/<h>-0.png"``, null for a face
without a crop). 65,536 folders: a million crops put about 15 in each.

The invariant, after every run that completes over the same inputs (a resume of the same command):
for each path of those inputs (of its shard), the files ``<h>-*`` in DIR are exactly the crops its
last result line names (none for an error line); no line names a missing file, no file lacks its
line. How it is kept:

* Only the run that records a path touches that path's files (names are the path's hash, and shards
  partition paths): N shards, or runs of other inputs, can share one DIR.
* ``replace`` runs before the path's line is written: it writes each crop to a temporary name, fsyncs
  it and renames it into place, then removes every other ``<h>-*`` file (crops of an earlier answer
  with more faces, a crashed run's temporary files), then fsyncs the folder. So a line reaches the
  results file only after its crops are complete and durable; an OS crash cannot leave a line whose
  crops were lost.
* A crash (kill -9, power loss) between a path's crops and its line leaves files no line names; the
  path has no new line, so its last line is none or an error. With none, the resumed run records the
  path again (``replace`` first); with an error line, it is sent again with ``--retry-errors`` or,
  skipped without it, its files are removed (``remove``) when the run passes it.

A path given twice in one run is answered twice; its files are those of its last answer, the same
files for a deterministic model. Running two different commands (other options, other results files)
over the same images into one DIR is not supported: each would overwrite the other's crops.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ALIGNED = "aligned"  # the FaceDict key: a base64 PNG in the server's answer, a file name in a result line
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def crop_stem(path: str) -> str:
    """``ab/cd/<h>``: where the crops of ``path`` go, relative to the crops folder, without ``-<n>.png``."""
    digest = hashlib.blake2b(path.encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()
    return f"{digest[:2]}/{digest[2:4]}/{digest}"


class CropFiles:
    """The crops folder of one run; used from one thread (the one that writes the result lines)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)  # an unusable folder fails here, before any image
        self.written = 0

    def replace(self, path: str, crops: Sequence[bytes | None]) -> list[str | None]:
        """Make ``path``'s files exactly ``crops`` (PNG files; None: a face without one), durably;
        their names relative to the folder, None for None. Call it before writing ``path``'s line."""
        stem = crop_stem(path)
        folder = self.root / os.path.dirname(stem)
        names = [None if png is None else f"{stem}-{n}.png" for n, png in enumerate(crops)]
        if any(names) and not folder.is_dir():
            self._make_folder(folder)
        for name, png in zip(names, crops):
            if name is not None:
                _write_durably(self.root / name, png)
        kept = {os.path.basename(name) for name in names if name is not None}
        changed = self._remove_others(folder, os.path.basename(stem) + "-", kept)
        if kept or changed:
            _fsync_folder(folder)
        self.written += len(kept)
        return names

    def remove(self, path: str) -> None:
        """Remove every file of ``path`` (a path whose last line is an error: none of them is named)."""
        self.replace(path, [])

    def _make_folder(self, folder: Path) -> None:
        """``folder`` and those above it below the root, each new one's entry made durable."""
        if not folder.parent.is_dir():
            self._make_folder(folder.parent)
        try:
            folder.mkdir()
        except FileExistsError:
            return
        _fsync_folder(folder.parent)

    @staticmethod
    def _remove_others(folder: Path, prefix: str, kept: set[str]) -> bool:
        try:
            entries = [entry.name for entry in os.scandir(folder)]
        except FileNotFoundError:
            return False
        stale = [name for name in entries if name.startswith(prefix) and name not in kept]
        for name in stale:
            try:
                os.unlink(folder / name)
            except FileNotFoundError:
                pass
        return bool(stale)


def _write_durably(target: Path, data: bytes) -> None:
    temporary = target.with_name(target.name + ".tmp")  # <h>-<n>.png.tmp: removed with <h>'s others
    with open(temporary, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, target)


def _fsync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def take_crops(faces: list[dict[str, Any]]) -> list[bytes | None]:
    """The server's crops, taken out of its FaceDicts: each face's ``aligned`` (a base64 PNG, or None past
    the server's max_aligned_faces) decoded, the key removed. ValueError when a face has none (a server
    that does not know ``align``) or it is not a base64 PNG: the bytes are written as the server sent them."""
    crops = []
    for n, face in enumerate(faces):
        if not isinstance(face, dict) or ALIGNED not in face:
            raise ValueError(f"face {n} of the answer has no {ALIGNED!r} crop: the server predates aligned crops "
                             "(align / X-Img2Pose-Align)")
        encoded = face.pop(ALIGNED)
        if encoded is None:
            crops.append(None)
            continue
        try:
            png = base64.b64decode(encoded, validate=True)
        except (binascii.Error, TypeError, ValueError):
            png = b""
        if not png.startswith(PNG_SIGNATURE):
            raise ValueError(f"face {n} of the answer: {ALIGNED!r} is not a base64 PNG")
        crops.append(png)
    return crops


def with_crop_names(faces: list[dict[str, Any]], names: Sequence[str | None]) -> list[dict[str, Any]]:
    """``faces`` each with its crop's file name as ``aligned`` (the result line's form)."""
    return [{**face, ALIGNED: name} for face, name in zip(faces, names, strict=True)]
