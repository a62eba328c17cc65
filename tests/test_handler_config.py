import pytest

from img2pose_serve.protocol.request_parsing import DetectionParams
from img2pose_serve.runtime.handler_config import TORCH_THREADS_ENV, HandlerConfig, HandlerConfigError


def test_defaults_and_overrides_from_the_yaml_section():
    assert HandlerConfig.from_mapping(None) == HandlerConfig()
    config = HandlerConfig.from_mapping({"score_threshold": 0.3, "max_faces": 5, "max_images_per_forward": 2})
    assert (config.score_threshold, config.max_faces, config.max_images_per_forward) == (0.3, 5, 2)
    assert config.detection_defaults == DetectionParams(score_threshold=0.3, max_faces=5)
    assert HandlerConfig().detection_defaults == DetectionParams(score_threshold=0.5, max_faces=-1)
    assert HandlerConfig.from_mapping({"score_threshold": 1}).score_threshold == 1.0


@pytest.mark.parametrize("section, message", [
    ({"batchSize": 8}, "unknown setting"),
    ({"score_threshold": 1.5}, r"^handler setting score_threshold must be in \[0, 1\], got 1.5$"),
    ({"score_threshold": "0.3"}, "score_threshold must be a finite number"),
    ({"score_threshold": float("nan")}, "score_threshold must be a finite number"),
    ({"max_faces": -2}, r"^handler setting max_faces must be >= -1 \(-1: all faces\), got -2$"),
    ({"max_images_per_forward": 0}, "max_images_per_forward must be >= 1"),
    ({"max_images_per_forward": -3}, "max_images_per_forward must be >= 1"),
    ({"max_images_per_forward": 2.7}, "max_images_per_forward must be an integer"),
    ({"max_images_per_forward": "1.5"}, "max_images_per_forward must be an integer"),
    ({"max_images_per_forward": True}, "max_images_per_forward must be an integer"),
    ({"max_pixels_per_forward": 0}, "max_pixels_per_forward must be >= 1"),
    ({"max_image_pixels": 0}, "max_image_pixels must be >= 1"),
    ({"decode_threads": 1.0}, "decode_threads must be an integer"),
    ({"min_size": 400.0}, r"^handler setting min_size must be an integer, got 400.0$"),
    ({"min_size": "400"}, "min_size must be an integer"),
    ({"max_size": True}, "max_size must be an integer"),
    ({"min_size": 31}, r"^handler setting min_size must be >= 32 \(the canvas is padded to multiples of 32 px"),
    ({"min_size": 0}, "min_size must be >= 32"),
    ({"min_size": 400, "max_size": 399}, r"^handler setting max_size must be >= min_size \(400\), got 399$"),
    ({"max_size": 600}, r"max_size must be >= min_size \(640\), got 600"),  # against the default min_size
])
def test_invalid_settings_are_refused_by_name(section, message):
    with pytest.raises(HandlerConfigError, match=message):
        HandlerConfig.from_mapping(section)


def test_resize_sizes_default_to_the_reference_s_and_take_any_valid_pair():
    assert (HandlerConfig().min_size, HandlerConfig().max_size) == (640, 1400)
    assert HandlerConfig.from_mapping({"min_size": 400}).min_size == 400
    config = HandlerConfig.from_mapping({"min_size": 32, "max_size": 32})
    assert (config.min_size, config.max_size) == (32, 32)
    config = HandlerConfig.from_mapping({"min_size": 800, "max_size": 1333})  # torchvision's own defaults
    assert (config.min_size, config.max_size) == (800, 1333)


def test_images_per_pass_is_automatic_per_device_unless_set():
    assert HandlerConfig().resolved_images_per_pass("cpu") == 1
    assert HandlerConfig().resolved_images_per_pass("cuda") is None
    assert HandlerConfig.from_mapping({"images_per_pass": 4}).resolved_images_per_pass("cpu") == 4
    with pytest.raises(HandlerConfigError, match="images_per_pass"):
        HandlerConfig.from_mapping({"images_per_pass": -1})


# --- IMG2POSE_TORCH_THREADS (the Deployment sets it from the pod's CPU limit) fills torch_threads ---

def test_the_environment_fills_an_automatic_torch_threads(monkeypatch):
    monkeypatch.setenv(TORCH_THREADS_ENV, "3")
    assert HandlerConfig.from_mapping({"torch_threads": 0}).torch_threads == 3
    assert HandlerConfig.from_mapping(None).torch_threads == 3
    assert HandlerConfig.from_mapping({"torch_threads": 2}).torch_threads == 2  # the archive's explicit value wins


def test_without_the_variable_torch_keeps_its_default(monkeypatch):
    monkeypatch.delenv(TORCH_THREADS_ENV, raising=False)
    assert HandlerConfig.from_mapping(None).torch_threads == 0
    monkeypatch.setenv(TORCH_THREADS_ENV, "")
    assert HandlerConfig.from_mapping(None).torch_threads == 0


def test_a_bad_value_fails_loudly(monkeypatch):
    monkeypatch.setenv(TORCH_THREADS_ENV, "-1")
    with pytest.raises(ValueError, match="torch_threads"):
        HandlerConfig.from_mapping(None)
    monkeypatch.setenv(TORCH_THREADS_ENV, "two")
    with pytest.raises(ValueError):
        HandlerConfig.from_mapping(None)
