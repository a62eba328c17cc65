"""The in-process API (img2pose_serve.runtime.in_process.Img2Pose): the server's answers without a server."""

from __future__ import annotations

import base64
import inspect
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from img2pose_client import detect
from img2pose_serve import Img2Pose
from img2pose_serve.nn.faster_dof_rcnn import padded_canvas_shape
from img2pose_serve.protocol.errors import InvalidInput, PayloadTooLarge
from img2pose_serve.protocol.request_parsing import DetectionParams
from img2pose_serve.runtime.face_alignment import aligned_crops
from img2pose_serve.runtime.handler_config import HandlerConfig, HandlerConfigError
from tests.support.golden_set import COMMITTED
from tests.support.photo_library import backfill, lines
from tests.support.served_models import DEMO_MODEL, REST_GOLDEN_IMAGES, SMALL_SIZES

pytestmark = pytest.mark.slow  # every test runs forwards of its own

# The API's own behaviour (inputs, lists, parameters, crops, drawing) is the same at any resize: the
# detectors here run the demo archive at SMALL_SIZES (the default sizes are test_golden's and the
# server test's below).

RGB_JPEG = COMMITTED.image_path("01_rgb_640x480.jpg")
RGBA_PNG = COMMITTED.image_path("02_rgba_480x640.png")
GRAY_PNG = COMMITTED.image_path("04_gray_320x240.png")


@pytest.fixture(scope="module")
def demo_archive(served_archives) -> Path:
    return served_archives[DEMO_MODEL]


@pytest.fixture(scope="module")
def detector(demo_archive):
    with pytest.warns(UserWarning, match="DEMO ARCHIVE"), Img2Pose(demo_archive, device="cpu", **SMALL_SIZES) as built:
        yield built


class _Alone(dict):
    """A committed golden image's FaceDicts (threshold 0) by name, each image run alone when first asked."""

    def __init__(self, faces_of) -> None:
        super().__init__()
        self._faces_of = faces_of

    def __missing__(self, name: str) -> list[dict]:
        self[name] = self._faces_of(name)
        return self[name]


@pytest.fixture(scope="module")
def alone(small_alone) -> dict[str, list[dict]]:
    """One image alone through the served model's path (``run_group``), at SMALL_SIZES, as the
    detector above runs it."""
    return _Alone(lambda name: small_alone(COMMITTED.image_path(name).read_bytes()))


@pytest.fixture(scope="module")
def golden_alone(detections) -> dict[str, list[dict]]:
    """At the default sizes: golden_set's session detections (``Img2Pose.from_checkpoint`` with the demo
    checkpoint and identity statistics, which is what the demo archive holds; test_golden checks them)."""
    return _Alone(lambda name: detections.identity_stats(COMMITTED, name))


def test_every_kind_of_image_gives_the_same_faces(detector, alone):
    expected = alone[RGB_JPEG.name]
    assert len(expected) > 5
    with Image.open(RGB_JPEG) as opened:
        as_array = np.array(opened.convert("RGB"))
        for image in [str(RGB_JPEG), RGB_JPEG.read_bytes(), opened, as_array]:  # one forward per way in
            assert detector.detect_faces(image, score_threshold=0.0) == expected, type(image).__name__
        tensor = detector._pending(str(RGB_JPEG)).tensor()
        for image in [RGB_JPEG, bytearray(RGB_JPEG.read_bytes()), memoryview(RGB_JPEG.read_bytes())]:
            assert torch.equal(detector._pending(image).tensor(), tensor), type(image).__name__  # the same input
    with Image.open(RGBA_PNG) as rgba:  # not RGB: converted as the server converts it
        assert detector.detect_faces(rgba, score_threshold=0.0) == alone[RGBA_PNG.name]


def test_a_list_is_planned_into_exact_forwards(detector, alone, monkeypatch):
    names = [name for name in COMMITTED.image_names() if name[:2] in ("01", "04", "06", "09", "10", "11")]
    forwards = []
    real_forward = detector.served.forward
    monkeypatch.setattr(detector.served, "forward", lambda tensors: forwards.append(len(tensors))
                        or real_forward(tensors))
    together = detector.detect_faces([COMMITTED.image_path(name) for name in names], score_threshold=0.0)
    assert together == [alone[name] for name in names]
    canvases = {padded_canvas_shape(*reversed(COMMITTED.image_size(name)), **SMALL_SIZES) for name in names}
    assert len(forwards) == len(canvases) < len(names), "images of one canvas share a forward"


def test_parameters_and_their_defaults(detector, alone, demo_archive):
    everything = alone[RGB_JPEG.name]
    assert detector.detect_faces(RGB_JPEG) == [f for f in everything if f["confidence"] >= 0.5]  # archive default
    assert detector.detect_faces(RGB_JPEG, score_threshold=0.0, max_faces=3) == everything[:3]
    assert detector.detect_faces(RGB_JPEG, max_faces=0) == []
    assert detector.detect_faces([]) == []
    for bad in ({"score_threshold": 1.5}, {"max_faces": -2}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            detector.detect_faces(RGB_JPEG, **bad)
    with pytest.warns(UserWarning), Img2Pose(demo_archive, device="cpu", score_threshold=0.2,
                                                max_faces=2, **SMALL_SIZES) as configured:
        assert configured.detect_faces(RGB_JPEG) == [f for f in everything if f["confidence"] >= 0.2][:2]
    with pytest.raises(HandlerConfigError, match="unknown setting"):
        Img2Pose(demo_archive, score_treshold=0.2)
    with pytest.warns(UserWarning), Img2Pose(demo_archive, device="auto") as auto:  # the reference's default
        assert auto.served.device.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_a_bad_image_fails_alone_and_says_which(detector, alone, tmp_path):
    huge = tmp_path / "huge.png"
    Image.new("1", (20_000, 20_000)).save(huge)  # 400 Mpx, past the pixel limit
    missing = tmp_path / "missing.jpg"
    results = detector.detect_each([RGB_JPEG, b"not an image", huge, missing, GRAY_PNG], score_threshold=0.0)
    assert results[0] == alone[RGB_JPEG.name] and results[4] == alone[GRAY_PNG.name]
    assert isinstance(results[1], InvalidInput) and results[1].message.startswith("images[1]: the data (12 bytes)")
    assert isinstance(results[2], PayloadTooLarge) or "limit" in str(results[2])
    assert isinstance(results[3], FileNotFoundError)
    with pytest.raises(InvalidInput, match=r"^images\[1\]: the data"):
        detector.detect_faces([RGB_JPEG, b"not an image"])
    with pytest.raises(InvalidInput, match=r"^the data \(12 bytes\)"):
        detector.detect_faces(b"not an image")
    with pytest.raises(ValueError, match=r"HxWx3 uint8 RGB array, got shape \(4, 4\)"):
        detector.detect_faces(np.zeros((4, 4), np.uint8))
    with pytest.raises(TypeError, match="got int"):
        detector.detect_faces(7)


def test_from_a_checkpoint_as_its_archive_answers(demo_checkpoint_file, identity_pose_stats, alone):
    with Img2Pose.from_checkpoint(demo_checkpoint_file, *identity_pose_stats, device="cpu", **SMALL_SIZES) as from_npy:
        assert from_npy.detect_faces(GRAY_PNG, score_threshold=0.0) == alone[GRAY_PNG.name]
        assert not from_npy.demo
    # The identity statistics: the reference's model_path default.
    with Img2Pose.from_checkpoint(demo_checkpoint_file, device="cpu", **SMALL_SIZES) as identity:
        assert identity.served.info.pose_stats_source == "identity"
        assert identity.detect_faces(GRAY_PNG, score_threshold=0.0) == alone[GRAY_PNG.name]
    with pytest.raises(ValueError, match="both pose_mean and pose_stddev"):
        Img2Pose.from_checkpoint(demo_checkpoint_file, pose_mean=[0, 0, 0, 0, 0, 1])


@pytest.mark.server
def test_in_process_answers_equal_the_servers_on_the_golden_images(torchserve_server, golden_alone):
    """What README promises: the same FaceDicts with or without the server (test_server.py compares the
    REST_GOLDEN_IMAGES; here the others, so that every committed golden image is compared once)."""
    def served(name: str) -> list[dict]:
        body = {"image": base64.b64encode(COMMITTED.image_path(name).read_bytes()).decode(), "score_threshold": 0.0}
        answer = torchserve_server.predict(json.dumps(body), model=DEMO_MODEL,
                                           headers={"Content-Type": "application/json"})
        assert answer.status_code == 200, answer.text
        return answer.json()

    names = [name for name in COMMITTED.image_names() if name not in REST_GOLDEN_IMAGES]
    assert len(names) >= 5
    with ThreadPoolExecutor(len(names)) as pool:
        answers = dict(zip(names, pool.map(served, names)))
    assert answers == {name: golden_alone[name] for name in names}
    assert sum(map(len, answers.values())) > 100


def test_img2pose_detect_prints_one_line_per_image(demo_archive, alone, tmp_path, capsys):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a photo")
    sizes = ["--min-size", str(SMALL_SIZES["min_size"]), "--max-size", str(SMALL_SIZES["max_size"])]
    status = detect.main([str(RGB_JPEG), str(bad), str(GRAY_PNG), "--archive", str(demo_archive),
                          "--score-threshold", "0", *sizes])
    out, err = capsys.readouterr()
    records = [json.loads(line) for line in out.splitlines()]
    assert status == 1 and "DEMO ARCHIVE" in err
    assert records[0] == {"path": str(RGB_JPEG), "faces": alone[RGB_JPEG.name]}
    assert records[1]["path"] == str(bad) and records[1]["status"] == 400 and "it is text" in records[1]["error"]
    assert records[2] == {"path": str(GRAY_PNG), "faces": alone[GRAY_PNG.name]}
    assert detect.main([str(RGB_JPEG), "--archive", str(demo_archive), "--max-faces", "-5"]) == 2
    assert "max_faces must be >= -1" in capsys.readouterr().err
    assert detect.main([str(RGB_JPEG), "--archive", str(demo_archive), "--min-size", "500", "--max-size", "400"]) == 2
    assert "img2pose-detect: " in capsys.readouterr().err


@pytest.mark.server
def test_backfill_in_process_resumes_and_shards_like_the_server_run(demo_archive, library, direct, tmp_path):
    """``backfill --archive``: the server run's result lines (``direct``), without a server."""
    good, bad = library["good"], library["bad"]
    root = good[0].parent
    shards = [tmp_path / f"shard{i}.jsonl" for i in range(2)]
    summaries = [backfill(root, "--archive", demo_archive, "--output", out, "--shard", f"{i}/2")
                 for i, out in enumerate(shards)]
    records = [record for out in shards for record in lines(out)]
    assert sorted(r["path"] for r in records) == sorted(map(str, good + bad))
    assert {r["path"]: r["faces"] for r in records if "faces" in r} == direct
    assert {r["path"]: r["status"] for r in records if "error" in r} == {str(p): 400 for p in bad}
    assert sum(s["processed"] for s in summaries) == len(good) + len(bad)
    assert all(s["demo_weights"] for s in summaries)

    again = backfill(root, "--archive", demo_archive, "--output", shards[0], "--shard", "0/2")
    assert again["processed"] == 0 and again["skipped"] == summaries[0]["processed"]
    assert len(lines(shards[0])) == summaries[0]["processed"]


# --- the rest of the reference library's API: constructor keywords, drawing, aligned crops -----------

def _confident(faces: list[dict], threshold: float = 0.5) -> list[dict]:
    return [face for face in faces if face["confidence"] >= threshold]


def test_the_reference_constructor_keywords(demo_archive, demo_checkpoint_file):
    assert inspect.signature(Img2Pose).parameters["device"].default == "auto"  # the reference's default
    assert Img2Pose.__call__ is Img2Pose.detect_faces
    with pytest.raises(ValueError, match="an archive or a model_path"):
        Img2Pose(demo_archive, model_path=demo_checkpoint_file)
    with Img2Pose(model_path=demo_checkpoint_file, device="cpu", score_threshold=0.3, max_faces=2,
                  runtime="torch") as built:  # the torch runtime: built in a second, no forward needed here
        assert built.served.info.pose_stats_source == "identity" and not built.demo
        assert built.served.config.detection_defaults == DetectionParams(0.3, 2)


@pytest.mark.skipif("min_size" not in HandlerConfig.__dataclass_fields__,
                    reason="HandlerConfig has no min_size / max_size settings yet: Img2Pose passes them through "
                           "once it has")
def test_min_size_and_max_size_are_passed_as_handler_settings(demo_archive, detector):
    given = (SMALL_SIZES["min_size"], SMALL_SIZES["max_size"])
    assert (detector.served.config.min_size, detector.served.config.max_size) == given
    assert (detector.served.model.min_size, detector.served.model.max_size) == given
    with pytest.warns(UserWarning), Img2Pose(demo_archive, device="cpu", runtime="torch") as default:
        # not given: the archive's
        assert (default.served.config.min_size, default.served.config.max_size) == (640, 1400)
    with pytest.warns(UserWarning), Img2Pose(demo_archive, device="cpu", runtime="torch", min_size=480,
                                             max_size=1000) as resized:
        assert (resized.served.config.min_size, resized.served.config.max_size) == (480, 1000)


def test_visualize_draws_the_boxes_and_keypoints(detector, alone):
    faces = detector(RGB_JPEG)  # __call__
    assert faces == _confident(alone[RGB_JPEG.name]) and faces
    drawn = detector.visualize(RGB_JPEG)  # faces=None: detects them
    assert np.array_equal(drawn, detector.visualize(RGB_JPEG, faces))
    with Image.open(RGB_JPEG) as opened:
        original = np.array(opened.convert("RGB"))
    assert drawn.shape == original.shape and drawn.dtype == np.uint8
    assert np.array_equal(detector.visualize(original, []), original)

    boxes = np.array([face["box"] for face in faces])
    only_boxes = detector.visualize(original, faces, show_keypoints=False, show_confidence=False,
                                    box_color=(0, 0, 255), thickness=3)
    ys, xs = np.nonzero((only_boxes != original).any(axis=2))
    x1, y1, x2, y2 = (boxes[:, None, i] for i in range(4))
    inside = (x1 - 1 <= xs) & (xs <= x2 + 1) & (y1 - 1 <= ys) & (ys <= y2 + 1)
    on_edge = inside & ((np.abs(xs - x1) <= 3) | (np.abs(xs - x2) <= 3) | (np.abs(ys - y1) <= 3)
                        | (np.abs(ys - y2) <= 3))
    assert on_edge.any(axis=0).all()  # every changed pixel is on a box outline
    assert (only_boxes[ys, xs] == (0, 0, 255)).all(axis=1).mean() > 0.9
    only_keypoints = detector.visualize(original, faces, show_box=False, keypoint_color=(255, 0, 255))
    ys, xs = np.nonzero((only_keypoints != original).any(axis=2))
    keypoints = np.array([point for face in faces for point in face["keypoints"].values()])
    gaps = np.hypot(xs[:, None] - keypoints[None, :, 0], ys[:, None] - keypoints[None, :, 1])
    assert (gaps.min(axis=1) <= 4).all() and len(xs) > 0  # discs of radius 2 on the keypoints, nothing else


def test_align_faces_and_its_batch(detector, alone):
    faces = alone[RGB_JPEG.name][:4]
    crops = detector.align_faces(RGB_JPEG, faces)
    assert [(type(crop), crop.size) for crop in crops] == [(Image.Image, (224, 224))] * 4
    arrays = detector.align_faces(str(RGB_JPEG), faces, 112, return_array=True)
    with Image.open(RGB_JPEG) as opened:
        rgb = np.array(opened.convert("RGB"))
    expected = aligned_crops(rgb, np.array([face["pose"] for face in faces]), 112)
    assert all(np.array_equal(a, b) for a, b in zip(arrays, expected)) and len(arrays) == 4
    assert detector.align_faces(RGB_JPEG, []) == []
    with pytest.raises(ValueError, match="112 or 224"):
        detector.align_faces(RGB_JPEG, faces, 256)
    batch = detector.align_faces_batch([RGB_JPEG, GRAY_PNG], [faces, []], 112, return_array=True)
    assert len(batch) == 2 and batch[1] == [] and all(np.array_equal(a, b) for a, b in zip(batch[0], expected))
    with pytest.raises(ValueError, match="differ in length: 1 and 2"):
        detector.align_faces_batch([RGB_JPEG], [faces, []])


def test_detect_and_align_alone_and_in_a_list(detector, alone):
    def expected(path: Path, size: int) -> list[dict]:
        faces = _confident(alone[path.name])
        crops = detector.align_faces(path, faces, size, return_array=True)
        return [{"image": crop, **face} for face, crop in zip(faces, crops)]

    def same(got: list[dict], want: list[dict]) -> bool:
        return ([{k: v for k, v in f.items() if k != "image"} for f in got]
                == [{k: v for k, v in f.items() if k != "image"} for f in want]
                and all(np.array_equal(np.asarray(a["image"]), b["image"]) for a, b in zip(got, want)))

    single = detector.detect_and_align(RGB_JPEG)
    assert list(single[0]) == ["image", "box", "confidence", "pose", "keypoints"]
    assert isinstance(single[0]["image"], Image.Image) and same(single, expected(RGB_JPEG, 224))
    # 640x480 and 320x240 share a canvas: one forward, each image's answer the one it gets alone
    listed = detector.detect_and_align([RGB_JPEG, GRAY_PNG], output_size=112, return_array=True)
    assert [same(got, expected(path, 112)) for got, path in zip(listed, [RGB_JPEG, GRAY_PNG])] == [True, True]
    with pytest.raises(ValueError, match="112 or 224"):  # before any forward
        detector.detect_and_align([RGB_JPEG], output_size=100)
