"""Detect faces in your own photos with one command, in this process (no server).

    img2pose-detect IMAGE... [--archive model_store/img2pose.mar] [--score-threshold X] [--max-faces N]
        [--min-size N --max-size N] [--align 112|224 --crops-dir DIR]
    img2pose-detect IMAGE... --checkpoint img2pose_v1.pth [--pose-mean M.npy --pose-stddev S.npy]

IMAGE: files, directories (recursive) or lists of paths, as backfill takes them. Prints one JSON line
per image, in input order: ``{"path", "faces"}``, or ``{"path", "error", "status"}`` for an image that
could not be read or decoded (the lines of backfill's results file; a directory that cannot be
listed comes last). With ``--align``, each face's aligned crop is written under ``--crops-dir`` before its
line, which names it as backfill's does (img2pose_client.crop_files). Exit status: 0 all answered,
1 some were errors, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from img2pose_serve.runtime.in_process import DEFAULT_ARCHIVE, Img2Pose

from .backfill import add_crop_arguments, check_crop_arguments, detection_options, record_of
from .crop_files import CropFiles
from .inputs import iter_inputs
from .local_detection import LOCAL_ERROR, detect_files, open_detector
from .predict_client import Outcome

IMAGES_PER_CALL = 8


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="img2pose-detect", description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+", metavar="IMAGE",
                        help="image file, directory (recursive) or list of paths (*.txt, *.lst, @FILE)")
    parser.add_argument("--archive", type=Path, help=f"model archive (default: ./{DEFAULT_ARCHIVE})")
    parser.add_argument("--checkpoint", type=Path, help="an official-layout checkpoint instead of an archive")
    parser.add_argument("--pose-mean", type=Path, help="with --checkpoint: the pose mean .npy (default: identity)")
    parser.add_argument("--pose-stddev", type=Path, help="with --checkpoint: the pose stddev .npy")
    parser.add_argument("--score-threshold", type=float, help="default: the archive's setting")
    parser.add_argument("--max-faces", type=int, help="default: the archive's setting (-1: all, 0: none)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    parser.add_argument("--min-size", type=int,
                        help="the resize's short side (default: the archive's setting; 640 as the reference)")
    parser.add_argument("--max-size", type=int,
                        help="the resize's long side cap (default: the archive's setting; 1400 as the reference)")
    add_crop_arguments(parser)
    args = parser.parse_args(argv)
    check_crop_arguments(args, parser)
    if args.checkpoint is not None and args.archive is not None:
        parser.error("give --archive or --checkpoint, not both")
    if args.checkpoint is None and (args.pose_mean or args.pose_stddev):
        parser.error("--pose-mean/--pose-stddev go with --checkpoint")
    if args.checkpoint is None:
        args.archive = args.archive or DEFAULT_ARCHIVE
        if not args.archive.exists():
            parser.error(f"no archive at {args.archive}: pass --archive, or build one with img2pose-build-mar "
                         "(its --checkpoint for the official weights)")
    elif not args.checkpoint.is_file():
        parser.error(f"--checkpoint {args.checkpoint}: no such file")
    args.options = detection_options(args)
    return args


def make_detector(args: argparse.Namespace) -> Img2Pose:
    sizes = {"min_size": args.min_size, "max_size": args.max_size}  # None: the archive's (Img2Pose drops it)
    if args.checkpoint is not None:
        return Img2Pose.from_checkpoint(args.checkpoint, args.pose_mean, args.pose_stddev, device=args.device,
                                        **sizes)
    return Img2Pose(args.archive, device=args.device, **sizes)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        crop_files = CropFiles(args.crops_dir) if args.crops_dir is not None else None
        detector = open_detector(lambda: make_detector(args), "img2pose-detect")
        detector.detect_each([], **args.options)  # a bad --score-threshold / --max-faces fails here, once
    except (OSError, ValueError) as error:
        print(f"img2pose-detect: {error}", file=sys.stderr)
        return 2
    with detector:
        try:
            errors = print_lines(detector, args, crop_files)
        except OSError as error:  # a crop that cannot be written (a full disk)
            print(f"img2pose-detect: {error}", file=sys.stderr)
            return 2
    return 1 if errors else 0


def print_lines(detector: Img2Pose, args: argparse.Namespace, crop_files: CropFiles | None) -> int:
    """One line per image (its crops written first); how many were errors."""
    errors = 0
    unlisted = []

    def listed_paths():
        for item in iter_inputs(args.images):
            if item.error is None:
                yield item.path
            else:
                unlisted.append(item)

    for path, outcome in detect_files(detector, listed_paths(), IMAGES_PER_CALL, options=args.options,
                                      align=args.align):
        errors += outcome.faces is None
        print(json.dumps(record_of(path, outcome, crop_files)), flush=True)
    for item in unlisted:
        errors += 1
        print(json.dumps(record_of(item.path, Outcome(error=item.error, status=LOCAL_ERROR), crop_files)),
              flush=True)
    return errors


if __name__ == "__main__":
    raise SystemExit(main())
