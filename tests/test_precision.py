"""The ``precision`` setting: validation, a bf16 forward end to end, exact batching within bf16, fp32 untouched."""

from __future__ import annotations

import copy
import json
import logging

import pytest
import torch
import yaml
from torchvision.ops.misc import FrozenBatchNorm2d

import img2pose_handler
from img2pose_handler import PRECISION_HEADER, Img2PoseHandler
from img2pose_serve.nn import pyramid_convs
from img2pose_serve.nn.bf16 import fold_frozen_batch_norms
from img2pose_serve.nn.faster_dof_rcnn import BF16_STAGES
from img2pose_serve.protocol.facedicts import to_face_dicts
from img2pose_serve.runtime import archive_layout, precision_choice, served_model
from img2pose_serve.runtime.handler_config import HandlerConfig, HandlerConfigError
from img2pose_serve.runtime.image_decoding import decode_tensor
from img2pose_serve.runtime.precision_choice import (
    BF16_MIN_SPEEDUP,
    Bf16Capabilities,
    Bf16Measurement,
    Bf16Unavailable,
    PrecisionChoice,
    decide_by_measurement,
    device_capabilities,
    native_bf16_check,
    resolve_precision,
)
from img2pose_serve.runtime.precision_measurement import measure_bf16
from img2pose_tools.build_mar import BuildError, main, staged_archive
from img2pose_tools.synthetic_images import photo_like_jpeg as _jpeg
from img2pose_tools.synthetic_images import photo_like_tensors as synthetic_images
from tests.support.alone import faces_alone
from tests.support.served_models import SMALL_SIZES
from tests.support.torchserve_context import make_context, set_requests


def _assert_identical(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


@pytest.fixture(scope="module")
def bf16_model(demo_model_dir):
    model, _ = archive_layout.load_detector(demo_model_dir, images_per_pass=1, **SMALL_SIZES)
    model.set_precision("bf16")
    return model


# --- the setting ---------------------------------------------------------------------------------

def test_precision_defaults_to_exact_fp32_and_accepts_bf16():
    assert HandlerConfig().precision == "fp32"
    assert HandlerConfig.from_mapping({"precision": "bf16"}).precision == "bf16"
    assert HandlerConfig.from_mapping({"precision": "bf16-required"}).precision == "bf16-required"


@pytest.mark.parametrize("value", ["fp16", "BF16", "bfloat16", "", "bf16_required", "fp32-required"])
def test_unknown_precisions_are_refused_by_name(value):
    with pytest.raises(HandlerConfigError, match=r"precision must be one of \['fp32', 'bf16', 'bf16-required'\]"):
        HandlerConfig.from_mapping({"precision": value})
    with pytest.raises(HandlerConfigError, match="precision must be a string"):
        HandlerConfig.from_mapping({"precision": 16})


def test_the_model_refuses_unknown_precisions(bf16_model):
    with pytest.raises(ValueError, match="precision"):
        bf16_model.set_precision("fp16")
    assert bf16_model.precision == "bf16"


def test_build_mar_writes_the_precision_into_the_archive(tmp_path):
    with pytest.raises(BuildError, match="precision"):
        with staged_archive(None, handler_overrides={"precision": "fp16"}, quiet=True):
            pass
    with pytest.raises(SystemExit):
        main(["--precision", "fp16", "--export-path", str(tmp_path)])
    assert not (tmp_path / "img2pose.mar").exists()
    for precision in ("bf16", "bf16-required"):
        with staged_archive(None, handler_overrides={"precision": precision}, quiet=True) as staged:
            handler_section = yaml.safe_load(staged.config_file.read_text())["handler"]
            info = json.loads((staged.extra / archive_layout.INFO_FILE).read_text())
        assert handler_section["precision"] == precision == staged.settings["precision"] and "precision" not in info
        assert HandlerConfig.from_mapping(handler_section).precision == precision


# --- which precision runs: a pure function of the device's capabilities ---------------------------

ZEN4 = Bf16Capabilities("cpu", {"avx2": True, "avx512f": True, "avx512_bf16": True, "amx_bf16": False},
                        aten_isa="AVX512", cpu_model="AMD EPYC 9654")
SAPPHIRE_RAPIDS = Bf16Capabilities("cpu", {"avx2": True, "avx512f": True, "avx512_bf16": True, "amx_bf16": True},
                                   aten_isa="AVX512", cpu_model="Intel Xeon Platinum 8480+")
AVX2_ONLY = Bf16Capabilities("cpu", {"avx2": True, "avx512f": False, "avx512_bf16": False, "amx_bf16": False},
                             aten_isa="AVX2", cpu_model="AMD EPYC 7B12")
SKYLAKE = Bf16Capabilities("cpu", {"avx2": True, "avx512f": True, "avx512_bf16": False, "amx_bf16": False},
                           aten_isa="AVX512", cpu_model="Intel Xeon Gold 6148")
ZEN4_LIMITED_TO_AVX2 = Bf16Capabilities("cpu", ZEN4.flags, aten_isa="AVX2", onednn_max_isa="AVX2")


@pytest.mark.parametrize("capabilities", [ZEN4, SAPPHIRE_RAPIDS,
                                          Bf16Capabilities("cpu", ZEN4.flags, "AVX512", "avx512_core_bf16"),
                                          Bf16Capabilities("cpu", ZEN4.flags, "AVX512", "ALL")])
def test_bf16_runs_where_it_is_native(capabilities):
    for requested in ("bf16", "bf16-required"):
        effective, reason = resolve_precision(requested, capabilities)
        assert effective == "bf16" and "avx512_bf16=yes" in reason


@pytest.mark.parametrize("capabilities", [AVX2_ONLY, SKYLAKE, ZEN4_LIMITED_TO_AVX2,
                                          Bf16Capabilities("cpu", ZEN4.flags, "AVX512", "AVX512_CORE_VNNI")])
def test_bf16_falls_back_to_fp32_where_it_is_not_native_and_required_refuses(capabilities):
    effective, reason = resolve_precision("bf16", capabilities)
    assert effective == "fp32" and "running fp32 instead" in reason
    with pytest.raises(Bf16Unavailable, match=r"bf16-required.*avx512_bf16=(yes|no), amx_bf16=no") as refused:
        resolve_precision("bf16-required", capabilities)
    assert "amx_bf16" in str(refused.value)


def test_fp32_is_fp32_whatever_the_device():
    for capabilities in (ZEN4, AVX2_ONLY, Bf16Capabilities("cuda", {"bf16": False})):
        assert resolve_precision("fp32", capabilities) == ("fp32", "fp32 requested")
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp16", ZEN4)


def test_the_onednn_isa_limit_decides_and_the_reason_names_it():
    native, why = native_bf16_check(ZEN4_LIMITED_TO_AVX2)
    assert not native and "ONEDNN_MAX_CPU_ISA=AVX2" in why
    # ATEN_CPU_CAPABILITY alone limits only torch's elementwise kernels: bf16 stays faster (measured)
    assert native_bf16_check(Bf16Capabilities("cpu", ZEN4.flags, aten_isa="AVX2"))[0]
    assert native_bf16_check(Bf16Capabilities("cuda", {"bf16": True}))[0]
    assert not native_bf16_check(Bf16Capabilities("cuda", {"bf16": False}))[0]


def test_device_capabilities_read_the_isa_limit_from_the_environment(monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    limited = device_capabilities(torch.device("cpu"))
    assert limited.onednn_max_isa == "AVX2" and not native_bf16_check(limited)[0]
    assert set(limited.flags) == {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    assert device_capabilities(torch.device("cpu")).onednn_max_isa is None


# --- bf16 forwards -------------------------------------------------------------------------------

def test_bf16_runs_the_heavy_layers_in_bf16_and_ranks_and_decodes_in_fp32(bf16_model):
    dtypes = {}
    watched = {
        "backbone conv": bf16_model.backbone.body.conv1,
        "rpn conv": bf16_model.rpn.head.conv,
        "anchors": bf16_model.rpn.anchor_generator,
        "rpn objectness": bf16_model.rpn.head.cls_logits,
        "rpn deltas": bf16_model.rpn.head.bbox_pred,
        "roi pooling": bf16_model.roi_heads.box_roi_pool,
        "box mlp": bf16_model.roi_heads.box_head,
        "pose predictor": bf16_model.roi_heads.box_predictor,
        "class predictor": bf16_model.roi_heads.class_predictor,
    }

    def recorder(name):
        def record(module, inputs, output) -> None:
            dtypes.setdefault(name, output[0].dtype if isinstance(output, list) else output.dtype)
        return record

    hooks = [module.register_forward_hook(recorder(name)) for name, module in watched.items()]
    try:
        result = bf16_model.detect(synthetic_images(1, 320, 240))[0]
    finally:
        for hook in hooks:
            hook.remove()
    assert dtypes == {"backbone conv": torch.bfloat16, "rpn conv": torch.bfloat16, "anchors": torch.float32,
                      "rpn objectness": torch.float32,
                      "rpn deltas": torch.float32, "roi pooling": torch.float32, "box mlp": torch.bfloat16,
                      "pose predictor": torch.float32, "class predictor": torch.float32}
    assert {key: value.dtype for key, value in result.items()} == {
        "boxes": torch.float32, "labels": torch.int64, "scores": torch.float32, "dofs": torch.float32,
        "keypoints": torch.float64}
    assert len(result["scores"]) > 0


@pytest.mark.slow
def test_bf16_batched_equals_bf16_alone_in_one_pass(demo_model_dir):
    """The handler's CPU default is one image per pass; this checks the kernels with all images in one pass,
    at the default sizes (at 200/400 the bf16 scores of a two-image pass differ from one image's in the
    last bits on a Zen 4: docs/configuration.md, images_per_pass)."""
    images = synthetic_images(2, 320, 240)
    one_per_pass, _ = archive_layout.load_detector(demo_model_dir, images_per_pass=1)
    one_per_pass.set_precision("bf16")
    alone = [one_per_pass.detect([image])[0] for image in images]
    whole_batch, _ = archive_layout.load_detector(demo_model_dir, images_per_pass=None)
    whole_batch.set_precision("bf16")
    together = whole_batch.detect(images)
    for single, batched in zip(alone, together, strict=True):
        _assert_identical(single, batched)
    assert all(len(result["scores"]) for result in alone), "no detections: the comparison would be vacuous"


@pytest.mark.slow
def test_fp32_after_bf16_is_bit_identical_to_a_model_never_switched(small_torch_detector, bf16_model):
    image = synthetic_images(1, 320, 240)
    fresh = small_torch_detector.detect(image)[0]
    bf16_result = bf16_model.detect(image)[0]
    bf16_model.set_precision("fp32")
    try:
        switched_back = bf16_model.detect(image)[0]
    finally:
        bf16_model.set_precision("bf16")
    _assert_identical(fresh, switched_back)
    assert not torch.equal(fresh["scores"], bf16_result["scores"]), "bf16 gave fp32's bits: it did not run"


def test_folding_the_frozen_batch_norms_keeps_the_backbone_function(small_torch_detector):
    body = small_torch_detector.backbone.body
    folded = copy.deepcopy(body)
    fold_frozen_batch_norms(folded)
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in body.modules()) == 20  # the original is untouched
    image = synthetic_images(1, 160, 128)[0][None]
    with torch.inference_mode():
        expected, got = body(image), folded(image)
    for level in expected:
        assert torch.allclose(got[level], expected[level], rtol=1e-4, atol=1e-5 * expected[level].abs().max()), level


def test_bf16_stages_hold_bf16_weights_once_and_fp32_gets_its_originals_back(small_torch_detector):
    model = copy.deepcopy(small_torch_detector)
    originals = {name: model.get_submodule(name) for name in BF16_STAGES}
    model.set_precision("bf16")
    for name in BF16_STAGES:
        stage = model.get_submodule(name)
        assert stage is not originals[name]
        assert {p.dtype for p in stage.parameters()} == {torch.bfloat16}, name
    assert isinstance(model.backbone.body.bn1, torch.nn.Identity)
    model.set_precision("fp32")
    assert all(model.get_submodule(name) is stage for name, stage in originals.items())
    assert {p.dtype for p in model.parameters()} == {torch.float32}


# --- bf16 where it pays, measured ----------------------------------------------------------------

def _native(requested: str) -> PrecisionChoice:
    return PrecisionChoice(requested, "bf16", "native bf16 (avx512_bf16=yes)", ZEN4.as_dict())


def _measured(speedup: float) -> Bf16Measurement:
    return Bf16Measurement(0.4 * speedup, 0.4, "openvino", (1, 3, 320, 416))


def test_native_bf16_runs_only_where_it_measures_fast_enough():
    assert _native("bf16").needs_measurement
    paid = decide_by_measurement(_native("bf16"), _measured(BF16_MIN_SPEEDUP + 0.01))
    assert paid.effective == "bf16" and not paid.fell_back and not paid.needs_measurement
    assert "bf16 0.400 s vs fp32 (openvino) 0.524 s on a 320x416 trunk: 1.31x (>= 1.3x)" in paid.reason
    unpaid = decide_by_measurement(_native("bf16"), _measured(0.92))
    assert unpaid.effective == "fp32" and unpaid.fell_back
    assert unpaid.reason.endswith("but measured bf16 0.400 s vs fp32 (openvino) 0.368 s on a 320x416 trunk: 0.92x "
                                  "(< 1.3x): running fp32 instead")
    assert unpaid.as_dict()["measurement"] == {"fp32_seconds": 0.368, "bf16_seconds": 0.4, "speedup": 0.92,
                                               "fp32_runtime": "openvino", "canvas": [1, 3, 320, 416],
                                               "min_speedup": BF16_MIN_SPEEDUP}


def test_bf16_required_refuses_where_bf16_does_not_pay_naming_the_figures():
    with pytest.raises(Bf16Unavailable, match=r"bf16-required, but bf16 does not pay on this machine: bf16 0.400 s "
                                              r"vs fp32 \(openvino\) 0.440 s on a 320x416 trunk: 1.10x"):
        decide_by_measurement(_native("bf16-required"), _measured(1.1))
    assert decide_by_measurement(_native("bf16-required"), _measured(1.5)).effective == "bf16"


def test_the_measurement_times_both_precisions_and_leaves_the_model_as_it_was(small_torch_detector):
    model = copy.deepcopy(small_torch_detector)
    stages = {name: model.get_submodule(name) for name in BF16_STAGES}
    measured = measure_bf16(model, "torch")
    assert measured.fp32_seconds > 0 and measured.bf16_seconds > 0 and measured.fp32_runtime == "torch"
    assert model.precision == "fp32" and model.runtime == "torch"
    assert all(model.get_submodule(name) is stage for name, stage in stages.items())
    with pytest.raises(ValueError, match="measure a torch fp32 model, not torch bf16"):
        model.set_precision("bf16")
        measure_bf16(model, "torch")


def test_a_worker_where_bf16_is_native_but_slow_runs_fp32_and_says_why(demo_model_dir, monkeypatch, caplog):
    with caplog.at_level(logging.INFO):
        handler, context = _start_worker(demo_model_dir, {"precision": "bf16"}, ZEN4, monkeypatch, bf16_speedup=0.92)
    assert handler.served.model.precision == "fp32" and handler.served.runtime.effective == "openvino"
    assert any(r.levelno == logging.WARNING and "0.92x (< 1.3x): running fp32 instead" in r.getMessage()
               for r in caplog.records)
    assert _describe(handler, context)["precision"]["measurement"]["speedup"] == 0.92


# --- the handler in bf16 -------------------------------------------------------------------------

def _start_worker(model_dir, settings: dict, capabilities: Bf16Capabilities, monkeypatch, bf16_speedup=2.0):
    """A handler initialised as a worker on a device with ``capabilities`` (whatever this machine has),
    where bf16's trunk measures ``bf16_speedup`` times fp32's (whatever it measures here)."""
    monkeypatch.setattr(img2pose_handler, "device_capabilities", lambda device: capabilities)
    monkeypatch.setattr(precision_choice, "device_capabilities", lambda device: capabilities)
    measured = Bf16Measurement(0.5 * bf16_speedup, 0.5, "openvino", (1, 3, 320, 416))
    monkeypatch.setattr(served_model, "measure_bf16", lambda model, fp32_runtime, key: measured)
    context = make_context(model_dir, settings)
    handler = Img2PoseHandler()
    handler.initialize(context)
    return handler, context


def _describe(handler, context) -> dict:
    set_requests(context, [{"describe": "True"}])
    return json.loads(handler.handle([{"body": bytearray()}], context)[0])


@pytest.fixture(scope="module")
def bf16_handler(demo_model_dir):
    with pytest.MonkeyPatch.context() as monkeypatch:
        return _start_worker(demo_model_dir, {"precision": "bf16", "max_images_per_forward": 8, **SMALL_SIZES}, ZEN4,
                             monkeypatch)


@pytest.mark.slow
def test_a_bf16_worker_where_bf16_is_native_runs_bf16_and_says_so(bf16_handler, caplog):
    handler, context = bf16_handler
    assert handler.served.model.precision == "bf16"
    described = _describe(handler, context)
    assert described["precision"]["requested"] == "bf16" and described["precision"]["effective"] == "bf16"
    assert described["precision"]["capabilities"]["flags"]["avx512_bf16"] is True
    assert described["runtime"]["effective"] == "torch"  # OpenVINO runs fp32 only
    set_requests(context, [{}])
    handler.handle([{"body": bytearray(_jpeg(160, 120, 0))}], context)
    assert context.get_response_headers(0)[PRECISION_HEADER] == "bf16"


@pytest.mark.slow
def test_a_bf16_worker_without_native_bf16_runs_fp32_exactly(demo_model_dir, small_served, monkeypatch, caplog):
    with caplog.at_level(logging.INFO):
        handler, context = _start_worker(demo_model_dir, {"precision": "bf16", **SMALL_SIZES}, AVX2_ONLY, monkeypatch)
    assert handler.served.model.precision == "fp32"
    assert any(r.levelno == logging.WARNING and "precision fp32: bf16 requested; the CPU has no bf16 "
               "instructions (avx512_bf16=no, amx_bf16=no): running fp32 instead" in r.getMessage()
               for r in caplog.records)
    described = _describe(handler, context)
    assert described["precision"]["effective"] == "fp32" and described["precision"]["requested"] == "bf16"
    assert described["runtime"] == {"requested": "auto", "effective": "openvino",
                                    "reason": "auto requested; fp32 on a CPU with openvino installed; "
                                              f"{pyramid_convs.winograd_status()}"}
    assert described["resize"] == SMALL_SIZES  # the settings'
    bodies = [_jpeg(320, 240, 0), _jpeg(320, 240, 2)]
    set_requests(context, [{}] * len(bodies))
    responses = [json.loads(r) for r in handler.handle([{"body": bytearray(b)} for b in bodies], context)]
    for index, (body, faces) in enumerate(zip(bodies, responses, strict=True)):
        assert context.get_response_headers(index)[PRECISION_HEADER] == "fp32"
        assert faces == faces_alone(small_served, body, 0.5)
    assert sum(map(len, responses)) > 0, "no faces: the comparison would be vacuous"


def test_a_bf16_required_worker_without_native_bf16_refuses_to_start(demo_model_dir, monkeypatch, caplog):
    loads = []
    monkeypatch.setattr(archive_layout, "load_detector", lambda *args: loads.append(args))
    for capabilities, named in ((AVX2_ONLY, "avx512_bf16=no, amx_bf16=no"),
                                (ZEN4_LIMITED_TO_AVX2, "ONEDNN_MAX_CPU_ISA=AVX2")):
        with pytest.raises(Bf16Unavailable, match=f"precision bf16-required, but .*{named}"):
            _start_worker(demo_model_dir, {"precision": "bf16-required"}, capabilities, monkeypatch)
    assert "img2pose refuses to start" in caplog.text and "amx_bf16" in caplog.text
    assert loads == [], "it refused after loading the model"


@pytest.mark.slow
def test_bf16_handler_answers_each_request_what_it_gets_alone(bf16_handler, bf16_model):
    handler, context = bf16_handler
    assert handler.served.model.precision == "bf16"
    with pytest.raises(RuntimeError, match="reversible=False"):  # the worker keeps no fp32 copies
        handler.served.model.set_precision("fp32")
    bodies = [_jpeg(320, 240, 0), _jpeg(320, 240, 2)]  # one padded canvas: they share a forward
    set_requests(context, [{}] * len(bodies))
    responses = [json.loads(r) for r in handler.handle([{"body": bytearray(b)} for b in bodies], context)]

    assert handler.served.model is not bf16_model
    for body, faces in zip(bodies, responses, strict=True):
        prediction = bf16_model.detect([decode_tensor(body, 10**8)])[0]
        assert faces == to_face_dicts(prediction, 0.5, -1)
    assert sum(map(len, responses)) > 0, "no faces: the comparison would be vacuous"
    face = next(face for faces in responses for face in faces)
    assert isinstance(face["confidence"], float)
    assert len(face["box"]) == 4 and all(isinstance(v, float) for v in face["box"])
    assert len(face["pose"]) == 6 and all(isinstance(v, float) for v in face["pose"])
    assert all(len(p) == 2 and all(isinstance(v, float) for v in p) for p in face["keypoints"].values())
