"""Reading the handler's own metrics back from a running TorchServe (GET <metrics>/metrics)."""

from __future__ import annotations

import re

import requests


class ForwardBatchMeter:
    """Reads (images, forwards) so far from the handler's Img2PoseForwardBatchSize metric."""

    def __init__(self, metrics_url: str | None, model: str) -> None:
        self.url, self.model = metrics_url, model

    def read(self) -> tuple[float, float] | None:
        if not self.url:
            return None
        try:
            text = requests.get(f"{self.url}/metrics", timeout=10).text
        except requests.RequestException:
            return None

        def total(suffix: str) -> float:
            pattern = rf'^Img2PoseForwardBatchSize_{suffix}\{{[^}}]*ModelName="{re.escape(self.model)}"[^}}]*\}} (\S+)$'
            return sum(float(v) for v in re.findall(pattern, text, re.M))

        return total("sum"), total("count")
