#!/usr/bin/env python3
"""``python scripts/backfill.py ...``: the ``backfill`` console command (img2pose_client.backfill), runnable from a checkout."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "handler"))

from img2pose_client.backfill import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
