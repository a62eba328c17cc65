#!/usr/bin/env python3
"""Throughput and latency of img2pose on TorchServe, swept over the batching settings.

See ``img2pose_tools.benchmark``."""

from img2pose_tools.benchmark import main

if __name__ == "__main__":
    raise SystemExit(main())
