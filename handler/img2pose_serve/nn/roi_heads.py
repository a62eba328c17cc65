"""RoI heads of img2pose: a face/background classifier and a 6DoF pose regressor on shared proposals."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import boxes as box_ops

from .bf16 import run_fp32
from .passes import pass_slices
from .pose import PoseDecoder
from .roi_pooling import ThreadedMultiScaleRoIAlign

FACE = 1
DOF_SIZE = 6
REPRESENTATION_SIZE = 1024


class DoFPredictor(nn.Module):
    """Regresses a normalised, box-relative 6DoF pose per class: (R, 1024) -> (R, num_classes * 6)."""

    def __init__(self, in_channels: int, num_classes: int, hidden: int = 256) -> None:
        super().__init__()
        self.dof_pred = nn.Sequential(
            nn.Linear(in_channels, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes * DOF_SIZE),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.dof_pred(x.flatten(start_dim=1))


class ClassPredictor(nn.Module):
    """Face/background logits: (R, 1024) -> (R, num_classes)."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.cls_score(x.flatten(start_dim=1))


def roi_pooler() -> ThreadedMultiScaleRoIAlign:
    return ThreadedMultiScaleRoIAlign(featmap_names=["0", "1", "2", "3"], output_size=7, sampling_ratio=2)


class DoFRoIHeads(RoIHeads):
    """Inference-only RoI heads: two independent branches (pose, class) over the same proposals.

    There is no box regression: the output box of a face is the projection of the 3D reference face
    under its predicted pose (see :class:`PoseDecoder`).

    The reference pools the proposals once per branch with two identical RoIAlign poolers; pooling
    is deterministic, so pooling once and feeding both heads gives bit-identical features at half
    the pooling cost.
    """

    def __init__(
        self,
        out_channels: int,
        num_classes: int,
        pose_decoder: PoseDecoder,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 1000,
        images_per_pass: int | None = None,  # see ``passes``
    ) -> None:
        pooler = roi_pooler()
        pooled_size = out_channels * pooler.output_size[0] ** 2
        super().__init__(
            box_roi_pool=pooler,
            box_head=TwoMLPHead(pooled_size, REPRESENTATION_SIZE),
            box_predictor=DoFPredictor(REPRESENTATION_SIZE, num_classes),
            # Training-only settings: matcher and sampler are never used at inference.
            fg_iou_thresh=0.5,
            bg_iou_thresh=0.5,
            batch_size_per_image=512,
            positive_fraction=0.25,
            bbox_reg_weights=None,
            score_thresh=score_thresh,
            nms_thresh=nms_thresh,
            detections_per_img=detections_per_img,
        )
        self.class_head = TwoMLPHead(pooled_size, REPRESENTATION_SIZE)
        self.class_predictor = ClassPredictor(REPRESENTATION_SIZE, num_classes)
        self.pose_decoder = pose_decoder
        self.images_per_pass = images_per_pass
        # Pose only the proposals that can become faces (set by FasterDoFRCNN.set_runtime): see _pose_of_candidates.
        self.pose_on_candidates = False

    def forward(self, features, proposals, image_shapes, targets=None):
        if self.training or targets is not None:
            raise RuntimeError("DoFRoIHeads is inference-only")
        detections = []
        for part in pass_slices(len(proposals), self.images_per_pass):
            detections += self._detect(OrderedDict((level, f[part]) for level, f in features.items()),
                                       proposals[part], image_shapes[part])
        return detections, {}

    def _detect(self, features, proposals, image_shapes) -> list[dict[str, Tensor]]:
        # RoI align and the predictors run in float32 whatever the precision; only the two-layer
        # MLPs (box_head, class_head) follow the forward's autocast. The kernel wants contiguous
        # float32 maps: convert bf16 channels_last ones once here, not once per RoI chunk.
        features = OrderedDict((level, f.to(torch.float32, memory_format=torch.contiguous_format))
                               for level, f in features.items())
        pooled = self.box_roi_pool(features, proposals, image_shapes)
        # Both MLPs take the same input: cast it to their weights' dtype once (a no-op in fp32), not
        # once per MLP as autocast would. (The openvino runtime's MLPs have no torch weights: float32.)
        mlp_weight = getattr(getattr(self.box_head, "fc6", None), "weight", None)
        pooled = pooled.to(torch.float32 if mlp_weight is None else mlp_weight.dtype)
        class_logits = run_fp32(self.class_predictor, self.class_head(pooled))
        if self.pose_on_candidates:
            dof_regression = self._pose_of_candidates(pooled, class_logits)
        else:
            dof_regression = run_fp32(self.box_predictor, self.box_head(pooled))
        per_image = zip(
            proposals,
            dof_regression.split([len(p) for p in proposals]),
            class_logits.split([len(p) for p in proposals]),
            image_shapes,
        )
        return [self.detect_faces(*args) for args in per_image]

    def _pose_of_candidates(self, pooled: Tensor, class_logits: Tensor) -> Tensor:
        """The pose branch on the rows whose face score passes ``score_thresh``; the other rows stay zero.

        Only those rows are ever read (``detect_faces`` drops the rest first), and the branch's
        matrix products are the heaviest part of the RoI heads: on 1,000 proposals a few dozen to a
        few hundred pass. The rows' values equal the all-rows ones up to the matrix product's
        rounding, which may differ with the row count (within the golden tolerances).
        """
        rows = torch.nonzero(F.softmax(class_logits, -1)[:, FACE] > self.score_thresh).squeeze(1)
        dofs = class_logits.new_zeros((len(class_logits), self.box_predictor.dof_pred[-1].out_features))
        if len(rows):
            dofs[rows] = run_fp32(self.box_predictor, self.box_head(pooled[rows]))
        return dofs

    def detect_faces(self, proposals: Tensor, dof_regression: Tensor, class_logits: Tensor,
                     image_shape: tuple[int, int]) -> dict[str, Tensor]:
        """Scores, global poses and pose-derived boxes for one image, NMS'd, best first."""
        device = class_logits.device
        scores = F.softmax(class_logits, -1)[:, FACE]
        boxes = box_ops.clip_boxes_to_image(proposals, image_shape)
        dofs = dof_regression[:, FACE * DOF_SIZE:(FACE + 1) * DOF_SIZE]

        keep = torch.nonzero(scores > self.score_thresh).squeeze(1)
        boxes, dofs, scores = boxes[keep], dofs[keep], scores[keep]
        keep = box_ops.remove_small_boxes(boxes, min_size=1e-2)
        boxes, dofs, scores = boxes[keep], dofs[keep], scores[keep]

        poses, face_boxes = self.pose_decoder.to_global(
            boxes.cpu().numpy(), dofs.cpu().numpy(), (int(image_shape[0]), int(image_shape[1]))
        )
        face_boxes = torch.from_numpy(face_boxes).to(device)
        poses = torch.from_numpy(np.ascontiguousarray(poses)).float().to(device)
        labels = torch.full((len(scores),), FACE, dtype=torch.int64, device=device)

        # detections_per_img is not applied: img2pose's own cap is a no-op, so every face that
        # survives NMS is returned.
        keep = box_ops.batched_nms(face_boxes, scores, labels, self.nms_thresh)
        return {"boxes": face_boxes[keep], "labels": labels[keep], "scores": scores[keep], "dofs": poses[keep]}
