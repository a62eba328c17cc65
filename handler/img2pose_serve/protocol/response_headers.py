"""The headers img2pose adds to every answer (img2pose_client reads them)."""

DEMO_HEADER = "X-Img2Pose-Demo"  # present when the archive holds generated demo weights
PRECISION_HEADER = "X-Img2Pose-Precision"  # the precision the worker runs (the setting may ask for bf16)
