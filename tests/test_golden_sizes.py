"""The ``min_size`` / ``max_size`` handler settings give the reference library's answers at those sizes.

``tests/golden/other_sizes.json`` holds the reference's faces with its own ``Img2Pose(min_size=...,
max_size=...)`` for a few committed images (``scripts/make_golden.py``; demo checkpoint, threshold 0.5).
Here the demo archive runs them through ``Img2Pose("img2pose.mar", min_size=..., max_size=...)``, the
archive's handler settings overridden by keyword, all of a size's images in one list (planned as the
handler plans them, on that size's canvases). One forward per image and size, on the default runtime
(openvino on a CPU), compared within the golden tolerances as tests/test_golden.py compares; the torch
runtime's bit-for-bit parity at these sizes is ``make_golden.py --check-exact --other-sizes``.
"""

from __future__ import annotations

import pytest
import torch

from img2pose_serve import Img2Pose
from tests.support.golden_set import COMMITTED, TORCH_THREADS, compare_faces
from tests.support.served_models import DEMO_MODEL

OTHER = COMMITTED.other_sizes
SIZES = list(OTHER["sizes"])
NAMES = sorted({name for entry in OTHER["sizes"].values() for name in entry["sequential"]})


def _sizes(key: str) -> tuple[int, int]:
    entry = OTHER["sizes"][key]
    return entry["min_size"], entry["max_size"]


@pytest.fixture(scope="module", params=SIZES)
def at_size(request, served_archives):
    """(size key, the detector at those sizes, our faces by image name) for each recorded size."""
    min_size, max_size = _sizes(request.param)
    names = list(OTHER["sizes"][request.param]["sequential"])
    threads = torch.get_num_threads()
    torch.set_num_threads(TORCH_THREADS)  # as the reference ran
    try:
        with pytest.warns(UserWarning, match="DEMO ARCHIVE"), \
                Img2Pose(served_archives[DEMO_MODEL], min_size=min_size, max_size=max_size) as detector:
            faces = detector.detect_faces([COMMITTED.image_path(name) for name in names],
                                          score_threshold=OTHER["threshold"], max_faces=-1)
            yield request.param, detector, dict(zip(names, faces, strict=True))
    finally:
        torch.set_num_threads(threads)


def test_the_other_sizes_were_recorded_for_the_committed_images_and_checkpoint():
    assert {"400/1400", "480/1000"} <= set(SIZES) and NAMES
    assert OTHER["recipe"]["checkpoint"] == COMMITTED.reference["recipe"]["checkpoint"]
    assert all(OTHER["images"][name] == COMMITTED.reference["images"][name] for name in NAMES)


@pytest.mark.parametrize("key", SIZES)
@pytest.mark.parametrize("name", NAMES)
def test_the_sizes_change_the_reference_s_answers(key, name):
    """Otherwise the comparison below could not tell whether the sizes are applied (no forward here)."""
    theirs = OTHER["sizes"][key]["sequential"][name]
    at_640 = COMMITTED.reference["sequential"][name]
    assert theirs and compare_faces(at_640, theirs, OTHER["threshold"], COMMITTED.image_size(name), _sizes(key)) != []


def test_the_archive_s_settings_are_overridden_by_keyword(at_size):
    key, detector, _ = at_size
    served = detector.served
    assert (served.config.min_size, served.config.max_size) == _sizes(key)
    assert (served.model.min_size, served.model.max_size) == _sizes(key)
    assert served.model.runtime == served.runtime.effective


@pytest.mark.parametrize("name", NAMES)
def test_faces_at_other_sizes_match_the_reference(at_size, name):
    key, _, ours = at_size
    theirs = OTHER["sizes"][key]["sequential"][name]
    assert compare_faces(ours[name], theirs, OTHER["threshold"], COMMITTED.image_size(name), _sizes(key)) == []
