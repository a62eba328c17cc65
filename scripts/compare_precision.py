#!/usr/bin/env python3
"""What switching an archive to ``precision: bf16`` changes, measured on your weights and photos.

See ``img2pose_tools.compare_precision``."""

from img2pose_tools.compare_precision import main

if __name__ == "__main__":
    raise SystemExit(main())
