"""A stand-in handler for fault tests: the served img2pose handler, except that a request whose body
holds ``POISON`` kills its worker with SIGKILL (what the OOM killer does), every time it is sent."""

import os
import signal

from img2pose_handler import Img2PoseHandler

POISON = b"img2pose-test-poison"


class PoisonedImg2PoseHandler(Img2PoseHandler):
    def preprocess(self, data):
        for row in data:
            if any(isinstance(value, (bytes, bytearray)) and POISON in value for value in row.values()):
                os.kill(os.getpid(), signal.SIGKILL)
        return super().preprocess(data)
