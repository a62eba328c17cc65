"""img2pose in this process, no server: the reference library's ``Img2Pose`` API.

    from img2pose_serve import Img2Pose
    detector = Img2Pose("model_store/img2pose.mar")          # or Img2Pose(model_path="img2pose_v1.pth")
    faces = detector.detect_faces("photo.jpg")              # one image -> [FaceDict, ...]; detector(...) alike
    per_image = detector.detect_faces(["a.jpg", "b.png"])    # a list -> one list per image
    crops = detector.align_faces("photo.jpg", faces)         # PIL images, 224x224 (or 112)
    drawn = detector.visualize("photo.jpg", faces)           # RGB uint8 array

The model is the one the archive's TorchServe worker serves (``served_model.ServedModel``: the same
settings, precision and limits), images are read exactly as the handler reads them, and a list runs in
the forwards the handler would plan (``forward_plan``): every image's answer equals what the server
answers for it alone. Images are decoded in ``decode_threads`` threads just before their forward, so
memory follows one forward, not the whole list.

An image is a path (``str`` or ``os.PathLike``), its encoded bytes, a PIL image, or an HxWx3 ``uint8``
numpy array taken as RGB (as the reference takes it). Crops are ``face_alignment``'s, the server's
too; drawing is ``face_drawing``'s, ``img2pose-visualize``'s too. What differs from the reference library
is in docs/in-process.md.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
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
from .face_alignment import aligned_crops, check_align_size
from .face_drawing import FaceStyle, draw_faces
from .group_forward import run_group
from .handler_config import HandlerConfig
from .image_decoding import check_resizable, decode_image, decode_tensor, image_size, image_to_tensor, to_rgb
from .served_model import ServedModel

__all__ = ["Img2Pose", "ImageInput", "DEFAULT_ARCHIVE", "align_face_dicts"]

ImageInput = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray]  # noqa: UP007
PoseStat = Union[Sequence[float], str, os.PathLike]  # noqa: UP007 - 6 numbers, or their .npy file
Crop = Union[Image.Image, np.ndarray]  # noqa: UP007 - an aligned face: PIL, or HxWx3 uint8 with return_array
DEFAULT_ARCHIVE = Path("model_store") / "img2pose.mar"  # where README's build puts it


@dataclass(frozen=True)
class _PendingImage:
    """An image whose size is known and whose tensor is made only when its forward is due."""

    height: int
    width: int
    tensor: Callable[[], Tensor]


class Img2Pose:
    """Face boxes, 6DoF poses and five keypoints per face, from a model archive, in this process."""

    def __init__(self, archive: str | os.PathLike | None = None, *, device: str | torch.device = "auto",
                 score_threshold: float | None = None, max_faces: int | None = None,
                 model_path: str | os.PathLike | None = None, min_size: int | None = None,
                 max_size: int | None = None, **settings: Any) -> None:
        """``archive``: a ``.mar`` (or an unpacked one); default ``model_store/img2pose.mar``.
        ``model_path``: an official-layout checkpoint instead, with the identity pose statistics, as the
        reference's ``model_path`` (``from_checkpoint`` takes the real ones); not both.
        ``device``: ``auto`` (CUDA when there is one, the reference's default), ``cpu`` or ``cuda[:N]``.
        ``score_threshold``, ``max_faces``, ``min_size``, ``max_size`` and ``settings``: handler settings that
        replace the archive's (``precision``, ``runtime``, ... see ``HandlerConfig``), each only where given;
        an unknown one or a bad value raises ``HandlerConfigError``. ``torch_threads=N`` sets torch's thread
        count for the whole process; without it (the archive's setting included) the process's count is
        left alone."""
        if model_path is not None and archive is not None:
            raise ValueError("give an archive or a model_path (a checkpoint), not both")
        named = {"score_threshold": score_threshold, "max_faces": max_faces, "min_size": min_size,
                 "max_size": max_size}
        settings = {**{name: value for name, value in named.items() if value is not None}, **settings}
        if model_path is not None:
            with _staged_checkpoint(model_path) as directory:
                self._load(directory, device, settings)
        else:
            self._load(DEFAULT_ARCHIVE if archive is None else archive, device, settings)

    def _load(self, archive: str | os.PathLike, device: str | torch.device, settings: dict[str, Any]) -> None:
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
            warnings.warn(archive_layout.DEMO_NOTICE, stacklevel=3)

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike, pose_mean: PoseStat | None = None,
                        pose_stddev: PoseStat | None = None, *, trust: bool = False,
                        device: str | torch.device = "auto", **settings: Any) -> Img2Pose:
        """From an official-layout checkpoint (``img2pose_v1.pth``), the way an archive built from it runs.

        ``pose_mean`` / ``pose_stddev``: 6 numbers each, or their ``.npy`` files. Without them the pose
        statistics are the identity ones, as the reference library's ``Img2Pose(model_path=...)`` uses.
        ``trust``: see ``checkpoint.read_checkpoint`` (a file that pickles more than tensors is refused).
        """
        with _staged_checkpoint(checkpoint, pose_mean, pose_stddev, trust=trust) as directory:
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

    __call__ = detect_faces

    def detect_each(self, images: Sequence[ImageInput], score_threshold: float | None = None,
                    max_faces: int | None = None, *, labels: bool = True) -> list[list[FaceDict] | Exception]:
        """Per image: its FaceDicts, or the exception that image met (the others are still answered).

        Python type mistakes (an array that is not HxWx3 uint8, an object that is no image) raise at once.
        """
        params = self._params(score_threshold, max_faces)
        results: dict[int, list[FaceDict] | Exception] = {}
        pending: dict[int, _PendingImage] = {}
        config = self.served.config
        for n, image in enumerate(images):
            try:
                read = self._pending(image)
                check_resizable(read.width, read.height, config.min_size, config.max_size)
                pending[n] = read
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
        image = _pil_image(image)
        width, height = image.size
        return _PendingImage(height, width, lambda: image_to_tensor(to_rgb(image)))

    def _rgb_image(self, image: ImageInput) -> Image.Image:
        return _read_rgb(image, self.served.config.max_image_pixels)

    def _params(self, score_threshold: float | None, max_faces: int | None) -> DetectionParams:
        defaults = self.served.config.detection_defaults
        return DetectionParams(defaults.score_threshold if score_threshold is None else float(score_threshold),
                               defaults.max_faces if max_faces is None else int(max_faces))

    # --- drawing and aligned crops -------------------------------------------------------------

    def visualize(self, image: ImageInput, faces: list[FaceDict] | None = None, show_box: bool = True,
                  show_keypoints: bool = True, show_confidence: bool = True,
                  box_color: tuple[int, int, int] = (0, 255, 0), keypoint_color: tuple[int, int, int] = (255, 0, 0),
                  thickness: int = 2) -> np.ndarray:
        """The image (HxWx3 uint8 RGB array) with ``faces`` drawn on it: boxes ``thickness`` wide, the
        confidence above each box, the keypoints as discs. ``faces`` None: this image's ``detect_faces``."""
        rgb = self._rgb_image(image)
        if faces is None:
            faces = self.detect_faces(rgb)
        style = FaceStyle(tuple(box_color), tuple(keypoint_color), line_width=thickness,
                          keypoint_radius=max(2, thickness), show_box=show_box, show_keypoints=show_keypoints,
                          show_label=show_confidence)
        return np.array(draw_faces(rgb.copy(), faces, style))

    def align_faces(self, image: ImageInput, faces: list[FaceDict], output_size: int = 224,
                    return_array: bool = False) -> list[Crop]:
        """One aligned square crop per face, in the order of ``faces`` (see ``align_face_dicts``);
        ``image`` is read as ``detect_faces`` reads it."""
        return align_face_dicts(image, faces, output_size, return_array,
                                max_image_pixels=self.served.config.max_image_pixels)

    def align_faces_batch(self, images: Sequence[ImageInput], faces_per_image: Sequence[list[FaceDict]],
                          output_size: int = 224, return_array: bool = False) -> list[list[Crop]]:
        """``align_faces`` of each image with its faces; ValueError if the two lists differ in length."""
        if len(images) != len(faces_per_image):
            raise ValueError(f"images and faces_per_image differ in length: {len(images)} and "
                             f"{len(faces_per_image)}")
        check_align_size(output_size)
        return [self.align_faces(image, faces, output_size, return_array)
                for image, faces in zip(images, faces_per_image)]

    def detect_and_align(self, image: ImageInput | list[ImageInput], output_size: int = 224,
                         score_threshold: float | None = None, max_faces: int | None = None,
                         return_array: bool = False) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
        """``detect_faces`` and ``align_faces`` in one call: per face ``{"image": crop, "box", "confidence",
        "pose", "keypoints"}``; a list of images gives one such list per image, each image's faces those
        it gets alone (``detect_faces`` of the list)."""
        check_align_size(output_size)
        if isinstance(image, (list, tuple)):
            faces_per_image = self.detect_faces(image, score_threshold, max_faces)
            crops = self.align_faces_batch(image, faces_per_image, output_size, return_array)
            return [_with_crops(faces, image_crops) for faces, image_crops in zip(faces_per_image, crops)]
        rgb = self._rgb_image(image)  # read once, for the detection and the crops
        faces = self.detect_faces(rgb, score_threshold, max_faces)
        return _with_crops(faces, self.align_faces(rgb, faces, output_size, return_array))

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


def align_face_dicts(image: ImageInput, faces: Sequence[FaceDict], output_size: int = 224,
                     return_array: bool = False, *,
                     max_image_pixels: int = HandlerConfig.max_image_pixels) -> list[Crop]:
    """The reference library's ``align_faces`` without a model: each FaceDict's ``pose`` -> a crop of
    ``image``, ``output_size`` square (``face_alignment.ALIGN_SIZES``, else ValueError naming them), PIL
    images or, with ``return_array``, HxWx3 uint8 arrays. No faces: ``[]`` (the image is not read).
    ``image`` is read as ``detect_faces`` reads it, refused over ``max_image_pixels``.
    """
    size = check_align_size(output_size)
    if len(faces) == 0:
        return []
    rgb = np.asarray(_read_rgb(image, max_image_pixels))
    crops = aligned_crops(rgb, np.array([face["pose"] for face in faces], dtype=np.float64), size)
    return crops if return_array else [Image.fromarray(crop, "RGB") for crop in crops]


def _read_rgb(image: ImageInput, max_pixels: int) -> Image.Image:
    """The image in mode RGB, read as ``detect_faces`` reads it (the same pixels, the same errors)."""
    if isinstance(image, (str, os.PathLike)):
        return decode_image(Path(image).read_bytes(), max_pixels)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return decode_image(bytes(image), max_pixels)
    return to_rgb(_pil_image(image))


def _with_crops(faces: list[FaceDict], crops: list[Crop]) -> list[dict[str, Any]]:
    return [{"image": crop, **face} for face, crop in zip(faces, crops)]


def _pil_image(image: Any) -> Image.Image:
    """A PIL image as it is, or an HxWx3 uint8 array as an RGB one; ValueError / TypeError otherwise."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"a numpy image must be an HxWx3 uint8 RGB array, got shape {image.shape} "
                             f"and dtype {image.dtype}")
        return Image.fromarray(image, "RGB")
    if isinstance(image, Image.Image):
        return image
    raise TypeError(f"an image must be a path, bytes, a PIL image or a numpy array, got {type(image).__name__}")


@contextmanager
def _staged_checkpoint(checkpoint: str | os.PathLike, pose_mean: PoseStat | None = None,
                       pose_stddev: PoseStat | None = None, *, trust: bool = False) -> Iterator[Path]:
    """An official-layout checkpoint staged as an unpacked archive in a temporary directory, for its
    ``with`` block. Without pose statistics: the identity ones (the reference's ``model_path``)."""
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
        yield directory


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
