"""RoI align over an FPN, spread over the CPU's threads.

torchvision's CPU ``roi_align`` kernel runs on one thread whatever ``torch.get_num_threads()`` says,
and with 1,000 proposals per image it is a sizeable share of a forward, more so in bf16 (measured in
docs/precision.md, "Speed"). Every RoI is pooled independently of the others, so pooling the proposals in
chunks on several threads (the op releases the GIL) and putting the rows back in order gives
bit-identical features.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign

MIN_ROIS_PER_CHUNK = 64  # below this a thread hand-off costs more than it saves


class ThreadedMultiScaleRoIAlign(MultiScaleRoIAlign):
    """torchvision's ``MultiScaleRoIAlign`` whose CPU work is split over ``torch.get_num_threads()`` threads."""

    _pool: ThreadPoolExecutor | None = None
    _pool_size = 0

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        chunks = min(torch.get_num_threads(), sum(len(b) for b in boxes) // MIN_ROIS_PER_CHUNK)
        if chunks < 2 or next(iter(x.values())).device.type != "cpu":
            return super().forward(x, boxes, image_shapes)
        # Each image's boxes are cut into `chunks` consecutive runs; chunk k pools run k of every image.
        runs = [b.tensor_split(chunks) for b in boxes]
        inference = torch.is_inference_mode_enabled()  # thread-local: carried over to the pool by hand

        def pool_chunk(k: int) -> Tensor:
            with torch.inference_mode(inference):
                return super(ThreadedMultiScaleRoIAlign, self).forward(x, [r[k] for r in runs], image_shapes)

        pooled = list(self._threads(chunks).map(pool_chunk, range(chunks)))
        per_chunk = [p.split([len(r[k]) for r in runs]) for k, p in enumerate(pooled)]
        return torch.cat([per_chunk[k][i] for i in range(len(boxes)) for k in range(chunks)])

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
