#!/usr/bin/env python3
"""``python scripts/visualize.py ...``: the ``visualize`` console command (img2pose_client.visualize)."""

from img2pose_client.visualize import main

if __name__ == "__main__":
    raise SystemExit(main())
