import pytest

from img2pose_serve.handler_config import HandlerConfig


def test_defaults_and_overrides_from_the_yaml_section():
    assert HandlerConfig.from_mapping(None) == HandlerConfig()
    config = HandlerConfig.from_mapping({"score_threshold": "0.3", "max_faces": 5, "max_images_per_forward": 2})
    assert (config.score_threshold, config.max_faces, config.max_images_per_forward) == (0.3, 5, 2)


@pytest.mark.parametrize("section, message", [
    ({"batchSize": 8}, "unknown setting"),
    ({"score_threshold": 1.5}, "score_threshold"),
    ({"max_faces": -2}, "max_faces"),
    ({"max_images_per_forward": 0}, "max_images_per_forward"),
    ({"max_image_pixels": 0}, "max_image_pixels"),
])
def test_invalid_settings_are_named(section, message):
    with pytest.raises(ValueError, match=message):
        HandlerConfig.from_mapping(section)


def test_images_per_pass_is_automatic_per_device_unless_set():
    assert HandlerConfig().resolved_images_per_pass("cpu") == 1
    assert HandlerConfig().resolved_images_per_pass("cuda") is None
    assert HandlerConfig.from_mapping({"images_per_pass": 4}).resolved_images_per_pass("cpu") == 4
    with pytest.raises(ValueError, match="images_per_pass"):
        HandlerConfig.from_mapping({"images_per_pass": -1})
