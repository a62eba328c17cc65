#!/usr/bin/env python3
"""The reference library and this project's in-process API, timed side by side on the same images.

See ``img2pose_tools.compare_reference``."""

from img2pose_tools.compare_reference import main

if __name__ == "__main__":
    raise SystemExit(main())
