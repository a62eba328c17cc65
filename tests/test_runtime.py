"""The ``runtime`` setting: which runtime runs where, the openvino runtime's answers, and its refusals.

The openvino runtime's parity with the reference is test_golden's (the default runtime on a CPU); the
torch runtime's, here on two committed images; batch == alone under openvino, test_handler's and
test_server's batched tests (their workers run it).
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from img2pose_handler import PT2_IGNORED, Img2PoseHandler
from img2pose_serve import Img2Pose
from img2pose_serve.protocol.facedicts import to_face_dicts
from img2pose_serve.runtime import archive_layout, runtime_choice
from img2pose_serve.runtime.handler_config import HandlerConfig, HandlerConfigError
from img2pose_serve.runtime.runtime_choice import RuntimeUnavailable, resolve_runtime
from img2pose_serve.runtime.served_model import ServedModel
from img2pose_tools.synthetic_images import photo_like_tensors
from tests.support.golden_set import COMMITTED, compare_faces
from tests.support.torchserve_context import make_context


@pytest.mark.parametrize(("requested", "device", "precision", "installed", "expected"), [
    ("auto", "cpu", "fp32", True, "openvino"),
    ("auto", "cpu", "fp32", False, "torch"),
    ("auto", "cuda", "fp32", True, "torch"),
    ("auto", "cpu", "bf16", True, "torch"),
    ("torch", "cpu", "fp32", True, "torch"),
    ("openvino", "cpu", "fp32", True, "openvino"),
])
def test_each_setting_resolves_to_the_runtime_that_can_run(requested, device, precision, installed, expected):
    runtime, reason = resolve_runtime(requested, device, precision, installed)
    assert runtime == expected and requested in reason


@pytest.mark.parametrize(("device", "precision", "installed", "named"), [
    ("cpu", "fp32", False, "openvino is not installed"),
    ("cuda", "fp32", True, "OpenVINO runs the CPU only"),
    ("cpu", "bf16", True, "OpenVINO runs fp32 only"),
])
def test_an_explicit_openvino_that_cannot_run_is_refused_with_the_reason(device, precision, installed, named):
    with pytest.raises(RuntimeUnavailable, match=f"runtime openvino, but {named}"):
        resolve_runtime("openvino", device, precision, installed)


def test_the_setting_defaults_to_auto_and_refuses_unknown_values():
    assert HandlerConfig().runtime == "auto"
    assert HandlerConfig.from_mapping({"runtime": "torch"}).runtime == "torch"
    with pytest.raises(HandlerConfigError, match=r"runtime must be one of \['auto', 'torch', 'openvino'\]"):
        HandlerConfig.from_mapping({"runtime": "onnx"})


def test_a_worker_that_cannot_run_openvino_refuses_before_loading(demo_model_dir, monkeypatch):
    loads = []
    monkeypatch.setattr(runtime_choice, "openvino_installed", lambda: False)
    monkeypatch.setattr(archive_layout, "load_detector", lambda *args: loads.append(args))
    with pytest.raises(RuntimeUnavailable, match="openvino is not installed: set runtime: auto or torch"):
        ServedModel.load(demo_model_dir, HandlerConfig(runtime="openvino"))
    assert loads == []


def test_the_served_demo_runs_openvino_on_this_cpu(small_served):
    assert small_served.runtime.effective == "openvino" and small_served.model.runtime == "openvino"
    assert small_served.model.roi_heads.pose_on_candidates
    assert small_served.runtime.reason.endswith("the finest pyramid levels' 3x3 convs by Winograd (NNPACK)")


def test_a_cpu_without_nnpack_is_told_its_pyramid_convs_run_direct(monkeypatch):
    from img2pose_serve.nn import pyramid_convs

    monkeypatch.setattr(pyramid_convs, "nnpack_ready", lambda: False)
    choice = runtime_choice.RuntimeChoice.for_device("auto", "cpu", "fp32")
    assert choice.effective == "openvino"
    assert choice.reason.endswith("NNPACK does not run on this CPU: the pyramid's 3x3 convs are direct (slower)")
    assert "Winograd" not in runtime_choice.RuntimeChoice.for_device("auto", "cuda", "fp32").reason


def test_an_openvino_model_cannot_switch_back_or_to_bf16(small_served):
    with pytest.raises(RuntimeError, match="build it again for the torch runtime"):
        small_served.model.set_runtime("torch")
    with pytest.raises(RuntimeError, match="precision bf16 needs the torch runtime"):
        small_served.model.set_precision("bf16")


def test_a_bf16_model_is_not_moved_to_openvino(small_torch_detector):
    model = copy.deepcopy(small_torch_detector)
    model.set_precision("bf16", reversible=False)
    with pytest.raises(ValueError, match="the openvino runtime runs fp32 on a CPU; this model is bf16 on cpu"):
        model.set_runtime("openvino")


@pytest.mark.slow
def test_posing_only_the_candidates_changes_no_answer_beyond_rounding(small_torch_detector):
    image = photo_like_tensors(1, 320, 240)[0]
    model = copy.deepcopy(small_torch_detector)
    every_row = model.detect([image.clone()])[0]
    model.roi_heads.pose_on_candidates = True
    candidates_only = model.detect([image.clone()])[0]
    assert len(every_row["scores"]) > 10, "too few faces: the comparison would say little"
    assert torch.equal(every_row["scores"], candidates_only["scores"])  # the class branch is untouched
    for key in ("dofs", "boxes"):
        torch.testing.assert_close(candidates_only[key], every_row[key], rtol=1e-5, atol=1e-4)


@pytest.fixture(scope="module")
def torch_runtime_detector(request):
    checkpoint = request.getfixturevalue(COMMITTED.checkpoint_fixture)
    with Img2Pose.from_checkpoint(checkpoint, runtime="torch") as detector:
        yield detector


@pytest.mark.parametrize("name", ["01_rgb_640x480.jpg", "09_photo_astronaut_256x256.jpg"])
def test_the_torch_runtime_matches_the_reference(torch_runtime_detector, name):
    assert torch_runtime_detector.runtime == "torch"
    ours = torch_runtime_detector.detect_faces(COMMITTED.image_path(name), score_threshold=0.0, max_faces=-1)
    theirs = COMMITTED.reference["sequential_threshold0"][name]
    assert compare_faces(ours, theirs, 0.0, COMMITTED.image_size(name)) == []


def test_openvino_and_torch_runtimes_answer_alike(small_served, small_torch_detector):
    """The same image through both runtimes of the same weights: the same faces, within rounding."""
    image = photo_like_tensors(1, 320, 240)[0]
    torch_faces = to_face_dicts(small_torch_detector.detect([image.clone()])[0], 0.5, -1)
    openvino_faces = to_face_dicts(small_served.forward([image.clone()])[0], 0.5, -1)
    assert len(torch_faces) == len(openvino_faces) > 0
    for ours, theirs in zip(openvino_faces, torch_faces, strict=True):
        assert ours["confidence"] == pytest.approx(theirs["confidence"], abs=1e-4)
        assert ours["box"] == pytest.approx(theirs["box"], abs=1e-2)


def test_a_pt2_section_is_ignored_with_a_warning_that_says_why(demo_model_dir, caplog):
    context = make_context(demo_model_dir)
    context.model_yaml_config["pt2"] = {"compile": {"enable": True, "backend": "openvino"}}
    with caplog.at_level(logging.WARNING):
        Img2PoseHandler().initialize(context)
    assert PT2_IGNORED in caplog.text


def test_the_openvino_mlps_take_any_row_count_even_none(small_served, small_torch_detector):
    pooled = torch.rand(3, 256, 7, 7)
    for name in ("class_head", "box_head"):
        served_mlp = getattr(small_served.model.roi_heads, name)
        torch_mlp = getattr(small_torch_detector.roi_heads, name)
        with torch.inference_mode():
            torch.testing.assert_close(served_mlp(pooled), torch_mlp(pooled), rtol=1e-5, atol=1e-5)
            assert served_mlp(pooled[:0]).shape == (0, 1024)


def test_neither_the_worker_nor_the_openvino_runtime_sends_openvino_telemetry(fresh_interpreter):
    """``import openvino`` and ``ov.convert_model`` report usage to Google Analytics and write their
    client id under $HOME unless CI=true or the user opted out; TorchServe's base handler imports openvino."""
    assert fresh_interpreter.openvino_telemetry == "None"  # blocked: the module can never be imported
    assert list(fresh_interpreter.home.iterdir()) == [], "OpenVINO wrote its telemetry files"


def test_the_worker_skips_torch_compiles_openvino_backend_and_leaves_it_importable(fresh_interpreter):
    """TorchServe's base handler imports openvino.torch (about 1 s of a worker's start) for torch.compile,
    which the handler never uses; the import is skipped for that one import only."""
    assert not fresh_interpreter.worker_imported_the_compile_backend
    assert fresh_interpreter.compile_backend_importable
