"""Build the img2pose TorchServe model archive (``model_store/img2pose.mar``).

    python scripts/build_mar.py                              # DEMO archive (meaningless detections)
    python scripts/build_mar.py --checkpoint img2pose_v1.pth \\
        --pose-mean WIDER_train_pose_mean_v1.npy --pose-stddev WIDER_train_pose_stddev_v1.npy

(``img2pose-build-mar`` is the same command.) What the archive holds is ``img2pose_serve.runtime.archive_layout``'s
business: the handler, the ``img2pose_serve`` package, the weights as a tensors-only safetensors file
(never the operator's checkpoint itself), the pose statistics, ``archive_info.json`` and a
``model-config.yaml`` with the handler's settings plus ``responseTimeout`` and ``clientTimeoutInMills``.

The checkpoint is read with ``weights_only=True``: a file that pickles more than tensors is refused,
unless ``--trust-checkpoint`` says the operator vouches for it (it is then unpickled here, once, at
build time; the worker only ever reads the safetensors copy). It is loaded strictly into the model
before anything is written, so a wrong file fails the build with the offending keys named.

Batch size, batch delay and worker counts are deliberately NOT in the archive: values in an
archive's model-config.yaml override config.properties, so they live in ``config/config.properties``
where operators tune them. ``responseTimeout`` is the exception: TorchServe 0.12 takes it only from
the archive's model-config.yaml when the archive has one (its default there is 120 s, and
config.properties' values are ignored), so it is set here (``--response-timeout``). So is TorchServe's
``clientTimeoutInMills`` (``--client-timeout-ms``), which only an archive can set: how long the frontend
keeps a request before it forgets it (see ``DEFAULT_CLIENT_TIMEOUT_MS``).

The archive is written with torch-model-archiver's Python API (no hand-made zips).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import yaml

import img2pose_serve
from img2pose_client.predict_client import PredictClient
from img2pose_serve.nn import reference_data
from img2pose_serve.nn.checkpoint import CheckpointError, read_checkpoint
from img2pose_serve.nn.faster_dof_rcnn import MIN_SIZE_FLOOR, build_detector
from img2pose_serve.nn.pose import checked_pose_stats
from img2pose_serve.runtime import archive_layout
from img2pose_serve.runtime.handler_config import HandlerConfig
from img2pose_serve.runtime.precision_choice import PRECISION_SETTINGS
from img2pose_serve.runtime.runtime_choice import RUNTIME_SETTINGS
from img2pose_tools.demo_checkpoint import build_demo_state_dict
from img2pose_tools.serve_config import ARCHIVE_VERSION

PACKAGE_DIR = Path(img2pose_serve.__file__).resolve().parent
HANDLER_PATH = PACKAGE_DIR.parent / archive_layout.HANDLER_FILE
DEFAULT_EXPORT_PATH = Path("model_store")
DEFAULT_MODEL_NAME = "img2pose"
# Seconds one handler call may take before TorchServe kills the worker: the slowest batch allowed
# (batchSize requests x max_images_per_request images at the slowest forward on a small CPU) with
# a safety margin; see docs/errors-and-limits.md.
DEFAULT_RESPONSE_TIMEOUT = 1200
# TorchServe's clientTimeoutInMills: a request that has waited longer than this is never answered (not even
# with an error: its client hears nothing), dropped unrun only where it is not the first of its batch
# (batchSize > 1); measured in docs/errors-and-limits.md, "Deadlines and overload". So it must not be shorter
# than any legitimate client waits: the project's own clients' default timeout (the backfill's --timeout,
# which it also sends as X-Img2Pose-Deadline), beyond which nobody of ours reads the answer.
DEFAULT_CLIENT_TIMEOUT_MS = round(PredictClient.timeout * 1000)
# Frontend settings that must never appear in the archive's model-config.yaml (they would
# silently override config.properties).
FRONTEND_KEYS = ("batchSize", "maxBatchDelay", "minWorkers", "maxWorkers")

SOURCE_NPY = "npy files"
SOURCE_PUBLISHED = "published 4-decimal approximation"
SOURCE_DEMO = "demo (identity: mean [0,0,0,0,0,1], std 1)"

DEMO_BANNER = f"""
################################################################################
#  DEMO ARCHIVE: no --checkpoint given, so the weights are GENERATED (random).  #
#  The server will run, but its DETECTIONS ARE MEANINGLESS - not real faces.    #
#  For real results build with the official weights:                            #
################################################################################
{archive_layout.REAL_ARCHIVE_COMMAND}
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


TRUST_WARNING = """
********************************************************************************
*  --trust-checkpoint: {checkpoint} is being FULLY UNPICKLED.
*  Any code the file carries runs now, in this process, with your permissions.
*  Only do this for a checkpoint you made or got from a source you trust.
*  The archive receives its tensors only; the file itself is not shipped.
********************************************************************************
"""


class BuildError(ValueError):
    """The inputs cannot make an archive; the message says what to fix."""


def project_version() -> str:
    try:
        return version("img2pose-serve")
    except PackageNotFoundError:
        return "unknown"


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
    return np.asarray(array, dtype=np.float32).reshape(6)


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
    try:
        mean, stddev = checked_pose_stats(load_pose_stat(pose_mean, "--pose-mean"),
                                          load_pose_stat(pose_stddev, "--pose-stddev"))
    except ValueError as error:
        raise BuildError(f"--pose-mean {pose_mean} / --pose-stddev {pose_stddev}: {error}") from None
    return mean, stddev, SOURCE_NPY


def validated_state_dict(checkpoint: Path, trust: bool = False) -> dict:
    """The checkpoint's weights as this model's state dict, after loading them strictly into it.

    A wrong file fails the build here with the offending keys named, instead of failing every
    worker start of the server.
    """
    try:
        return build_detector(read_checkpoint(checkpoint, trust=trust)).state_dict()
    except CheckpointError as error:
        raise BuildError(str(error)) from error


def handler_settings(overrides: dict | None = None) -> dict:
    """The archive's ``handler:`` section: HandlerConfig's defaults with ``overrides``, validated."""
    settings = {**dataclasses.asdict(HandlerConfig()), **(overrides or {})}
    for key in FRONTEND_KEYS:
        if key in settings:
            raise BuildError(f"{key} belongs in config.properties, not in the archive's model-config.yaml")
    try:
        HandlerConfig.from_mapping(settings)
    except ValueError as error:
        raise BuildError(f"handler settings: {error}") from error
    return settings


_ARCHIVER_LOCK = threading.Lock()


@contextmanager
def _private_tempdir(parent: Path):
    """Point tempfile at a private directory while the archiver runs.

    torch-model-archiver stages files in ``<tempfile.gettempdir()>/<model_name>`` and deletes that
    directory first: two builds of the same model name at once (parallel tests, two shells) would
    otherwise clobber each other's staging area. ``tempfile.tempdir`` is the whole process's, so builds in
    two threads of one process take turns (``_ARCHIVER_LOCK``).
    """
    with _ARCHIVER_LOCK:
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


@dataclass(frozen=True)
class StagedArchive:
    """An archive's files, checked and written out, before the archiver packs them."""

    weights: Path
    extra: Path  # copied to the archive's root: the package, pose statistics, archive_info.json
    config_file: Path
    info: archive_layout.ArchiveInfo
    settings: dict  # the handler section of model-config.yaml


@contextmanager
def staged_archive(
    checkpoint: str | Path | None = None,
    pose_mean: str | Path | None = None,
    pose_stddev: str | Path | None = None,
    demo_seed: int = 0,
    handler_overrides: dict | None = None,
    response_timeout: int = DEFAULT_RESPONSE_TIMEOUT,
    client_timeout_ms: int = DEFAULT_CLIENT_TIMEOUT_MS,
    trust_checkpoint: bool = False,
    quiet: bool = False,
) -> Iterator[StagedArchive]:
    """Check the inputs and write the archive's files into a temporary directory (removed afterwards).

    ``checkpoint=None`` stages the DEMO archive (generated weights, identity pose statistics).
    ``handler_overrides`` replace HandlerConfig's defaults in the archive's handler settings, e.g.
    ``{"precision": "bf16"}`` (the setting's one home: the worker reads it there and decides at start
    what runs, precision_choice.resolve_precision).
    Raises BuildError for unusable inputs.
    """
    mean, stddev, stats_source = resolve_pose_stats(checkpoint, pose_mean, pose_stddev)
    settings = handler_settings(handler_overrides)
    if int(response_timeout) <= 0:
        raise BuildError(f"--response-timeout must be a positive number of seconds, got {response_timeout}")
    if isinstance(client_timeout_ms, bool) or not isinstance(client_timeout_ms, int) or client_timeout_ms < 0:
        raise BuildError(f"--client-timeout-ms must be a whole number of milliseconds >= 0 (0: off), "
                         f"got {client_timeout_ms!r}")
    demo = checkpoint is None
    if demo:
        if not quiet:
            print(DEMO_BANNER, file=sys.stderr)
        state = build_demo_state_dict(demo_seed)
    else:
        checkpoint = Path(checkpoint)
        if trust_checkpoint and not quiet:
            print(TRUST_WARNING.format(checkpoint=checkpoint), file=sys.stderr)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore" if trust_checkpoint else "default")
            state = validated_state_dict(checkpoint, trust=trust_checkpoint)
        if stats_source == SOURCE_PUBLISHED and not quiet:
            print(APPROX_STATS_WARNING, file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="img2pose-mar-") as tmp:
        tmp = Path(tmp)
        # The archiver copies a directory's *contents* to the archive root (one level flattened),
        # so the package must sit one level down to arrive as img2pose_serve/.
        extra = tmp / "extra"
        shutil.copytree(PACKAGE_DIR, extra / archive_layout.PACKAGE_DIR,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))
        info = archive_layout.stage_model_files(extra, state, mean, stddev, demo=demo, pose_stats_source=stats_source,
                                                built_by=f"img2pose-serve {project_version()}",
                                                source_checkpoint=None if demo else checkpoint)
        # The weights go in as the archiver's serialized file, beside the extra files.
        weights = Path(shutil.move(extra / archive_layout.WEIGHTS_FILE, tmp / archive_layout.WEIGHTS_FILE))
        config_file = tmp / archive_layout.MODEL_CONFIG_FILE
        config_file.write_text(
            "# Batch size, batch delay and workers live in config.properties (values here would\n"
            "# override it). responseTimeout must be here: TorchServe 0.12 takes it from the archive\n"
            "# (default 120) whenever the archive has a model-config.yaml. clientTimeoutInMills (0: off):\n"
            "# a request older than this is never answered; see docs/errors-and-limits.md.\n"
            + yaml.safe_dump({"responseTimeout": int(response_timeout), "clientTimeoutInMills": client_timeout_ms,
                              "handler": settings}, sort_keys=False))
        yield StagedArchive(weights, extra, config_file, info, settings)


def build_archive(
    checkpoint: str | Path | None = None,
    pose_mean: str | Path | None = None,
    pose_stddev: str | Path | None = None,
    export_path: str | Path = DEFAULT_EXPORT_PATH,
    model_name: str = DEFAULT_MODEL_NAME,
    force: bool = True,
    quiet: bool = False,
    handler: str | Path = HANDLER_PATH,
    **staging,
) -> Path:
    """Write ``<export_path>/<model_name>.mar`` and return its path (``staging``: see ``staged_archive``).

    ``handler``: the handler module; another one must subclass ``img2pose_handler.Img2PoseHandler``
    (its only class). The archive then carries ``img2pose_handler.py`` beside it, so that the worker
    imports the handler that matches the archive's package, not an installed one of another version.

    Raises BuildError for unusable inputs, FileExistsError when the archive exists and not ``force``.
    """
    export_path = Path(export_path)
    mar = export_path / f"{model_name}.mar"
    if mar.exists() and not force:
        raise FileExistsError(f"{mar} already exists (use --force to overwrite)")
    with staged_archive(checkpoint, pose_mean, pose_stddev, quiet=quiet, **staging) as staged:
        export_path.mkdir(parents=True, exist_ok=True)
        archiver_tmp = staged.weights.parent / "archiver-tmp"
        archiver_tmp.mkdir()
        if Path(handler).resolve() != HANDLER_PATH.resolve():
            shutil.copy2(HANDLER_PATH, staged.extra / archive_layout.HANDLER_FILE)
        _run_archiver(
            archiver_tmp,
            model_name=model_name,
            version=ARCHIVE_VERSION,
            handler=str(handler),
            serialized_file=str(staged.weights),
            extra_files=str(staged.extra),
            config_file=str(staged.config_file),
            export_path=str(export_path),
            # Stored, not deflated: float32 weights barely shrink, and deflating them costs seconds
            # on every build.
            archive_format="zip-store",
            force=True,  # the existence check above already honoured ``force``
        )
    if not quiet:
        source = "DEMO, meaningless detections" if checkpoint is None else f"weights from {Path(checkpoint).name}"
        print(f"wrote {mar} ({source}; pose stats: {staged.info.pose_stats_source}; "
              f"precision: {staged.settings['precision']}; runtime: {staged.settings['runtime']}; "
              f"resize: min_size {staged.settings['min_size']}, max_size {staged.settings['max_size']})")
    return mar


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="build_mar.py", description="Build the img2pose TorchServe archive. Without --checkpoint: a DEMO archive.")
    parser.add_argument("--checkpoint", type=Path, help="official-layout checkpoint (.pth), e.g. img2pose_v1.pth")
    parser.add_argument("--pose-mean", type=Path, help="WIDER_train_pose_mean_v1.npy (6 values)")
    parser.add_argument("--pose-stddev", type=Path, help="WIDER_train_pose_stddev_v1.npy (6 values)")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="fully unpickle a checkpoint that holds more than tensors (your own training "
                             "checkpoint): code inside the file runs, here, at build time; the archive gets "
                             "its tensors only")
    parser.add_argument("--export-path", type=Path, default=DEFAULT_EXPORT_PATH,
                        help=f"directory for the .mar (default: ./{DEFAULT_EXPORT_PATH})")
    parser.add_argument("--model-name", default=DEFAULT_MODEL_NAME, help="archive/model name (default: img2pose)")
    parser.add_argument("--response-timeout", type=int, default=DEFAULT_RESPONSE_TIMEOUT,
                        help="seconds a handler call may take before TorchServe restarts the worker "
                             f"(default {DEFAULT_RESPONSE_TIMEOUT}; config.properties cannot override it)")
    parser.add_argument("--client-timeout-ms", type=int, default=DEFAULT_CLIENT_TIMEOUT_MS,
                        help="TorchServe's clientTimeoutInMills: a request older than this gets no answer at all, and "
                             "at batchSize > 1 is dropped unrun unless first in its batch; keep it at least the "
                             f"longest any client waits (default {DEFAULT_CLIENT_TIMEOUT_MS}: the backfill's "
                             "--timeout; 0: off; docs/errors-and-limits.md)")
    parser.add_argument("--precision", choices=PRECISION_SETTINGS, default=HandlerConfig().precision,
                        help="fp32 (default); bf16: faster where the hardware has bf16 arithmetic and it "
                             "measures >= 1.3x fp32 at worker start, slightly different numbers, fp32 elsewhere; "
                             "bf16-required: bf16 or the worker refuses to start (docs/precision.md)")
    parser.add_argument("--runtime", choices=RUNTIME_SETTINGS, default=HandlerConfig().runtime,
                        help="auto (default): OpenVINO for fp32 on a CPU, torch elsewhere; torch: the reference's "
                             "arithmetic bit for bit; openvino: or the worker refuses to start "
                             "(docs/speed-and-tuning.md)")
    parser.add_argument("--min-size", type=int, default=HandlerConfig().min_size,
                        help=f"resize each image's shorter side to this many pixels before the network "
                             f"(default {HandlerConfig().min_size}, the reference's; >= {MIN_SIZE_FLOOR}); smaller "
                             "is faster and finds fewer small faces (docs/speed-and-tuning.md)")
    parser.add_argument("--max-size", type=int, default=HandlerConfig().max_size,
                        help="but never the longer side beyond this many pixels: it caps the resize of long images "
                             f"(default {HandlerConfig().max_size}; >= --min-size)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing archive")
    args = parser.parse_args(argv)
    try:
        build_archive(args.checkpoint, args.pose_mean, args.pose_stddev, args.export_path,
                      args.model_name, force=args.force, response_timeout=args.response_timeout,
                      client_timeout_ms=args.client_timeout_ms,
                      trust_checkpoint=args.trust_checkpoint,
                      handler_overrides={"precision": args.precision, "runtime": args.runtime,
                                         "min_size": args.min_size, "max_size": args.max_size})
    except (BuildError, FileExistsError) as error:
        print(f"build_mar.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
