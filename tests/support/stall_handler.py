"""A stand-in handler for queue tests: the served img2pose handler, except that a request whose body is
``STALL`` followed by a number of seconds holds its worker that long (as a long batch would, without
using the CPU) and is then answered as any body that is not an image: 400, no forward."""

import time

from img2pose_handler import Img2PoseHandler

STALL = b"img2pose-test-stall:"


class StallingImg2PoseHandler(Img2PoseHandler):
    def preprocess(self, data):
        for row in data:
            for value in row.values():
                if isinstance(value, (bytes, bytearray)) and value.startswith(STALL):
                    time.sleep(float(value[len(STALL):]))
        return super().preprocess(data)
