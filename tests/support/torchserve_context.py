"""A stand-in for TorchServe's Context, recording what the handler sets per request."""

from __future__ import annotations

from ts.context import Context, RequestProcessor
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

from img2pose_tools.torchserve_launcher import REPO

METRICS_YAML = REPO / "config" / "metrics.yaml"


def make_context(model_dir, handler_settings: dict | None = None, headers: list[dict] | None = None) -> Context:
    """A real ts Context over ``model_dir``; ``headers`` are the batch's request headers, one dict each."""
    metrics = MetricsCacheYamlImpl(config_file_path=str(METRICS_YAML))
    metrics.initialize_cache()
    context = Context(
        model_name="img2pose",
        model_dir=str(model_dir),
        manifest={"model": {"handler": "img2pose_handler.py"}},
        batch_size=8,
        gpu=None,
        mms_version="0.12.0",
        metrics=metrics,
        model_yaml_config={"handler": handler_settings or {}},
    )
    set_requests(context, headers or [{}])
    return context


def set_requests(context: Context, headers: list[dict]) -> None:
    """Start a new batch of ``len(headers)`` requests with these headers."""
    context.request_processor = [RequestProcessor(h) for h in headers]
    context.request_ids = {i: f"request-{i}" for i in range(len(headers))}  # as ts.service sets them
    context.metrics.set_request_ids(context.request_ids)
