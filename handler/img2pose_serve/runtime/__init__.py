"""Running an archive: its layout and settings, the precision choice, forward planning, image decoding,
the group run every caller shares, and the in-process API (``Img2Pose``)."""
