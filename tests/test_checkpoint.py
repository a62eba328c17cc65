"""Strict loading of the three official key layouts, and clear errors for broken files."""

from __future__ import annotations

import pytest
import torch

from img2pose_serve.nn import reference_data
from img2pose_serve.nn.checkpoint import CheckpointError, canonical_state_dict, load_into, read_checkpoint
from img2pose_serve.nn.faster_dof_rcnn import FasterDoFRCNN, build_detector
from img2pose_serve.nn.pose import PoseDecoder
from img2pose_tools.demo_checkpoint import state_dict_manifest


@pytest.fixture(scope="module")
def model():
    return FasterDoFRCNN(PoseDecoder.create([0] * 6, [1] * 6, reference_data.points_68()))


@pytest.fixture(scope="module")
def official_state():
    """A state dict with the official manifest's keys, shapes and dtypes (values: a fixed pattern)."""
    generator = torch.Generator().manual_seed(0)
    state = {}
    for entry in state_dict_manifest():
        dtype = getattr(torch, entry["dtype"])
        if dtype.is_floating_point:
            state[entry["key"]] = torch.randn(entry["shape"], generator=generator, dtype=dtype)
        else:
            state[entry["key"]] = torch.zeros(entry["shape"], dtype=dtype)
    return state


def test_model_keys_equal_the_official_manifest(model):
    manifest = [(e["key"], tuple(e["shape"]), e["dtype"]) for e in state_dict_manifest()]
    ours = [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()]
    assert ours == manifest


def _legacy(key: str) -> str:
    for kind in ("inner", "layer"):
        for i in range(4):
            for leaf in ("weight", "bias"):
                key = key.replace(f"backbone.fpn.{kind}_blocks.{i}.0.{leaf}", f"backbone.fpn.{kind}_blocks.{i}.{leaf}")
    return key


@pytest.mark.parametrize("layout", ["plain", "module_prefix", "legacy_fpn", "both"])
def test_every_official_layout_loads_strictly_with_identical_values(model, official_state, tmp_path, layout):
    state = dict(official_state)
    if layout in ("legacy_fpn", "both"):
        state = {_legacy(k): v for k, v in state.items()}
        assert "backbone.fpn.inner_blocks.0.weight" in state
    if layout in ("module_prefix", "both"):
        state = {"module." + k: v for k, v in state.items()}
    path = tmp_path / f"{layout}.pth"
    torch.save({"fpn_model": state, "optimizer": {"lr": 0.01}}, path)
    load_into(model, read_checkpoint(path))
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in official_state.items())


def test_missing_batchnorm_counter_is_tolerated(model, official_state):
    counter = "roi_heads.box_predictor.dof_pred.1.num_batches_tracked"
    state = {k: v for k, v in official_state.items() if k != counter}
    assert len(state) == len(official_state) - 1
    model.get_buffer(counter).fill_(7)
    load_into(model, state)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert loaded[counter].item() == 0  # a fresh counter, whatever the model held before


def test_build_detector_fills_every_tensor_from_the_checkpoint(official_state):
    """It builds the network without initialising it (uninitialised memory the checkpoint then fills)."""
    built = build_detector(official_state)
    loaded = built.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in official_state.items())
    assert not any(t.is_meta for t in [*built.parameters(), *built.buffers()])


def test_a_buffer_no_checkpoint_holds_is_refused(official_state):
    class WithScratch(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("scratch", torch.empty(3), persistent=False)

    with pytest.raises(TypeError, match="buffers a checkpoint does not hold: scratch"):
        load_into(WithScratch(), {})


def test_missing_and_unexpected_keys_are_named(model, official_state):
    state = dict(official_state)
    del state["rpn.head.conv.weight"]
    state["extra.key"] = torch.zeros(1)
    expected = r"missing key\(s\): rpn\.head\.conv\.weight.*unexpected key\(s\): extra\.key"
    with pytest.raises(CheckpointError, match=expected):
        load_into(model, state)


def test_shape_mismatch_is_named(model, official_state):
    state = dict(official_state)
    state["roi_heads.class_predictor.cls_score.weight"] = torch.zeros(3, 1024)
    with pytest.raises(CheckpointError, match=r"cls_score\.weight: checkpoint \(3, 1024\), model \(2, 1024\)"):
        load_into(model, state)


def test_truncated_file_is_a_clear_error(official_state, tmp_path):
    path = tmp_path / "ok.pth"
    torch.save({"fpn_model": official_state}, path)
    broken = tmp_path / "truncated.pth"
    broken.write_bytes(path.read_bytes()[: 1_000_000])
    with pytest.raises(CheckpointError, match="could not be read as a torch checkpoint"):
        read_checkpoint(broken)


def test_wrong_container_and_missing_file(tmp_path):
    path = tmp_path / "bare.pth"
    torch.save({"model": {}}, path)
    with pytest.raises(CheckpointError, match='expected a dict with key "fpn_model"'):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "nope.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="could not be read"):
        read_checkpoint(garbage)


def test_duplicate_keys_under_two_layouts_are_refused(official_state):
    state = dict(official_state)
    state["module.rpn.head.conv.weight"] = state["rpn.head.conv.weight"]
    with pytest.raises(CheckpointError, match="twice"):
        canonical_state_dict(state)
