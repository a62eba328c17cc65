"""Run a whole photo library through img2pose into a resumable JSON-lines file.

    img2pose-backfill INPUT... --url http://127.0.0.1:8080 [--model img2pose]
        [--token KEY] [--token-file key_file.json] [--management-url http://127.0.0.1:8081]
        --output results.jsonl [--concurrency 16] [--score-threshold X] [--max-faces N]
        [--retry-errors] [--retries 5] [--worker-death-retries 2] [--timeout 300] [--shard I/N]
        [--align 112|224 --crops-dir DIR]
    img2pose-backfill INPUT... --archive img2pose.mar [--device cpu] --output results.jsonl [...]

With --url the images go to a TorchServe; with --archive the archive's model runs in this process
(img2pose_serve.runtime.in_process: the same answers, no server; files read in threads a chunk ahead, decoded
in the archive's decode threads). Everything below holds for both, except what concerns the server.

INPUT: image files, directories (recursive) or lists of paths (``*.txt``, ``*.lst`` or ``@FILE``);
see img2pose_client.inputs. ``--shard I/N`` keeps only the inputs whose path hashes to shard I:
N runs with the same INPUTs (and the library at the same absolute path), each with its own
--output, process every input exactly once between them, and each resumes on its own. Each image
gets one line in --output, ``{"path", "faces"}`` or
``{"path", "error", "status"}``; paths already there are skipped, so re-running resumes (with
--retry-errors, paths whose last line is an error are sent again and the new line appended).

``--align 112|224 --crops-dir DIR``: each face's aligned crop (the server's, or ``Img2Pose.align_faces``'
in-process: the same PNG files) is written under DIR before the line, which names it relative to DIR
(``"aligned": "ab/cd/<hash>-0.png"``, null for a face past the server's max_aligned_faces). A resumed run
leaves no crop without its line and no line without its crops: see img2pose_client.crop_files.

When the server rejects the key (it expires), the key file is read again and, with
--management-url, the key renewed with the file's API key; the rejected requests are sent again
(see img2pose_client.inference_key). A fixed --token alone is never replaced.

When a TorchServe worker dies (OOM killer, node trouble, responseTimeout), the requests of its
batch are sent again, each alone, so that an image that kills the worker every time ends as one
error line and its neighbours are answered (see img2pose_client.predict_client).

Exit status: 0 every image sent in this run succeeded; 1 some were recorded as errors; 2 usage
error, or the run was aborted: the server rejected the key and no working one could be had, or
does not know the model, or stopped answering (ABORT_AFTER_TRANSPORT_ERRORS images in a row
without an HTTP answer).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from img2pose_serve.protocol.request_parsing import ALIGN_SIZES

from .crop_files import CropFiles, with_crop_names
from .inference_key import InferenceKey
from .inputs import Shard, iter_inputs
from .key_file import DEFAULT_KEY_FILE, read_keys, token_value_attached
from .local_detection import LOCAL_ERROR, detect_files, open_detector, read_file
from .predict_client import TRANSPORT_ERROR, FatalServerError, Outcome, PredictClient
from .results_file import ResultWriter, ResumeIndex

ABORT_AFTER_TRANSPORT_ERRORS = 20


@dataclass
class Tally:
    processed: int = 0
    skipped: int = 0
    other_shards: int = 0  # inputs left to the other shards (--shard)
    faces: int = 0
    errors: Counter = field(default_factory=Counter)  # str(status) -> count
    demo: bool = False
    worker_deaths: int = 0  # requests sent again because the worker died under them

    def add(self, outcome: Outcome) -> None:
        self.processed += 1
        self.demo |= outcome.demo
        self.worker_deaths += outcome.worker_deaths
        if outcome.faces is not None:
            self.faces += len(outcome.faces)
        else:
            self.errors[str(outcome.status)] += 1

    def postfix(self) -> dict[str, int]:
        return {"faces": self.faces, "errors": sum(self.errors.values()), "skipped": self.skipped}


def record_of(path: str, outcome: Outcome, crop_files: CropFiles | None = None) -> dict[str, Any]:
    """The result line of ``path``. With ``crop_files``, its crop files are first made those of ``outcome``
    (none for an error), and the faces name them: call it before writing the line (crop_files)."""
    if crop_files is not None:
        if outcome.faces is not None and outcome.crops is None:
            raise ValueError(f"{path}: an answer without the crops asked for")
        names = crop_files.replace(path, outcome.crops if outcome.faces is not None else [])
    if outcome.faces is not None:
        return {"path": path, "faces": outcome.faces if crop_files is None else with_crop_names(outcome.faces, names)}
    return {"path": path, "error": outcome.error, "status": outcome.status}


def process(client: PredictClient, path: str) -> Outcome:
    """Read one image and send it; runs in the thread pool."""
    read = read_file(path)
    return read if isinstance(read, Outcome) else client.predict(read)


def run(args: argparse.Namespace, progress: bool = True) -> dict[str, Any]:
    """Backfill ``args.inputs`` into ``args.output``; returns the summary (see ``summary_text``)."""
    tally = Tally()
    started = time.monotonic()
    with ResultWriter(args.output) as writer, tqdm(unit="img", disable=not progress, smoothing=0.05) as bar:
        index = ResumeIndex.load(args.output)  # read under the writer's lock
        writer.cut_after(index.end_offset)
        crop_files = CropFiles(args.crops_dir) if args.crops_dir is not None else None

        def record(path: str, outcome: Outcome) -> None:
            writer.write(record_of(path, outcome, crop_files))
            tally.add(outcome)
            bar.update(1)
            bar.set_postfix(tally.postfix(), refresh=False)

        work = paths_to_process(args, index, tally, record, crop_files)
        if args.archive is not None:
            detect_in_process(args, work, record)
            aborted, key = None, None
        else:
            aborted, key = send_to_server(args, work, record)
    wall = time.monotonic() - started
    return {
        "output": str(args.output),
        "processed": tally.processed,
        "skipped": tally.skipped,
        "shard": f"{args.shard.index}/{args.shard.count}" if args.shard is not None else None,
        "other_shards": tally.other_shards,
        "faces": tally.faces,
        "errors": dict(sorted(tally.errors.items())),
        "error_count": sum(tally.errors.values()),
        "wall_s": round(wall, 2),
        "images_per_s": round(tally.processed / wall, 3) if wall > 0 else None,
        "demo_weights": tally.demo,
        "worker_death_retries": tally.worker_deaths,
        "key_rereads": key.rereads if key else 0,
        "key_renewals": key.renewals if key else 0,
        "aborted": aborted,
        "crops_dir": str(args.crops_dir) if args.crops_dir is not None else None,
        "crops": crop_files.written if crop_files is not None else 0,
    }


def paths_to_process(args: argparse.Namespace, index: ResumeIndex, tally: Tally,
                     record: Callable[[str, Outcome], None], crop_files: CropFiles | None = None) -> Iterator[str]:
    """The input paths this run must answer: not another shard's, not already done; an input that
    could not even be listed is recorded as an error on the way. A skipped path whose last line is an
    error loses any crop files a crashed --retry-errors run left (crop_files)."""
    for item in iter_inputs(args.inputs):
        if args.shard is not None and not args.shard.owns(item.path):
            tally.other_shards += 1
        elif index.should_skip(item.path, args.retry_errors):
            tally.skipped += 1
            if crop_files is not None and index.last_is_error(item.path):
                crop_files.remove(item.path)
        elif item.error is not None:
            record(item.path, Outcome(error=item.error, status=LOCAL_ERROR))
        else:
            yield item.path


def detect_in_process(args: argparse.Namespace, paths: Iterable[str], record: Callable[[str, Outcome], None]) -> None:
    """``--archive``: run the archive's model here, ``--concurrency`` images per call (local_detection)."""
    # Imported here, not at the top: a --url run is a plain HTTP client and never loads torch
    # (tests/test_client_imports.py).
    from img2pose_serve.runtime.in_process import Img2Pose

    with open_detector(lambda: Img2Pose(args.archive, device=args.device), "backfill") as detector:
        for path, outcome in detect_files(detector, paths, args.concurrency, options=args.options, align=args.align):
            record(path, outcome)


def send_to_server(args: argparse.Namespace, paths: Iterable[str],
                   record: Callable[[str, Outcome], None]) -> tuple[str | None, InferenceKey]:
    """POST every path to the server, ``--concurrency`` in flight; (why the run aborted or None, the key)."""
    key = InferenceKey(args.token, args.key_file, args.management_url)
    client = PredictClient(args.url, args.model, key, timeout=args.timeout, retries=args.retries,
                           backoff=args.backoff, options=args.options,
                           worker_death_retries=args.worker_death_retries, align=args.align)
    pending: dict[Future, str] = {}
    unanswered_in_a_row = 0

    def record_answer(path: str, outcome: Outcome) -> None:
        nonlocal unanswered_in_a_row
        record(path, outcome)
        unanswered_in_a_row = unanswered_in_a_row + 1 if outcome.status == TRANSPORT_ERROR else 0
        if unanswered_in_a_row >= ABORT_AFTER_TRANSPORT_ERRORS:
            raise FatalServerError(f"no answer from {client.endpoint} for {ABORT_AFTER_TRANSPORT_ERRORS} "
                                   f"images in a row (last: {outcome.error})")

    with client, ThreadPoolExecutor(args.concurrency, thread_name_prefix="backfill") as pool:

        def collect(futures: Iterable[Future]) -> None:
            fatal = None
            for future in futures:  # record every answer that came, then abort if one said to
                path = pending.pop(future)
                try:
                    outcome = future.result()
                except FatalServerError as error:
                    fatal = fatal or error
                else:
                    record_answer(path, outcome)
            if fatal is not None:
                raise fatal

        try:
            for path in paths:
                pending[pool.submit(process, client, path)] = path
                if len(pending) >= args.concurrency:  # keep N in flight, never more
                    collect(wait(pending, return_when=FIRST_COMPLETED).done)
            collect(wait(pending).done)
        except FatalServerError as error:
            for future in pending:
                future.cancel()
            for future, path in pending.items():  # those already sent: keep the answers that come
                if not future.cancelled() and future.exception() is None and future.result().faces is not None:
                    record(path, future.result())
            return str(error), key
    return None, key


def summary_text(summary: dict[str, Any]) -> str:
    errors = ", ".join(f"{count} x {status}" for status, count in summary["errors"].items()) or "none"
    lines = [
        f"{summary['output']}: {summary['processed']} processed, {summary['skipped']} skipped (already done), "
        f"{summary['faces']} faces",
        f"errors: {summary['error_count']} ({errors})",
        *([f"shard {summary['shard']}: {summary['other_shards']} inputs left to the other shards"]
          if summary["shard"] else []),
        f"{summary['wall_s']} s, {summary['images_per_s']} images/s",
        *([f"aligned crops: {summary['crops']} written under {summary['crops_dir']}"] if summary["crops_dir"] else []),
    ]
    if summary["worker_death_retries"]:
        lines.append(f"worker deaths: {summary['worker_death_retries']} requests sent again, alone, after the "
                     "server's worker died under them")
    if summary["key_rereads"] or summary["key_renewals"]:
        lines.append(f"inference key: {summary['key_renewals']} renewed, {summary['key_rereads']} picked up "
                     "from the key file (the server rejected the one in use)")
    if summary["demo_weights"]:
        lines.append("note: the model runs demo weights; its detections are meaningless")
    if summary["aborted"]:
        lines.append(f"ABORTED: {summary['aborted']}; images without an answer were not recorded, re-run to resume")
    return "\n".join(lines)


def exit_status(summary: dict[str, Any]) -> int:
    if summary["aborted"]:
        return 2
    return 1 if summary["error_count"] else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="img2pose-backfill", description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image file, directory (recursive) or list of paths (*.txt, *.lst, @FILE)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="inference API of a TorchServe, e.g. http://127.0.0.1:8080")
    where.add_argument("--archive", type=Path,
                       help="run the model of this archive (img2pose.mar) here, without a server; "
                            "--concurrency images are read ahead and run per call")
    parser.add_argument("--device", default="cpu", help="with --archive: cpu (default) or cuda[:N]")
    parser.add_argument("--model", default="img2pose")
    parser.add_argument("--token", help="inference key; alone, it is never replaced")
    parser.add_argument("--token-file", help=f"TorchServe's key_file.json, read again when the server rejects the "
                                             f"key (default: ./{DEFAULT_KEY_FILE} if present, else no token)")
    parser.add_argument("--management-url", help="management API, e.g. http://127.0.0.1:8081: renew a rejected "
                                                 "inference key there with the key file's API key")
    parser.add_argument("--output", required=True, type=Path, help="results JSONL; appended to, and resumed from")
    parser.add_argument("--concurrency", type=int, default=16,
                        help="requests in flight (default 16: two TorchServe batches of 8)")
    parser.add_argument("--score-threshold", type=float, help="per-request override of the model's default")
    parser.add_argument("--max-faces", type=int, help="per-request override of the model's default")
    parser.add_argument("--retry-errors", action="store_true",
                        help="send again the paths whose last line in --output is an error")
    parser.add_argument("--retries", type=int, default=5,
                        help="retries of 429/502/503/504, the frontend's 507 OutOfMemoryError, no answer (default 5)")
    parser.add_argument("--worker-death-retries", type=int, default=2,
                        help="times an image is sent again, alone, after TorchServe answered 'Worker died.' "
                             "(default 2); then it is recorded as an error: it likely kills the worker")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for an answer (default 300)")
    parser.add_argument("--backoff", type=float, default=1.0,
                        help="first retry delay in seconds, doubled per retry, jittered (default 1)")
    parser.add_argument("--shard", metavar="I/N",
                        help="process only shard I of N (0 <= I < N), by a stable hash of each absolute path; "
                             "run N processes with the same inputs and one --output each")
    add_crop_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(token_value_attached(argv))
    check_crop_arguments(args, parser)
    try:
        args.shard = Shard.parse(args.shard) if args.shard is not None else None
    except ValueError as error:
        parser.error(str(error))
    if (args.concurrency < 1 or args.retries < 0 or args.worker_death_retries < 0 or args.timeout <= 0
            or args.backoff < 0):
        parser.error("need --concurrency >= 1, --retries >= 0, --worker-death-retries >= 0, --timeout > 0, "
                     "--backoff >= 0")
    if args.url is not None and not args.url.startswith(("http://", "https://")):
        parser.error(f"--url must be an http:// or https:// URL, got {args.url!r}")
    if args.management_url is not None and not args.management_url.startswith(("http://", "https://")):
        parser.error(f"--management-url must be an http:// or https:// URL, got {args.management_url!r}")
    args.key_file = key_file_of(args, parser) if args.url is not None else None
    if args.archive is not None and not (args.archive.is_file() or args.archive.is_dir()):
        parser.error(f"--archive {args.archive}: no such file (build one with img2pose-build-mar)")
    args.options = detection_options(args)
    return args


def add_crop_arguments(parser: argparse.ArgumentParser) -> None:
    """``--align`` and ``--crops-dir``, which go together (``check_crop_arguments``)."""
    parser.add_argument("--align", type=int, choices=ALIGN_SIZES,
                        help="write each face's aligned crop, this many pixels square, under --crops-dir; the "
                             "faces name their crop files (\"aligned\": path relative to --crops-dir)")
    parser.add_argument("--crops-dir", type=Path, help="with --align: the folder the crop PNG files go to")


def check_crop_arguments(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if (args.align is None) != (args.crops_dir is None):
        parser.error("--align needs --crops-dir (where the crop files go)" if args.crops_dir is None
                     else "--crops-dir needs --align 112 or 224 (the crops' size)")


def detection_options(args: argparse.Namespace) -> dict[str, float | int]:
    """The ``--score-threshold`` / ``--max-faces`` given, as request options (the others: the model's defaults)."""
    return {name: value for name, value in (("score_threshold", args.score_threshold), ("max_faces", args.max_faces))
            if value is not None}


def key_file_of(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Path | None:
    """The key file read again on a rejected key (None: a fixed --token, or no token); fills in
    ``args.token`` from it when no --token was given."""
    key_file = args.token_file
    if key_file is None and (args.token is None or args.management_url) and Path(DEFAULT_KEY_FILE).is_file():
        key_file = DEFAULT_KEY_FILE
    if key_file is None:
        if args.management_url:
            parser.error(f"--management-url needs the server's key file (--token-file, or ./{DEFAULT_KEY_FILE})")
        return None
    needed = (["inference"] if args.token is None else []) + (["API"] if args.management_url else [])
    try:
        keys = read_keys(key_file)
    except (OSError, ValueError, TypeError) as error:
        parser.error(f"cannot read the keys from {key_file}: {type(error).__name__}: {error}")
    if missing := [name for name in needed if name not in keys]:
        parser.error(f"{key_file} has no {' or '.join(missing)} key")
    if args.token is None:
        args.token = keys["inference"]
    return Path(key_file)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        summary = run(args, progress=not args.quiet)
    except OSError as error:  # an unreadable list file or output file
        print(f"backfill: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("backfill: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    print(summary_text(summary))
    return exit_status(summary)


if __name__ == "__main__":
    raise SystemExit(main())
