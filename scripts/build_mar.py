#!/usr/bin/env python3
"""Build the img2pose TorchServe model archive (``model_store/img2pose.mar``).

    python scripts/build_mar.py                              # DEMO archive (meaningless detections)
    python scripts/build_mar.py --checkpoint img2pose_v1.pth \\
        --pose-mean WIDER_train_pose_mean_v1.npy --pose-stddev WIDER_train_pose_stddev_v1.npy

The archive holds the handler (``handler/img2pose_handler.py``), the ``img2pose_serve`` package (as a
package directory, so the worker can ``import img2pose_serve``), the checkpoint, ``pose_mean.npy`` /
``pose_stddev.npy`` (float32, 6 values), ``archive_info.json`` (where the weights and statistics came
from) and a ``model-config.yaml`` with the handler's settings plus ``responseTimeout``. Batch size,
batch delay and worker counts are deliberately NOT in the archive: values in an archive's
model-config.yaml override config.properties, so they live in ``config/config.properties`` where
operators can tune them.

``responseTimeout`` is the exception, measured with TorchServe 0.12: as soon as an archive has a
model-config.yaml, its responseTimeout (default 120 s when unset, values <= 0 rejected) replaces
both the per-model ``responseTimeout`` and ``default_response_timeout`` of config.properties. So it
cannot be tuned there for this archive; it is set here (``--response-timeout``, default 1200 s).

The archive is written with torch-model-archiver's Python API (no hand-made zips).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "handler") not in sys.path:  # also usable from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO / "handler"))

from img2pose_serve import reference_data  # noqa: E402
from img2pose_serve.checkpoint import CheckpointError  # noqa: E402
from img2pose_serve.demo_checkpoint import write_demo_checkpoint  # noqa: E402
from img2pose_serve.detector import build_detector  # noqa: E402
from img2pose_serve.precision import PRECISIONS, check_precision  # noqa: E402
HANDLER_FILE = REPO / "handler" / "img2pose_handler.py"
PACKAGE_DIR = REPO / "handler" / "img2pose_serve"
DEFAULT_EXPORT_PATH = REPO / "model_store"
DEFAULT_MODEL_NAME = "img2pose"
ARCHIVE_VERSION = "1.0"

# The archive's model-config.yaml: handler settings only (see the module docstring for why).
HANDLER_SETTINGS = {
    "score_threshold": 0.5,
    "max_faces": -1,
    "max_images_per_forward": 8,
    "max_image_pixels": 120_000_000,
    "max_images_per_request": 16,
    "decode_threads": 2,
}
# Seconds one handler call may take before TorchServe kills the worker (see the module docstring
# for why this is in the archive). Worst case on a 2-core CPU: a batch of 8 requests x 16 images,
# one forward each at 3-5 s (1400 px wide images are the slowest) = 384-640 s; twice that margin.
DEFAULT_RESPONSE_TIMEOUT = 1200
# Frontend settings that must never appear in the archive's model-config.yaml (they would
# silently override config.properties).
FRONTEND_KEYS = ("batchSize", "maxBatchDelay", "minWorkers", "maxWorkers")

SOURCE_NPY = "npy files"
SOURCE_PUBLISHED = "published 4-decimal approximation"
SOURCE_DEMO = "demo (identity: mean [0,0,0,0,0,1], std 1)"

DEMO_BANNER = """
################################################################################
#  DEMO ARCHIVE: no --checkpoint given, so the weights are GENERATED (random).  #
#  The server will run, but its DETECTIONS ARE MEANINGLESS - not real faces.    #
#  For real results build with the official weights:                            #
#    python scripts/build_mar.py --checkpoint img2pose_v1.pth \\                 #
#      --pose-mean WIDER_train_pose_mean_v1.npy \\                               #
#      --pose-stddev WIDER_train_pose_stddev_v1.npy                             #
################################################################################
"""

APPROX_STATS_WARNING = """
********************************************************************************
*  WARNING: no --pose-mean/--pose-stddev given. Using the PUBLISHED 4-DECIMAL    *
*  APPROXIMATION of the official pose statistics; poses (and the boxes and      *
*  keypoints derived from them) will differ slightly from the official model.   *
*  Pass the real files from the official img2pose download:                     *
*    --pose-mean WIDER_train_pose_mean_v1.npy                                   *
*    --pose-stddev WIDER_train_pose_stddev_v1.npy                               *
********************************************************************************
"""


class BuildError(ValueError):
    """The inputs cannot make an archive; the message says what to fix."""


def project_version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("img2pose-serve")
    except PackageNotFoundError:  # running from a checkout without `pip install -e .`
        match = re.search(r'^version\s*=\s*"([^"]+)"', (REPO / "pyproject.toml").read_text(), re.MULTILINE)
        return match.group(1) if match else "unknown"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_pose_stat(path: str | Path, what: str) -> np.ndarray:
    """A pose statistics .npy file as float32[6]; BuildError if it is missing or not 6 finite numbers."""
    path = Path(path)
    if not path.is_file():
        raise BuildError(f"{what} file not found: {path}")
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as error:  # ValueError for pickled/object arrays, OSError/EOFError for junk
        raise BuildError(f"{what} file {path} is not a readable .npy array: {error}") from error
    if not np.issubdtype(array.dtype, np.number) or array.size != 6:
        raise BuildError(
            f"{what} file {path} must hold 6 numbers (rx, ry, rz, tx, ty, tz); "
            f"found dtype {array.dtype}, shape {array.shape}")
    array = np.asarray(array, dtype=np.float32).reshape(6)
    if not np.all(np.isfinite(array)):
        raise BuildError(f"{what} file {path} holds non-finite values: {array.tolist()}")
    return array


def resolve_pose_stats(checkpoint, pose_mean, pose_stddev) -> tuple[np.ndarray, np.ndarray, str]:
    """(mean, stddev, source description) following the rules in the module docstring."""
    if (pose_mean is None) != (pose_stddev is None):
        given, missing = ("--pose-mean", "--pose-stddev") if pose_stddev is None else ("--pose-stddev", "--pose-mean")
        raise BuildError(f"{given} was given without {missing}: pass both pose statistics files or neither")
    if checkpoint is None:
        if pose_mean is not None:
            raise BuildError("--pose-mean/--pose-stddev need --checkpoint (the demo archive uses identity statistics)")
        return (np.float32(reference_data.IDENTITY_POSE_MEAN), np.float32(reference_data.IDENTITY_POSE_STDDEV),
                SOURCE_DEMO)
    if pose_mean is None:
        mean, stddev = reference_data.published_pose_stats()
        return (np.asarray(mean, np.float32), np.asarray(stddev, np.float32), SOURCE_PUBLISHED)
    mean = load_pose_stat(pose_mean, "--pose-mean")
    stddev = load_pose_stat(pose_stddev, "--pose-stddev")
    if np.any(stddev <= 0):
        raise BuildError(f"--pose-stddev {pose_stddev} must be positive, got {stddev.tolist()}")
    return mean, stddev, SOURCE_NPY


def check_checkpoint(checkpoint: Path) -> None:
    """Load the checkpoint strictly into the model now, so a wrong file fails the build with the
    offending keys named, instead of failing every worker start of the server."""
    try:
        build_detector(checkpoint)
    except CheckpointError as error:
        raise BuildError(str(error)) from error


@contextmanager
def _private_tempdir(parent: Path):
    """Point tempfile at a private directory while the archiver runs.

    torch-model-archiver stages files in ``<tempfile.gettempdir()>/<model_name>`` and deletes that
    directory first: two builds of the same model name at once (parallel tests, two shells) would
    otherwise clobber each other's staging area.
    """
    saved = tempfile.tempdir
    tempfile.tempdir = str(parent)
    try:
        yield
    finally:
        tempfile.tempdir = saved


def _run_archiver(staging: Path, **settings) -> None:
    # In 0.12 ArgParser.export_model_args_parser() parses sys.argv itself, so the config object
    # is built directly; ModelArchiver.generate_model_archive is the documented Python entry point.
    from model_archiver.model_archiver import ModelArchiver
    from model_archiver.model_archiver_config import ModelArchiverConfig

    with _private_tempdir(staging):
        ModelArchiver.generate_model_archive(ModelArchiverConfig(**settings))


def build_archive(
    checkpoint: str | Path | None = None,
    pose_mean: str | Path | None = None,
    pose_stddev: str | Path | None = None,
    export_path: str | Path = DEFAULT_EXPORT_PATH,
    model_name: str = DEFAULT_MODEL_NAME,
    force: bool = True,
    demo_seed: int = 0,
    handler_settings: dict | None = None,
    response_timeout: int = DEFAULT_RESPONSE_TIMEOUT,
    quiet: bool = False,
    precision: str = "fp32",
) -> Path:
    """Write ``<export_path>/<model_name>.mar`` and return its path.

    ``checkpoint=None`` builds the DEMO archive (generated weights, identity pose statistics).
    ``handler_settings`` overrides entries of the archive's ``handler:`` section (tests use it).
    ``precision`` (``fp32`` or ``bf16``) goes into that section and into archive_info.json.
    Raises BuildError for unusable inputs, FileExistsError when the archive exists and not ``force``.
    """
    export_path = Path(export_path)
    mar = export_path / f"{model_name}.mar"
    if mar.exists() and not force:
        raise FileExistsError(f"{mar} already exists (use --force to overwrite)")
    mean, stddev, stats_source = resolve_pose_stats(checkpoint, pose_mean, pose_stddev)
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        check_checkpoint(checkpoint)
    settings = dict(HANDLER_SETTINGS, precision=precision)
    settings.update(handler_settings or {})
    try:
        check_precision(settings["precision"])
    except ValueError as error:
        raise BuildError(str(error)) from error
    for key in FRONTEND_KEYS:
        if key in settings:
            raise BuildError(f"{key} belongs in config.properties, not in the archive's model-config.yaml")
    if int(response_timeout) <= 0:
        raise BuildError(f"--response-timeout must be a positive number of seconds, got {response_timeout}")

    export_path.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="img2pose-mar-") as tmp:
        tmp = Path(tmp)
        demo = checkpoint is None
        if demo:
            if not quiet:
                print(DEMO_BANNER, file=sys.stderr)
            checkpoint = write_demo_checkpoint(tmp / "img2pose_demo.pth", seed=demo_seed)
        elif stats_source == SOURCE_PUBLISHED and not quiet:
            print(APPROX_STATS_WARNING, file=sys.stderr)

        # Everything except the handler, weights and config goes into one directory that the
        # archiver copies to the archive root. It copies a directory's *contents* (one level
        # flattened), so the package must sit one level down to arrive as img2pose_serve/.
        extra = tmp / "extra"
        shutil.copytree(PACKAGE_DIR, extra / "img2pose_serve",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))
        np.save(extra / "pose_mean.npy", mean.astype(np.float32))
        np.save(extra / "pose_stddev.npy", stddev.astype(np.float32))
        info = {
            "demo": demo,
            "checkpoint_sha256": sha256_of(checkpoint),
            "pose_stats_source": stats_source,
            "pose_mean": [float(v) for v in mean],
            "pose_stddev": [float(v) for v in stddev],
            "precision": settings["precision"],
            "built_by": f"img2pose-serve {project_version()}",
        }
        (extra / "archive_info.json").write_text(json.dumps(info, indent=2) + "\n")
        config_file = tmp / "model-config.yaml"
        config_file.write_text(
            "# Batch size, batch delay and workers live in config.properties (values here would\n"
            "# override it). responseTimeout must be here: TorchServe 0.12 takes it from the archive\n"
            "# (default 120) whenever the archive has a model-config.yaml.\n"
            + yaml.safe_dump({"responseTimeout": int(response_timeout), "handler": settings}, sort_keys=False))

        staging = tmp / "archiver-tmp"
        staging.mkdir()
        _run_archiver(
            staging,
            model_name=model_name,
            version=ARCHIVE_VERSION,
            handler=str(HANDLER_FILE),
            serialized_file=str(checkpoint),
            extra_files=str(extra),
            config_file=str(config_file),
            export_path=str(export_path),
            archive_format="default",
            force=True,  # the existence check above already honoured ``force``
        )
    if not quiet:
        print(f"wrote {mar} ({'DEMO, meaningless detections' if demo else 'checkpoint ' + checkpoint.name};"
              f" pose stats: {stats_source}; precision: {settings['precision']})")
    return mar


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Build the img2pose TorchServe archive. Without --checkpoint: a DEMO archive.")
    parser.add_argument("--checkpoint", type=Path, help="official-layout checkpoint (.pth), e.g. img2pose_v1.pth")
    parser.add_argument("--pose-mean", type=Path, help="WIDER_train_pose_mean_v1.npy (6 values)")
    parser.add_argument("--pose-stddev", type=Path, help="WIDER_train_pose_stddev_v1.npy (6 values)")
    parser.add_argument("--export-path", type=Path, default=DEFAULT_EXPORT_PATH,
                        help=f"directory for the .mar (default: {DEFAULT_EXPORT_PATH})")
    parser.add_argument("--model-name", default=DEFAULT_MODEL_NAME, help="archive/model name (default: img2pose)")
    parser.add_argument("--response-timeout", type=int, default=DEFAULT_RESPONSE_TIMEOUT,
                        help="seconds a handler call may take before TorchServe restarts the worker "
                             f"(default {DEFAULT_RESPONSE_TIMEOUT}; config.properties cannot override it)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="fp32 (default): exact; bf16: faster where the hardware has bf16 arithmetic, "
                             "slightly different numbers (docs/precision.md)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing archive")
    args = parser.parse_args(argv)
    try:
        build_archive(args.checkpoint, args.pose_mean, args.pose_stddev, args.export_path,
                      args.model_name, force=args.force, response_timeout=args.response_timeout,
                      precision=args.precision)
    except (BuildError, FileExistsError) as error:
        print(f"build_mar.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
