"""scripts/compare_reference.py, with a stand-in for the reference library (it is not installed here)."""

from __future__ import annotations

import json
import textwrap

import pytest

from img2pose_tools import compare_reference
from tests.support.photo_library import image_bytes

pytestmark = pytest.mark.slow  # both libraries' forwards, several rounds

SIZES = ["--min-size", "200", "--max-size", "400"]  # small canvases: cheap forwards, and passed to both libraries


def test_sizes_the_reference_would_refuse_are_refused_first(demo_checkpoint_file, tmp_path):
    with pytest.raises(SystemExit):
        compare_reference.parse_args([str(tmp_path), "--checkpoint", str(demo_checkpoint_file), "--min-size", "500",
                                      "--max-size", "400"])

STAND_IN = textwrap.dedent('''
    """The reference's constructor and call, answered by this project's Img2Pose, shifted by one pixel."""
    from img2pose_serve import Img2Pose as _Here

    class Img2Pose:
        def __init__(self, model_path, device, score_threshold, min_size, max_size):
            assert device == "cpu" and (min_size, max_size) == (200, 400)
            self.detector = _Here.from_checkpoint(model_path, score_threshold=score_threshold, min_size=min_size,
                                                  max_size=max_size)

        def detect_faces(self, images):
            def shifted(faces):
                return [{**face, "box": [v + 1.0 for v in face["box"]]} for face in faces]
            answer = self.detector.detect_faces(images)
            return [shifted(faces) for faces in answer] if isinstance(images, list) else shifted(answer)
''')


@pytest.fixture
def sets(tmp_path, monkeypatch):
    (tmp_path / "stand_in_reference.py").write_text(STAND_IN)
    monkeypatch.syspath_prepend(str(tmp_path))
    # One set of two sizes: what the script does per set is the same for every set, and two canvases show
    # the list call planned apart from the single calls.
    directories = [tmp_path / "mixed"]
    for directory, sizes in zip(directories, [[(160, 120), (100, 200)]]):
        directory.mkdir()
        for n, size in enumerate(sizes):
            (directory / f"{n}.jpg").write_bytes(image_bytes(n, size=size))
        (directory / "notes.txt").write_text("not an image")
    return directories


def test_both_libraries_are_timed_alike_and_their_answers_compared(sets, demo_checkpoint_file, tmp_path, capsys):
    out = tmp_path / "figures.json"
    assert compare_reference.main([*map(str, sets), "--checkpoint", str(demo_checkpoint_file), "--rounds", "1",
                                   "--score-threshold", "0", "--reference-module", "stand_in_reference",
                                   *SIZES, "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert sorted(figures["seconds"]) == sorted(f"{name}|{call}|{library}" for name in ("mixed",)
                                                for call in compare_reference.CALLS
                                                for library in compare_reference.LIBRARIES)
    assert all(len(runs) == 1 and min(runs) > 0 for runs in figures["seconds"].values())
    # The CPU default, as a worker runs it, at the sizes given to both libraries.
    assert figures["here"] == {"runtime": "openvino", "precision": "fp32", "min_size": 200, "max_size": 400}
    agreement = figures["agreement"]["mixed"]
    assert agreement["list equals single calls"] == {"reference": True, "here": True}
    assert all(here == reference > 0 for reference, here in agreement["faces (reference, here)"])
    assert agreement["largest box difference, px"] == [1.0, 1.0]
    printed = capsys.readouterr().out
    assert printed.startswith("CPU: ") and "| mixed (2) | one list call |" in printed


def test_the_memory_figure_of_one_list_call(sets, demo_checkpoint_file, capsys):
    assert compare_reference.main([*map(str, sets), "--checkpoint", str(demo_checkpoint_file), *SIZES,
                                   "--memory-of", "here", "mixed"]) == 0
    figure = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figure["growth_mib"] >= 0 and figure["seconds"] > 0
