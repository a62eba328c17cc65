"""Process-wide state belongs to whoever owns the process: loading a model in someone else's process
changes neither torch's thread count nor Pillow's bomb guard (the worker sets both at its start; see
test_image_decoding for the guard)."""

from __future__ import annotations

import pytest
import torch

from img2pose_serve import Img2Pose
from img2pose_serve.runtime.handler_config import HandlerConfig
from img2pose_serve.runtime.served_model import ServedModel

pytestmark = pytest.mark.slow  # two model loads


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield 2
    torch.set_num_threads(before)


def test_loading_an_archive_with_a_thread_setting_leaves_the_process_alone(demo_model_dir, threads):
    served = ServedModel.load(demo_model_dir, HandlerConfig(torch_threads=1))
    assert served.config.torch_threads == 1
    assert torch.get_num_threads() == threads


def test_the_in_process_api_sets_threads_only_when_asked_by_name(demo_model_dir, threads):
    with pytest.warns(UserWarning, match="DEMO ARCHIVE"):
        Img2Pose(demo_model_dir).close()
    assert torch.get_num_threads() == threads
    with pytest.warns(UserWarning, match="DEMO ARCHIVE"):
        Img2Pose(demo_model_dir, torch_threads=1).close()
    assert torch.get_num_threads() == 1
