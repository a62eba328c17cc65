#!/usr/bin/env python3
"""Build the img2pose TorchServe archive: see ``img2pose_tools.build_mar`` (same as ``img2pose-build-mar``)."""

from img2pose_tools.build_mar import main

if __name__ == "__main__":
    raise SystemExit(main())
