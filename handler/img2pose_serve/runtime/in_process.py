"""img2pose in this process, no server: the reference library's ``Img2Pose(...).detect_faces`` call.

    from img2pose_serve import Img2Pose
    detector = Img2Pose("model_store/img2pose.mar")          # or Img2Pose.from_checkpoint("img2pose_v1.pth", ...)
    faces = detector.detect_faces("photo.jpg")              # one image -> [FaceDict, ...]
    per_image = detector.detect_faces(["a.jpg", "b.png"])    # a list -> one list per image

The model is the one the archive's TorchServe worker serves (``served_model.ServedModel``: the same
settings, precision and limits), images are read exactly as the handler reads them, and a list runs in
the forwards the handler would plan (``forward_plan``): every image's answer equals what the server
answers for it alone. Images are decoded in ``decode_threads`` threads just before their forward, so
memory follows one forward, not the whole list.

An image is a path (``str`` or ``os.PathLike``), its encoded bytes, a PIL image, or an HxWx3 ``uint8``
numpy array taken as RGB (as the reference takes it). What differs from the reference library is in
docs/in-process.md.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..nn import reference_data
from ..nn.checkpoint import read_checkpoint
from ..protocol.errors import RequestError
from ..protocol.facedicts import FaceDict, to_face_dicts
from ..protocol.request_parsing import DetectionParams
from . import archive_layout
from .group_forward import run_group
from .handler_config import HandlerConfig
from .image_decoding import decode_tensor, image_size, image_to_tensor, to_rgb
from .served_model import ServedModel

__all__ = ["Img2Pose", "ImageInput", "DEFAULT_ARCHIVE"]

ImageInput = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray]  # noqa: UP007
PoseStat = Union[Sequence[float], str, os.PathLike]  # noqa: UP007 - 6 numbers, or their .npy file
DEFAULT_ARCHIVE = Path("model_store") / "img2pose.mar"  # where README's build puts it


@dataclass(frozen=True)
class _PendingImage:
    """An image whose size is known and whose tensor is made only when its forward is due."""

    height: int
    width: int
    tensor: Callable[[], Tensor]


class Img2Pose:
    """Face boxes, 6DoF poses and five keypoints per face, from a model archive, in this process."""

    def __init__(self, archive: str | os.PathLike = DEFAULT_ARCHIVE, *, device: str | torch.device = "cpu",
                 **settings: Any) -> None:
        """``archive``: a ``.mar`` (or an unpacked one). ``device``: ``cpu``, ``cuda[:N]``, or ``auto`` (CUDA
        when there is one, as the reference's default). ``settings``: handler settings that replace the
        archive's (``score_threshold``, ``max_faces``, ``precision``, ... see ``HandlerConfig``); an unknown one
        or a bad value raises ``HandlerConfigError``. ``torch_threads=N`` sets torch's thread count for the
        whole process; without it (the archive's setting included) the process's count is left alone."""
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        with archive_layout.unpacked_archive(archive) as directory:
            config = archive_layout.read_handler_config(directory)
            if settings:
                config = HandlerConfig.from_mapping({**dataclasses.asdict(config), **settings})
            self.served = ServedModel.load(directory, config, device)
        if "torch_threads" in settings and config.torch_threads > 0:
            torch.set_num_threads(config.torch_threads)  # process-wide, so only when asked for by name
        self._decode_pool = ThreadPoolExecutor(config.decode_threads, thread_name_prefix="img2pose-decode")
        if self.served.info.demo:
            warnings.warn(archive_layout.DEMO_NOTICE, stacklevel=2)

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike, pose_mean: PoseStat | None = None,
                        pose_stddev: PoseStat | None = None, *, trust: bool = False,
                        device: str | torch.device = "cpu", **settings: Any) -> Img2Pose:
        """From an official-layout checkpoint (``img2pose_v1.pth``), the way an archive built from it runs.

        ``pose_mean`` / ``pose_stddev``: 6 numbers each, or their ``.npy`` files. Without them the pose
        statistics are the identity ones, as the reference library's ``Img2Pose(model_path=...)`` uses.
        ``trust``: see ``checkpoint.read_checkpoint`` (a file that pickles more than tensors is refused).
        """
        if (pose_mean is None) != (pose_stddev is None):
            raise ValueError("give both pose_mean and pose_stddev, or neither (identity statistics)")
        mean = _pose_stat(reference_data.IDENTITY_POSE_MEAN if pose_mean is None else pose_mean)
        stddev = _pose_stat(reference_data.IDENTITY_POSE_STDDEV if pose_stddev is None else pose_stddev)
        with tempfile.TemporaryDirectory(prefix="img2pose-checkpoint-") as tmp:
            directory = Path(tmp)
            archive_layout.stage_model_files(
                directory, read_checkpoint(checkpoint, trust=trust), mean, stddev, demo=False,
                pose_stats_source="identity" if pose_mean is None else "given",
                built_by="img2pose_serve.runtime.in_process", source_checkpoint=Path(checkpoint))
            return cls(directory, device=device, **settings)

    # --- the reference library's call -------------------------------------------------------

    def detect_faces(self, images: ImageInput | list[ImageInput], score_threshold: float | None = None,
                     max_faces: int | None = None) -> list[FaceDict] | list[list[FaceDict]]:
        """FaceDicts of one image (best first), or a list of them per image of a list.

        ``score_threshold`` / ``max_faces`` default to the archive's settings (``max_faces``: -1 all,
        0 none). A bad image raises its error (``errors.InvalidInput``, ``PayloadTooLarge``, or the
        ``OSError`` of an unreadable path); in a list, the message starts with its place (``images[2]: ``).
        """
        if not isinstance(images, (list, tuple)):
            return _raise_if_error(self.detect_each([images], score_threshold, max_faces, labels=False)[0])
        return [_raise_if_error(result) for result in self.detect_each(images, score_threshold, max_faces)]

    def detect_each(self, images: Sequence[ImageInput], score_threshold: float | None = None,
                    max_faces: int | None = None, *, labels: bool = True) -> list[list[FaceDict] | Exception]:
        """Per image: its FaceDicts, or the exception that image met (the others are still answered).

        Python type mistakes (an array that is not HxWx3 uint8, an object that is no image) raise at once.
        """
        params = self._params(score_threshold, max_faces)
        results: dict[int, list[FaceDict] | Exception] = {}
        pending: dict[int, _PendingImage] = {}
        for n, image in enumerate(images):
            try:
                pending[n] = self._pending(image)
            except (RequestError, OSError) as error:
                results[n] = _labelled(error, n, labels)
        order = list(pending)
        for group in self.served.plan([(pending[n].height, pending[n].width) for n in order]):
            outcomes = run_group(self.served, [order[i] for i in group], lambda n: pending[n].tensor(),
                                 self._decode_pool)
            for n, outcome in outcomes.items():
                results[n] = (_labelled(outcome, n, labels) if isinstance(outcome, Exception)
                              else to_face_dicts(outcome, params.score_threshold, params.max_faces))
        return [results[n] for n in range(len(images))]

    def _pending(self, image: ImageInput) -> _PendingImage:
        max_pixels = self.served.config.max_image_pixels
        if isinstance(image, (str, os.PathLike)):
            # Read for its size now and again for its pixels at its forward: a long list of paths then
            # costs memory for one forward's files, not for all of them.
            path = Path(image)
            width, height = image_size(path.read_bytes(), max_pixels)
            return _PendingImage(height, width, lambda: decode_tensor(path.read_bytes(), max_pixels))
        if isinstance(image, (bytes, bytearray, memoryview)):
            data = bytes(image)
            width, height = image_size(data, max_pixels)
            return _PendingImage(height, width, lambda: decode_tensor(data, max_pixels))
        if isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"a numpy image must be an HxWx3 uint8 RGB array, got shape {image.shape} "
                                 f"and dtype {image.dtype}")
            image = Image.fromarray(image, "RGB")
        if isinstance(image, Image.Image):
            width, height = image.size
            return _PendingImage(height, width, lambda: image_to_tensor(to_rgb(image)))
        raise TypeError(f"an image must be a path, bytes, a PIL image or a numpy array, got {type(image).__name__}")

    def _params(self, score_threshold: float | None, max_faces: int | None) -> DetectionParams:
        defaults = self.served.config.detection_defaults
        return DetectionParams(defaults.score_threshold if score_threshold is None else float(score_threshold),
                               defaults.max_faces if max_faces is None else int(max_faces))

    # --- what it runs ---------------------------------------------------------------------------

    @property
    def demo(self) -> bool:
        """Whether the archive holds generated demo weights (meaningless detections)."""
        return self.served.info.demo

    @property
    def precision(self) -> str:
        return self.served.precision.effective

    @property
    def runtime(self) -> str:
        """What runs the forwards: ``torch`` or ``openvino`` (see ``runtime_choice``)."""
        return self.served.runtime.effective

    def close(self) -> None:
        self._decode_pool.shutdown(wait=True)

    def __enter__(self) -> Img2Pose:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _pose_stat(value: PoseStat) -> np.ndarray | Sequence[float]:
    """6 numbers, or their .npy file read (checked with the other statistic by ``stage_model_files``)."""
    return np.load(value, allow_pickle=False) if isinstance(value, (str, os.PathLike)) else value


def _labelled(error: Exception, n: int, labels: bool) -> Exception:
    if labels and isinstance(error, RequestError):
        return error.prefixed(f"images[{n}]: ")
    return error


def _raise_if_error(result: list[FaceDict] | Exception) -> list[FaceDict]:
    if isinstance(result, Exception):
        raise result
    return result
