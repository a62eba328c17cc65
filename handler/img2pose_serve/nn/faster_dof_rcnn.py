"""FasterDoFRCNN: img2pose's Faster R-CNN with a 6DoF head, assembled from torchvision parts, and
:func:`build_detector`, which makes one ready to run from a checkpoint and pose statistics."""

from __future__ import annotations

import math
from collections import OrderedDict
from contextvars import ContextVar
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN, resnet_fpn_backbone
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from . import reference_data
from .bf16 import bf16_stage, check_precision, forward_autocast
from .checkpoint import load_into, read_checkpoint
from .passes import cat_feature_maps, pass_slices
from .pose import PoseDecoder
from .roi_align_kernel import compiled_kernel
from .roi_heads import DoFRoIHeads
from .rpn import LogitRankedRPN, SingleConvRPNHead, img2pose_anchor_generator

# The resize before the network (torchvision's GeneralizedRCNNTransform): the shorter side to min_size
# pixels unless the longer would then pass max_size, which caps it instead. The reference library's
# defaults; both are constructor arguments there (``Img2Pose(min_size=..., max_size=...)``) and here.
DEFAULT_MIN_SIZE = 640
DEFAULT_MAX_SIZE = 1400
SIZE_DIVISIBLE = 32  # resized images are zero-padded to a canvas of multiples of this
# The smallest min_size taken: below one canvas unit the canvas's short side stays SIZE_DIVISIBLE pixels
# (the backbone's stride-32 level is one cell) while the image shrinks inside it, so less buys nothing;
# and at min_size 1 the resize rounds some sides to 0 pixels (49 * (1 / 49) < 1) and fails.
MIN_SIZE_FLOOR = SIZE_DIVISIBLE
IMAGE_MEAN = [0.485, 0.456, 0.406]
IMAGE_STD = [0.229, 0.224, 0.225]
NUM_CLASSES = 2  # background, face
# The stages that hold almost all of the arithmetic; in bf16 they are replaced by bf16 copies.
BF16_STAGES = ("backbone.body", "backbone.fpn", "rpn.head.conv", "roi_heads.box_head", "roi_heads.class_head")
# Whether the running ``detect`` call handed its input tensors over (``consume_inputs``). A context
# variable, not a module attribute: each thread (and task) sees its own call's value, so concurrent
# ``detect`` calls cannot see each other's.
_CONSUME_INPUTS: ContextVar[bool] = ContextVar("img2pose_consume_inputs", default=False)
# What runs a forward's arithmetic (see FasterDoFRCNN.set_runtime).
RUNTIMES = ("torch", "openvino")


class FasterDoFRCNN(GeneralizedRCNN):
    """img2pose's detector with the settings the reference uses at inference.

    ``forward(images)`` takes a list of float32 CHW tensors in [0, 1] and returns, per image,
    ``{"boxes", "labels", "scores", "dofs", "keypoints"}``, best score first: boxes (N, 4) and the five
    keypoints (N, 5, 2; float64, see ``KEYPOINT_INDICES``) in original-image pixels, poses (N, 6) for
    the resized image's camera.

    Images that share one forward are zero-padded to a common canvas, and padding changes the
    features near the borders. Callers that need each image's result to equal a single-image run
    must only batch images with the same :func:`padded_canvas_shape` (see ``forward_plan``).
    """

    def __init__(self, pose_decoder: PoseDecoder, images_per_pass: int | None = None,
                 min_size: int = DEFAULT_MIN_SIZE, max_size: int = DEFAULT_MAX_SIZE) -> None:
        """``images_per_pass``: run backbone, RPN head and RoI heads in passes of this many images (None:
        all at once). Results are identical either way; see ``passes`` for why a CPU wants small passes.
        ``min_size`` / ``max_size``: the resize (see DEFAULT_MIN_SIZE; ``check_resize_sizes``)."""
        if images_per_pass is not None and images_per_pass < 1:
            raise ValueError(f"images_per_pass must be >= 1 or None, got {images_per_pass}")
        check_resize_sizes(min_size, max_size)
        backbone = BackboneInPasses(resnet_fpn_backbone(backbone_name="resnet18", weights=None), images_per_pass)
        anchors = img2pose_anchor_generator()
        rpn = LogitRankedRPN(
            anchors,
            SingleConvRPNHead(backbone.out_channels, anchors.num_anchors_per_location()[0], images_per_pass),
            # Training-only matching settings.
            fg_iou_thresh=0.5,
            bg_iou_thresh=0.3,
            batch_size_per_image=256,
            positive_fraction=0.5,
            pre_nms_top_n={"training": 6000, "testing": 6000},
            post_nms_top_n={"training": 2000, "testing": 1000},
            nms_thresh=0.4,
        )
        roi_heads = DoFRoIHeads(backbone.out_channels, NUM_CLASSES, pose_decoder, images_per_pass=images_per_pass)
        transform = KeypointProjectingTransform(pose_decoder, min_size, max_size, IMAGE_MEAN, IMAGE_STD,
                                                size_divisible=SIZE_DIVISIBLE)
        super().__init__(backbone, rpn, roi_heads, transform)
        self.images_per_pass = images_per_pass
        self.precision = "fp32"  # see set_precision
        self.runtime = "torch"  # see set_runtime
        self._fp32_stages: dict[str, nn.Module] = {}  # while in bf16: the originals of BF16_STAGES

    @property
    def min_size(self) -> int:
        """The resize's short-side target (read from the transform, which applies it)."""
        return self.transform.min_size[-1]

    @property
    def max_size(self) -> int:
        """The resize's cap on the long side."""
        return self.transform.max_size

    def set_precision(self, precision: str, reversible: bool = True) -> None:
        """``fp32`` (exact, the default) or ``bf16`` (see ``precision``); the torch runtime only.

        bf16 swaps ``BF16_STAGES`` for bf16 copies made from the current weights and device (call it
        after loading and ``.to(device)``); fp32 puts the untouched originals back. With
        ``reversible=False`` the originals are not kept (about 100 MB less memory; a serving worker
        never switches back), and switching back raises.
        """
        check_precision(precision)
        if precision == self.precision:
            return
        if self.runtime != "torch":
            raise RuntimeError(f"precision {precision} needs the torch runtime; this model runs in {self.runtime}")
        if precision == "bf16":
            originals = {name: self.get_submodule(name) for name in BF16_STAGES}
            replacements = {name: bf16_stage(stage) for name, stage in originals.items()}
            self._fp32_stages = originals if reversible else {}
        elif self._fp32_stages:
            replacements = self._fp32_stages
        else:
            raise RuntimeError("this model was switched to bf16 with reversible=False: build it again for fp32")
        for name, stage in replacements.items():
            self.set_submodule(name, stage)
        self.precision = precision

    def set_runtime(self, runtime: str, threads: int | None = None, weights_key: str | None = None) -> None:
        """``torch`` (the default: the reference's arithmetic, bit for bit) or ``openvino`` (faster on a CPU).

        ``openvino`` replaces ``backbone``, ``rpn.head`` and the RoI heads' MLPs: OpenVINO models converted
        from them, and the pyramid's convs by Winograd (``openvino_stages``, ``pyramid_convs``; ``threads``:
        OpenVINO's thread count, torch's by default; ``weights_key``: see ``openvino_stages``). It also runs
        the pose branch only on the proposals whose face score passes the RoI heads' cut
        (``DoFRoIHeads.pose_on_candidates``). Both change answers only in the last bits; a batch still
        equals one image at a time. One way only, fp32 on a CPU only: the torch modules it replaces are
        released.
        """
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {list(RUNTIMES)}, got {runtime!r}")
        if runtime == self.runtime:
            return
        if runtime == "torch":
            raise RuntimeError("this model runs in OpenVINO: build it again for the torch runtime")
        device = next(self.parameters()).device
        if device.type != "cpu" or self.precision != "fp32":
            raise ValueError(f"the openvino runtime runs fp32 on a CPU; this model is {self.precision} on {device}")
        from .openvino_stages import openvino_stages  # openvino is imported only when used

        for name, stage in openvino_stages(self, threads or torch.get_num_threads(), weights_key).items():
            self.set_submodule(name, stage)
        self.roi_heads.pose_on_candidates = True
        self.runtime = runtime

    @torch.inference_mode()
    def detect(self, images: list[Tensor], consume_inputs: bool = False) -> list[dict[str, Tensor]]:
        """One forward over ``images`` in eval mode, without autograd bookkeeping, at ``precision``.

        ``consume_inputs=True`` hands the tensors over: they are normalised in place (saving two
        full-resolution temporaries per image; results are bit-identical) and hold garbage afterwards.
        """
        if self.training:
            raise RuntimeError("FasterDoFRCNN is inference-only: call .eval() first")
        consuming = _CONSUME_INPUTS.set(consume_inputs)
        try:
            with forward_autocast(next(self.parameters()).device.type, self.precision):
                return self(images)
        finally:
            _CONSUME_INPUTS.reset(consuming)


class BackboneInPasses(nn.Module):
    """torchvision's ResNet-FPN backbone (its ``body`` and ``fpn``, same state-dict keys), run in passes.

    Each pass's input takes the memory format of the body's weights: channels_last once the bf16
    copies replace them (``set_precision``), the usual layout otherwise.
    """

    def __init__(self, backbone: BackboneWithFPN, images_per_pass: int | None = None) -> None:
        super().__init__()
        self.body = backbone.body
        self.fpn = backbone.fpn
        self.out_channels = backbone.out_channels
        self.images_per_pass = images_per_pass

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        channels_last = self.body.conv1.weight.is_contiguous(memory_format=torch.channels_last)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        return cat_feature_maps([self.fpn(self.body(x[part].contiguous(memory_format=memory_format)))
                                 for part in pass_slices(x.shape[0], self.images_per_pass)])


class KeypointProjectingTransform(GeneralizedRCNNTransform):
    """torchvision's transform; its postprocess also projects each face's keypoints into the original image.

    Boxes come back to original-image pixels by rescaling (torchvision's postprocess), but keypoints
    cannot: the camera's focal length grows with the image, so they are projected through the pose with
    the original image's own camera, as the reference does.

    When the running ``FasterDoFRCNN.detect`` call consumes its inputs, ``normalize`` overwrites the
    caller's tensor with the same values torchvision's computes into two full-resolution temporaries.
    """

    def __init__(self, pose_decoder: PoseDecoder, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pose_decoder = pose_decoder

    def normalize(self, image: Tensor) -> Tensor:
        if not (_CONSUME_INPUTS.get() and image.is_floating_point()):
            return super().normalize(image)
        mean = torch.as_tensor(self.image_mean, dtype=image.dtype, device=image.device)
        std = torch.as_tensor(self.image_std, dtype=image.dtype, device=image.device)
        return image.sub_(mean[:, None, None]).div_(std[:, None, None])

    def postprocess(self, result, image_shapes, original_image_sizes):
        result = super().postprocess(result, image_shapes, original_image_sizes)
        for prediction, (height, width) in zip(result, original_image_sizes):
            keypoints = self.pose_decoder.keypoints(prediction["dofs"].cpu().numpy(), int(width), int(height))
            prediction["keypoints"] = torch.from_numpy(keypoints).to(prediction["dofs"].device)
        return result


def check_resize_sizes(min_size: int, max_size: int) -> None:
    """ValueError, naming the size, unless both are integers and MIN_SIZE_FLOOR <= min_size <= max_size.

    max_size >= min_size keeps min_size the short side's target: below it every image's long side is
    capped, so min_size would change nothing.
    """
    for name, value in (("min_size", min_size), ("max_size", max_size)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if min_size < MIN_SIZE_FLOOR:
        raise ValueError(f"min_size must be >= {MIN_SIZE_FLOOR} (the canvas is padded to multiples of "
                         f"{SIZE_DIVISIBLE} px: a smaller one only shrinks the image inside it), got {min_size}")
    if max_size < min_size:
        raise ValueError(f"max_size must be >= min_size ({min_size}), got {max_size}")


def resized_shape(height: int, width: int, min_size: int = DEFAULT_MIN_SIZE,
                  max_size: int = DEFAULT_MAX_SIZE) -> tuple[int, int]:
    """The (h, w) GeneralizedRCNNTransform resizes an image to (shorter side ``min_size``, longer <= ``max_size``)."""
    scale = min(min_size / min(height, width), max_size / max(height, width))
    return math.floor(height * scale), math.floor(width * scale)


def padded_canvas_shape(height: int, width: int, min_size: int = DEFAULT_MIN_SIZE,
                        max_size: int = DEFAULT_MAX_SIZE) -> tuple[int, int]:
    """The zero-padded canvas an image is run on alone at these sizes; images sharing it batch bit-exactly."""
    h, w = resized_shape(height, width, min_size, max_size)
    return (math.ceil(h / SIZE_DIVISIBLE) * SIZE_DIVISIBLE, math.ceil(w / SIZE_DIVISIBLE) * SIZE_DIVISIBLE)


def build_detector(
    checkpoint: str | Path | dict,
    pose_mean=reference_data.IDENTITY_POSE_MEAN,
    pose_stddev=reference_data.IDENTITY_POSE_STDDEV,
    device: str | torch.device = "cpu",
    points_68: np.ndarray | None = None,
    images_per_pass: int | None = None,
    min_size: int = DEFAULT_MIN_SIZE,
    max_size: int = DEFAULT_MAX_SIZE,
) -> FasterDoFRCNN:
    """A FasterDoFRCNN in eval mode on ``device`` with the checkpoint's weights (strict).

    ``checkpoint`` is a path to an official-layout file or an already-read ``fpn_model`` state dict.
    The default pose statistics are the identity ones the reference uses for a bare checkpoint path.
    ``images_per_pass``, ``min_size``, ``max_size``: see ``FasterDoFRCNN``.
    """
    decoder = PoseDecoder.create(pose_mean, pose_stddev, reference_data.points_68() if points_68 is None else points_68)
    # Built without tensors, then given uninitialised memory that the checkpoint fills: torch's random
    # initialisation of every layer (0.2 s per load) would only be overwritten.
    with torch.device("meta"):
        model = FasterDoFRCNN(decoder, images_per_pass, min_size, max_size)
    model.to_empty(device="cpu")
    state = checkpoint if isinstance(checkpoint, dict) else read_checkpoint(checkpoint)
    load_into(model, state)
    if torch.device(device).type == "cpu":
        compiled_kernel()  # RoI align's CPU kernel compiles once per process: now, not on the first request
    return model.eval().to(device)
