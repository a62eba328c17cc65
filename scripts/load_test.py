#!/usr/bin/env python3
"""A bounded load test against a running img2pose TorchServe (loopback only). See ``img2pose_tools.load_test``."""

from img2pose_tools.load_test import main

if __name__ == "__main__":
    raise SystemExit(main())
