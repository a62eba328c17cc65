"""Region proposals as img2pose makes them, on torchvision's RPN."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import boxes as box_ops

from .bf16 import run_fp32
from .passes import cat_levels, pass_slices

# img2pose declares a sixth anchor size (512) for five feature maps; only the first five are ever
# used, and torchvision's AnchorGenerator rightly refuses the mismatch.
ANCHOR_SIZES = ((16,), (32,), (64,), (128,), (256,))
ASPECT_RATIOS = ((0.5, 1.0, 2.0),) * len(ANCHOR_SIZES)


def img2pose_anchor_generator() -> AnchorGenerator:
    return Float32AnchorGenerator(sizes=ANCHOR_SIZES, aspect_ratios=ASPECT_RATIOS)


class Float32AnchorGenerator(AnchorGenerator):
    """torchvision's anchors, always in float32.

    torchvision makes anchors in the dtype of the first feature map. Under bf16 autocast that is
    bfloat16, whose 8-bit mantissa cannot hold pixel coordinates: above 512 it steps by 4 px, so
    anchors (and every proposal decoded from them) would land on a coarse grid.
    """

    def set_cell_anchors(self, dtype: torch.dtype, device: torch.device) -> None:
        super().set_cell_anchors(torch.float32, device)


class SingleConvRPNHead(RPNHead):
    """torchvision's RPN head with its shared 3x3 conv stored as a bare ``conv`` (checkpoint naming).

    torchvision wraps that conv in ``conv.0.0`` (a Conv2dNormActivation) and renames ``conv.*`` keys
    to the wrapped names when loading state without version metadata; img2pose checkpoints use the
    bare name, so both the module layout and the loading hook are replaced.
    """

    def __init__(self, in_channels: int, num_anchors: int, images_per_pass: int | None = None) -> None:
        super().__init__(in_channels, num_anchors)
        self.images_per_pass = images_per_pass  # see ``passes``
        self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=1, padding=1)
        nn.init.normal_(self.conv.weight, std=0.01)
        nn.init.constant_(self.conv.bias, 0)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        nn.Module._load_from_state_dict(self, *args, **kwargs)

    def forward(self, x: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        passes = [self._head([level[part] for level in x]) for part in pass_slices(x[0].shape[0], self.images_per_pass)]
        return cat_levels([logits for logits, _ in passes]), cat_levels([deltas for _, deltas in passes])

    def _head(self, x: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        logits, deltas = [], []
        for feature in x:
            # The proposals are ranked and decoded from these two convs: float32 in every precision
            # (one cast of their shared input, a no-op in fp32).
            shared = F.relu(self.conv(feature)).float()
            logits.append(run_fp32(self.cls_logits, shared))
            deltas.append(run_fp32(self.bbox_pred, shared))
        return logits, deltas


class LogitRankedRPN(RegionProposalNetwork):
    """RPN whose per-image NMS ranks proposals by raw objectness logits, with no score threshold.

    torchvision ranks by sigmoid probabilities; float32 sigmoid saturates to 1.0 for logits above
    about 16.6, and the resulting ties reorder NMS. img2pose ranks the logits themselves.
    """

    def filter_proposals(
        self,
        proposals: Tensor,
        objectness: Tensor,
        image_shapes: list[tuple[int, int]],
        num_anchors_per_level: list[int],
    ) -> tuple[list[Tensor], list[Tensor]]:
        num_images = proposals.shape[0]
        objectness = objectness.detach().reshape(num_images, -1)
        level_ids = torch.cat(
            [torch.full((n,), level, dtype=torch.int64, device=proposals.device)
             for level, n in enumerate(num_anchors_per_level)]
        )
        top_idx = self._get_top_n_idx(objectness, num_anchors_per_level)
        rows = torch.arange(num_images, device=proposals.device)[:, None]
        candidates = zip(proposals[rows, top_idx], objectness[rows, top_idx], level_ids[top_idx], image_shapes)

        kept_boxes, kept_scores = [], []
        for boxes, logits, levels, image_shape in candidates:
            boxes = box_ops.clip_boxes_to_image(boxes, image_shape)
            keep = box_ops.remove_small_boxes(boxes, self.min_size)
            boxes, logits, levels = boxes[keep], logits[keep], levels[keep]
            keep = box_ops.batched_nms(boxes, logits, levels, self.nms_thresh)[: self.post_nms_top_n()]
            kept_boxes.append(boxes[keep])
            kept_scores.append(logits[keep])
        return kept_boxes, kept_scores
