#!/usr/bin/env python3
"""``python scripts/backfill.py ...``: the ``backfill`` console command (img2pose_client.backfill)."""

from img2pose_client.backfill import main

if __name__ == "__main__":
    raise SystemExit(main())
