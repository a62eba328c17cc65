"""RoI align over an FPN: torchvision's pooling, computed on a CPU by a faster kernel spread over threads.

With 1,000 proposals per image RoI align is a sizeable share of a forward. On a CPU, float32 features
are pooled by ``roi_align_kernel`` (torchvision's arithmetic on channels-last features, bit-identical,
about 5x faster) instead of torchvision's kernel, which also runs on one thread whatever
``torch.get_num_threads()`` says. Every RoI is pooled independently of the others, so each level's
RoIs are pooled in chunks on several threads (the kernel releases the GIL), each writing its own rows.
Levels, scales and the RoI format are torchvision's own (``MultiScaleRoIAlign``), so the features equal
torchvision's bit for bit, in its row order. Other devices and dtypes take torchvision's path.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.poolers import _convert_to_roi_format, _filter_input, _setup_scales

from .roi_align_kernel import compiled_kernel

MIN_ROIS_PER_CHUNK = 64  # below this a thread hand-off costs more than it saves


class ThreadedMultiScaleRoIAlign(MultiScaleRoIAlign):
    """torchvision's ``MultiScaleRoIAlign`` whose CPU float32 work runs ``roi_align_kernel`` on
    ``torch.get_num_threads()`` threads."""

    _pool: ThreadPoolExecutor | None = None
    _pool_size = 0

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        levels = _filter_input(x, self.featmap_names)
        height, width = self.output_size
        if (levels[0].device.type != "cpu" or levels[0].dtype != torch.float32 or self.sampling_ratio <= 0
                or height != width):  # what the kernel computes: CPU float32, a fixed sampling ratio, square bins
            return super().forward(x, boxes, image_shapes)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(levels, image_shapes, self.canonical_scale,
                                                         self.canonical_level)
        rois = _convert_to_roi_format(boxes).float().contiguous()
        level_of = self.map_levels(boxes) if len(levels) > 1 else torch.zeros(len(rois), dtype=torch.int64)
        pooled = torch.empty((len(rois), levels[0].shape[1], height, width))
        kernel, out = compiled_kernel(), pooled.numpy()
        work = []
        for level, (feature, scale) in enumerate(zip(levels, self.scales)):
            rows = torch.where(level_of == level)[0]
            if not len(rows):
                continue
            channels_last = feature.permute(0, 2, 3, 1).contiguous().numpy()
            for chunk in rows.tensor_split(max(1, min(torch.get_num_threads(), len(rows) // MIN_ROIS_PER_CHUNK))):
                work.append((channels_last, rois[chunk].numpy(), chunk.numpy(), np.float32(scale)))

        def pool(item) -> None:
            features, chunk_rois, chunk_rows, scale = item
            kernel(features, chunk_rois, chunk_rows, scale, height, self.sampling_ratio, out)

        if len(work) > 1 and torch.get_num_threads() > 1 and len(rois) >= 2 * MIN_ROIS_PER_CHUNK:
            list(self._threads(min(torch.get_num_threads(), len(work))).map(pool, work))
        else:
            for item in work:
                pool(item)
        return pooled

    def __getstate__(self) -> dict:
        state = super().__getstate__()  # copies and pickles of the module start without threads
        state.pop("_pool", None)
        state.pop("_pool_size", None)
        return state

    def _threads(self, count: int) -> ThreadPoolExecutor:
        if self._pool_size < count:
            if self._pool is not None:
                self._pool.shutdown(wait=False)
            self._pool, self._pool_size = ThreadPoolExecutor(count, thread_name_prefix="roi-align"), count
        return self._pool
