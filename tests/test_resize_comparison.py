"""scripts/measure_forward.py --sizes: the arithmetic of its table, on stand-in models (no forward here)."""

from __future__ import annotations

import argparse

import pytest
import torch

from img2pose_tools import resize_comparison
from img2pose_tools.resize_comparison import anchor_in_original, compare_sizes, found_again, size_pair, table


def test_size_pairs_are_read_as_min_slash_max():
    assert size_pair("400/1400") == (400, 1400)
    with pytest.raises(argparse.ArgumentTypeError, match="MIN/MAX"):
        size_pair("400x1400")


def test_found_again_pairs_each_face_once_by_overlap():
    reference = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]])
    other = torch.tensor([[1.0, 1, 11, 11], [0, 0, 10, 10], [20, 20, 26, 26], [100, 100, 110, 110]])
    # the first reference face is found (by one of two candidates), the second overlaps by 0.36 only
    assert found_again(reference, other) == 1
    assert found_again(reference, reference) == 3
    assert found_again(reference, torch.zeros((0, 4))) == 0


def test_the_smallest_anchor_in_original_pixels_scales_with_the_resize():
    assert anchor_in_original(1080, 1920, 640, 1400) == 27.0  # 1080 -> 640
    assert anchor_in_original(1080, 1920, 400, 1400) == pytest.approx(43.2)
    assert anchor_in_original(600, 1800, 480, 1000) == pytest.approx(16 * 600 / 333)  # the cap decides


class StandIn:
    """A model whose one face per image is shifted by ``shift`` px; records the order it ran in."""

    def __init__(self, shift: float, calls: list) -> None:
        self.shift, self.calls = shift, calls

    def detect(self, images):
        self.calls.append(self)
        box = torch.tensor([[10.0, 10, 30, 30]]) + self.shift
        return [{"boxes": box, "scores": torch.tensor([0.9])}]


def test_sizes_alternate_and_faces_are_counted_against_the_first_size(monkeypatch):
    calls = []
    models = {("torch", (640, 1400)): StandIn(0.0, calls), ("torch", (400, 1400)): StandIn(1.0, calls),
              ("torch", (480, 1000)): StandIn(15.0, calls)}
    images = {"a": torch.zeros(3, 48, 64), "b": torch.zeros(3, 64, 48)}
    results = compare_sizes(models, torch.zeros(3, 480, 640), images, repeats=2)
    first, close, far = models.values()
    assert calls[:9] == [first, first, first, close, close, close, far, far, far]  # warm-up, model by model
    assert calls[9:12] == [first, close, far] and calls[18:21] == [close, far, first]  # then alternating
    assert [(r.sizes, r.set_faces, r.found_again) for r in results] == [
        ((640, 1400), 2, None), ((400, 1400), 2, 2), ((480, 1000), 2, 0)]
    assert results[1].photo_canvas == (416, 544)
    lines = table(results, (640, 480)).splitlines()
    assert len(lines) == 5 and "(baseline)" in lines[2] and "2 of 2 (100%)" in lines[3] and "0 of 2 (0%)" in lines[4]
    assert resize_comparison.THRESHOLD == 0.5
