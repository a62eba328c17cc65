"""An archive turned into the model a worker serves: its settings applied, its precision chosen.

The one place where that happens: the TorchServe handler, the in-process API (``in_process``), the
benchmark and the tools all start from :meth:`ServedModel.load`, so that a model runs with the same
settings wherever it runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..nn.faster_dof_rcnn import FasterDoFRCNN
from . import archive_layout
from .forward_plan import plan_forwards
from .handler_config import HandlerConfig
from .precision_choice import PrecisionChoice, decide_by_measurement
from .precision_measurement import measure_bf16
from .runtime_choice import RuntimeChoice


@dataclass
class ServedModel:
    """The detector of one archive, configured by its ``handler:`` settings, on one device."""

    model: FasterDoFRCNN
    info: archive_layout.ArchiveInfo
    config: HandlerConfig
    device: torch.device
    precision: PrecisionChoice
    runtime: RuntimeChoice

    @classmethod
    def load(cls, directory: str | Path, config: HandlerConfig | None = None,
             device: str | torch.device = "cpu") -> ServedModel:
        """The model of an unpacked archive (``config``: its model-config.yaml's settings when None).

        Chooses the precision and the runtime before the weights are read, so a refusal (``Bf16Unavailable``,
        ``RuntimeUnavailable``) costs no model load, except where bf16 is native: it is then timed against
        fp32 on this machine (``precision_measurement``) and runs only where it pays. The openvino runtime
        takes torch's thread count.
        Process-wide settings (``torch_threads``) are the caller's: the worker applies them, the in-process
        API only when asked. Raises ``archive_layout.ArchiveIntegrityError`` when the weights are not the
        ones the archive recorded.
        """
        directory = Path(directory)
        config = config if config is not None else archive_layout.read_handler_config(directory)
        device = torch.device(device)
        precision = PrecisionChoice.for_device(config.precision, device)
        runtime = RuntimeChoice.for_device(config.runtime, device.type, precision.effective)
        model, info = archive_layout.load_detector(directory, device, config.resolved_images_per_pass(device.type),
                                                   min_size=config.min_size, max_size=config.max_size)
        if precision.needs_measurement:
            fp32_runtime = RuntimeChoice.for_device(config.runtime, device.type, "fp32").effective
            precision = decide_by_measurement(precision, measure_bf16(model, fp32_runtime, info.weights_sha256))
            runtime = RuntimeChoice.for_device(config.runtime, device.type, precision.effective)
        model.set_precision(precision.effective, reversible=False)
        model.set_runtime(runtime.effective, weights_key=info.weights_sha256)
        return cls(model, info, config, device, precision, runtime)

    def plan(self, image_sizes: Sequence[tuple[int, int]]) -> list[list[int]]:
        """Forwards whose results equal one-image-at-a-time results, within this model's limits, on the
        canvases of this model's resize."""
        return plan_forwards(image_sizes, self.config.max_images_per_forward, self.config.max_pixels_per_forward,
                             min_size=self.model.min_size, max_size=self.model.max_size)

    def forward(self, tensors: list[Tensor]) -> list[dict[str, Tensor]]:
        """One forward over images of one planned group; the tensors are consumed (hold garbage after)."""
        return self.model.detect([tensor.to(self.device) for tensor in tensors], consume_inputs=True)
