"""Image files through ``Img2Pose`` in this process, answered as the server's client answers them.

``backfill --archive`` and ``img2pose-detect`` read files in threads, a chunk ahead of the forward
that runs the current chunk, and get one ``Outcome`` per file: the FaceDicts, or the error with the
status a server would have answered (400, 413, 500) or ``local`` for a file that cannot be read.
With ``align``, each outcome also carries the faces' aligned crops as the server would send them: the best
``max_aligned_faces`` faces cut by ``Img2Pose.align_faces`` from the bytes already read, PNG-encoded by
the server's own encoder (``served_crops.png_bytes``), so both write the same files.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice, repeat
from pathlib import Path
from typing import TYPE_CHECKING

from img2pose_serve.protocol.errors import RequestError

from .predict_client import Outcome

if TYPE_CHECKING:  # the runtime (torch) is imported by whoever makes the detector, not by this module
    from img2pose_serve.runtime.in_process import Img2Pose

LOCAL_ERROR = "local"  # the status recorded when the file itself could not be read
INTERNAL_ERROR = 500


def open_detector(make: Callable[[], Img2Pose], program: str) -> Img2Pose:
    """``make()``, with a demo archive's notice printed once to stderr as ``program``'s (not as a warning)."""
    from img2pose_serve.runtime.archive_layout import DEMO_NOTICE  # imports torch: only when a detector is made

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=DEMO_NOTICE[:20])
        detector = make()
    if detector.demo:
        print(f"{program}: {DEMO_NOTICE}", file=sys.stderr)
    return detector


def read_file(path: str) -> bytes | Outcome:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        return Outcome(error=f"cannot read: {error.strerror or error}", status=LOCAL_ERROR)


def outcome_of(result: list | Exception, demo: bool) -> Outcome:
    if isinstance(result, RequestError):
        return Outcome(error=result.message, status=result.status, demo=demo)
    if isinstance(result, Exception):
        return Outcome(error=f"internal error: {type(result).__name__}: {result}", status=INTERNAL_ERROR, demo=demo)
    return Outcome(faces=result, demo=demo)


def detect_files(detector: Img2Pose, paths: Iterable[str], chunk_size: int, read_threads: int = 4,
                 options: dict | None = None, align: int | None = None) -> Iterator[tuple[str, Outcome]]:
    """(path, outcome) for every path, in order; ``options``: ``score_threshold`` / ``max_faces``;
    ``align``: 112 or 224 to add each answered image's crops (``Outcome.crops``).

    Files are read ``chunk_size`` at a time, the next chunk while the current one runs; each chunk is
    one ``detect_each`` call (its images planned into exact forwards, decoded in the detector's
    decode threads), its crops then cut in the read threads.
    """
    options = options or {}
    paths = iter(paths)
    with ThreadPoolExecutor(read_threads, thread_name_prefix="img2pose-read") as pool:
        def read_ahead() -> list[tuple[str, Future]]:
            return [(path, pool.submit(read_file, path)) for path in islice(paths, chunk_size)]

        chunk = read_ahead()
        while chunk:
            upcoming = read_ahead()
            contents = [future.result() for _, future in chunk]
            readable = [n for n, data in enumerate(contents) if isinstance(data, bytes)]
            results = dict(zip(readable, detector.detect_each([contents[n] for n in readable], **options,
                                                              labels=False)))
            outcomes = {n: outcome_of(results[n], detector.demo) for n in readable}
            if align is not None:
                answered = [n for n in readable if outcomes[n].faces is not None]
                cut = pool.map(with_crops, repeat(detector), [contents[n] for n in answered],
                               [outcomes[n] for n in answered], repeat(align))
                outcomes.update(zip(answered, cut))
            for n, (path, _) in enumerate(chunk):
                yield path, outcomes.get(n, contents[n])
            chunk = upcoming


def with_crops(detector: Img2Pose, data: bytes, outcome: Outcome, size: int) -> Outcome:
    """``outcome`` with the crops the server would send for its faces (the best ``max_aligned_faces``;
    None for the others), cut from ``data``; an error where they cannot be cut."""
    from img2pose_serve.runtime.served_crops import png_bytes  # imports torch: as the detector does

    faces = outcome.faces
    try:
        pixels = detector.align_faces(data, faces[:detector.served.config.max_aligned_faces], size,
                                      return_array=True)
    except (RequestError, OSError, ValueError) as error:
        return outcome_of(error, outcome.demo)
    outcome.crops = [png_bytes(crop) for crop in pixels] + [None] * (len(faces) - len(pixels))
    return outcome
