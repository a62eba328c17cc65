from __future__ import annotations

import base64
from typing import Any

import pytest

from img2pose_serve.protocol.errors import (
    DeadlineExceeded,
    InternalError,
    InvalidInput,
    PayloadTooLarge,
    RequestError,
    UnsupportedMediaType,
)
from img2pose_serve.protocol.request_parsing import DetectionParams, ParsedRequest, parse_request
from img2pose_serve.runtime.handler_config import HandlerConfig

DEFAULTS = DetectionParams(score_threshold=0.5, max_faces=-1)
JPEG = b"\xff\xd8\xff\xe0fake-jpeg-bytes"
PNG = b"\x89PNG\r\n\x1a\nfake-png-bytes"
B64_JPEG = base64.b64encode(JPEG).decode()
B64_PNG = base64.b64encode(PNG).decode()
MULTIPART = "multipart/form-data; boundary=----abc"
PRODUCTION_LIMIT = HandlerConfig().max_images_per_request


def parse(row: dict[str, Any], defaults: DetectionParams = DEFAULTS, content_type: str | None = None,
          max_images_per_request: int = PRODUCTION_LIMIT) -> ParsedRequest:
    return parse_request(row, defaults, content_type, max_images_per_request=max_images_per_request)


def error_of(row: dict[str, Any], content_type: str | None = None, **kwargs: Any) -> RequestError:
    with pytest.raises(RequestError) as info:
        parse(row, DEFAULTS, content_type, **kwargs)
    return info.value


def json_error(doc: Any) -> RequestError:
    return error_of({"body": doc}, "application/json")


def test_request_error_to_json() -> None:
    error = PayloadTooLarge("too big")
    assert (error.status, error.message, str(error)) == (413, "too big", "too big")
    assert error.to_json() == {"error": "too big", "code": 413}


def test_each_error_type_carries_its_status_and_keeps_it_when_prefixed() -> None:
    statuses = {InvalidInput: 400, PayloadTooLarge: 413, UnsupportedMediaType: 415, DeadlineExceeded: 504}
    for error_type, status in statuses.items():
        error = error_type("bad").prefixed("images[1]: ")
        assert (type(error), error.status, error.message) == (error_type, status, "images[1]: bad")
    internal = InternalError("request-3")
    assert internal.prefixed("images[1]: ") is internal  # the client learns nothing more of it
    assert internal.to_json() == {"error": "internal error", "code": 500, "request_id": "request-3"}


@pytest.mark.parametrize(("params", "message"), [
    ((1.5, -1), "score_threshold must be in [0, 1], got 1.5"),
    ((float("nan"), -1), "score_threshold must be in [0, 1], got nan"),
    ((0.5, -2), "max_faces must be >= -1 (-1: all faces), got -2"),
])
def test_detection_params_refuse_values_out_of_range(params: tuple, message: str) -> None:
    with pytest.raises(ValueError) as error:
        DetectionParams(*params)
    assert str(error.value) == message
    assert DetectionParams(1.0, -1) == DetectionParams(1.0, -1) and DetectionParams(0.0, 0).max_faces == 0


# --- raw body ---------------------------------------------------------------


@pytest.mark.parametrize("content_type", [None, "image/jpeg", "application/octet-stream",
                                          "binary/octet-stream", "IMAGE/PNG; q=1"])
@pytest.mark.parametrize("key", ["body", "data"])
def test_raw_body_is_one_image(key: str, content_type: str | None) -> None:
    parsed = parse({key: bytearray(JPEG)}, DEFAULTS, content_type)
    assert parsed == ParsedRequest(images=[JPEG], params=DEFAULTS, answer_as_list=False)
    assert type(parsed.images[0]) is bytes


@pytest.mark.parametrize("body", [bytearray(), b""])
def test_empty_raw_body_is_400(body: bytes) -> None:
    error = error_of({"body": body}, "image/jpeg")
    assert error.status == 400
    assert "empty" in error.message


@pytest.mark.parametrize("content_type", [
    "text/plain", "text/plain; charset=utf-8", "application/x-www-form-urlencoded",
    "audio/wav", "video/mp4", "multipart/mixed; boundary=x", "application/xml",
])
def test_content_types_that_cannot_hold_an_image_are_415(content_type: str) -> None:
    error = error_of({"body": bytearray(JPEG)}, content_type)
    assert error.status == 415
    assert content_type.split(";")[0].lower() in error.message
    assert "multipart/form-data" in error.message  # says what to do instead


def test_text_body_without_content_type_is_415() -> None:
    assert error_of({"body": "hello"}).status == 415


# --- JSON -------------------------------------------------------------------


def test_json_single_image_with_params() -> None:
    doc = {"image": B64_JPEG, "score_threshold": 0.3, "max_faces": 10}
    parsed = parse({"body": doc}, DEFAULTS, "application/json")
    assert parsed == ParsedRequest([JPEG], DetectionParams(0.3, 10), answer_as_list=False)


def test_json_images_list_is_many_even_with_one() -> None:
    parsed = parse({"body": {"images": [B64_JPEG]}}, DEFAULTS, "application/json")
    assert parsed == ParsedRequest([JPEG], DEFAULTS, answer_as_list=True)
    parsed = parse({"body": {"images": [B64_JPEG, B64_PNG]}}, DEFAULTS, None)
    assert parsed.images == [JPEG, PNG]
    assert parsed.answer_as_list is True


def test_json_params_default_when_absent_or_null() -> None:
    parsed = parse({"body": {"image": B64_JPEG, "max_faces": None}}, DEFAULTS)
    assert parsed.params == DEFAULTS


def test_json_body_as_unparsed_bytes_is_parsed() -> None:
    # Content-Type "application/json; charset=utf-8" is not decoded by TorchServe.
    raw = bytearray(b'{"image": "%s", "max_faces": 2}' % B64_JPEG.encode())
    parsed = parse({"body": raw}, DEFAULTS, "application/json; charset=utf-8")
    assert parsed.images == [JPEG]
    assert parsed.params == DetectionParams(0.5, 2)


def test_invalid_json_bytes_are_400() -> None:
    error = error_of({"body": bytearray(b"{not json")}, "application/json")
    assert error.status == 400
    assert "not valid JSON" in error.message


@pytest.mark.parametrize("prefix", ["", "data:image/jpeg;base64,", "DATA:image/png;BASE64,",
                                    "data:;base64,"])
def test_base64_with_and_without_data_url(prefix: str) -> None:
    parsed = parse({"body": {"image": prefix + B64_JPEG}}, DEFAULTS)
    assert parsed.images == [JPEG]


def test_base64_whitespace_and_newlines_are_stripped() -> None:
    wrapped = "\n".join(B64_PNG[i : i + 4] for i in range(0, len(B64_PNG), 4)) + "\r\n "
    assert parse({"body": {"image": wrapped}}, DEFAULTS).images == [PNG]


@pytest.mark.parametrize("bad", ["not base64!!", B64_JPEG.rstrip("=") + "=x", "abc",
                                 base64.urlsafe_b64encode(b"\xfb\xff\xfe").decode()])
def test_bad_base64_is_400(bad: str) -> None:
    error = json_error({"image": bad})
    assert error.status == 400
    assert error.message.startswith("image is not valid base64")


def test_bad_base64_in_images_names_the_index() -> None:
    error = json_error({"images": [B64_JPEG, "@@@"]})
    assert error.status == 400
    assert error.message.startswith("images[1] is not valid base64")


def test_data_url_without_base64_is_400() -> None:
    error = json_error({"image": "data:image/png," + B64_PNG})
    assert error.status == 400
    assert "base64" in error.message


@pytest.mark.parametrize("doc, expected", [
    ({}, "no image"),
    ({"score_threshold": 0.4}, "no image"),
    ({"image": ""}, "image is empty"),
    ({"image": "  \n"}, "image is empty"),
    ({"image": 123}, "image must be a base64-encoded image string, got 123"),
    ({"image": None}, "got null"),
    ({"image": [B64_JPEG]}, "got an array"),
    ({"images": []}, "at least one"),
    ({"images": B64_JPEG}, "images must be a list"),
    ({"images": [B64_JPEG, 7]}, "images[1] must be a base64-encoded image string, got 7"),
    ({"image": B64_JPEG, "images": [B64_JPEG]}, "not both"),
    ([B64_JPEG], "must be an object"),
    ("just a string", "must be an object"),
    (42, "must be an object"),
    (None, "got null"),
])
def test_json_input_errors_are_400(doc: Any, expected: str) -> None:
    error = json_error(doc)
    assert error.status == 400
    assert expected in error.message


def test_unknown_json_keys_are_named() -> None:
    error = json_error({"image": B64_JPEG, "threshold": 0.3, "maxFaces": 2})
    assert error.status == 400
    assert "'threshold'" in error.message and "'maxFaces'" in error.message
    assert "score_threshold" in error.message  # lists the allowed keys


def test_json_body_as_bytes_that_is_a_list_is_400() -> None:
    error = error_of({"body": bytearray(b"[1, 2]")}, "application/json")
    assert (error.status, "must be an object" in error.message) == (400, True)


# --- parameters -------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [(0, 0.0), (1, 1.0), (0.25, 0.25), (1.0, 1.0)])
def test_score_threshold_json_accepted(value: Any, expected: float) -> None:
    parsed = parse({"body": {"image": B64_JPEG, "score_threshold": value}}, DEFAULTS)
    assert parsed.params.score_threshold == expected
    assert type(parsed.params.score_threshold) is float


@pytest.mark.parametrize("value, shown", [
    ("abc", "'abc'"), ("0.3", "'0.3'"), (True, "true"), (False, "false"),
    (-0.01, "-0.01"), (1.5, "1.5"), (float("nan"), "nan"), (float("inf"), "inf"),
    ([0.3], "an array"),
])
def test_score_threshold_json_rejected(value: Any, shown: str) -> None:
    error = json_error({"image": B64_JPEG, "score_threshold": value})
    assert error.status == 400
    assert error.message == f"score_threshold must be a number between 0 and 1, got {shown}"


def test_score_threshold_nan_from_json_text_is_400() -> None:
    raw = bytearray(b'{"image": "%s", "score_threshold": NaN}' % B64_JPEG.encode())
    assert error_of({"body": raw}, "application/json").status == 400


@pytest.mark.parametrize("value, expected", [(-1, -1), (0, 0), (10, 10), (10.0, 10)])
def test_max_faces_json_accepted(value: Any, expected: int) -> None:
    parsed = parse({"body": {"image": B64_JPEG, "max_faces": value}}, DEFAULTS)
    assert parsed.params.max_faces == expected
    assert type(parsed.params.max_faces) is int


@pytest.mark.parametrize("value, shown", [
    (1.5, "1.5"), ("abc", "'abc'"), (-2, "-2"), ("10", "'10'"), (True, "true"),
    (float("inf"), "inf"), ({"n": 1}, "an object"),
])
def test_max_faces_json_rejected(value: Any, shown: str) -> None:
    error = json_error({"image": B64_JPEG, "max_faces": value})
    assert error.status == 400
    assert error.message == f"max_faces must be an integer >= -1 (-1: no limit; 0: no faces), got {shown}"


# --- multipart --------------------------------------------------------------


def test_multipart_one_file_is_not_many() -> None:
    parsed = parse({"image": bytearray(JPEG)}, DEFAULTS, MULTIPART)
    assert parsed == ParsedRequest([JPEG], DEFAULTS, answer_as_list=False)


def test_multipart_field_order_kept_and_params_read() -> None:
    row = {"b_second": bytearray(PNG), "score_threshold": bytearray(b"0.7"),
           "a_first": bytearray(JPEG), "max_faces": "10", "z": bytearray(b"xyz")}
    parsed = parse(row, DEFAULTS, MULTIPART)
    assert parsed.images == [PNG, JPEG, b"xyz"]
    assert parsed.params == DetectionParams(0.7, 10)
    assert parsed.answer_as_list is True


def test_errors_name_the_image_the_way_the_client_sent_it() -> None:
    form = parse({"photo": bytearray(JPEG), "comment": bytearray(b"hi")}, DEFAULTS, MULTIPART)
    assert [form.error_prefix(n) for n in range(2)] == ["form field 'photo': ", "form field 'comment': "]
    listed = parse({"body": {"images": [B64_JPEG, B64_JPEG]}}, DEFAULTS, "application/json")
    assert listed.error_prefix(1) == "images[1]: "
    assert parse({"body": bytearray(JPEG)}, DEFAULTS, "image/jpeg").error_prefix(0) == ""


def test_multipart_without_content_type_header() -> None:
    row = {"file1": bytearray(JPEG), "file2": bytearray(PNG), "max_faces": b"3"}
    parsed = parse(row, DEFAULTS, None)
    assert parsed == ParsedRequest([JPEG, PNG], DetectionParams(0.5, 3), answer_as_list=True)


def test_multipart_field_named_data_is_an_image() -> None:
    parsed = parse({"data": bytearray(JPEG), "score_threshold": b"0.1"},
                           DEFAULTS, MULTIPART)
    assert parsed == ParsedRequest([JPEG], DetectionParams(0.1, -1), answer_as_list=False)


@pytest.mark.parametrize("text, expected", [("0", 0.0), (" 0.35 ", 0.35), ("1", 1.0),
                                            ("5e-1", 0.5), (".5", 0.5)])
def test_multipart_score_threshold_text_accepted(text: str, expected: float) -> None:
    for value in (text, bytearray(text.encode())):
        parsed = parse({"f": bytearray(JPEG), "score_threshold": value}, DEFAULTS, MULTIPART)
        assert parsed.params.score_threshold == expected


@pytest.mark.parametrize("text", ["abc", "", "nan", "inf", "1.01", "-0.1", "0,5", "true"])
def test_multipart_score_threshold_text_rejected(text: str) -> None:
    error = error_of({"f": bytearray(JPEG), "score_threshold": bytearray(text.encode())},
                     MULTIPART)
    assert error.status == 400
    assert error.message == f"score_threshold must be a number between 0 and 1, got {text!r}"


@pytest.mark.parametrize("text, expected", [("10", 10), ("-1", -1), ("0", 0), (" 7\n", 7)])
def test_multipart_max_faces_text_accepted(text: str, expected: int) -> None:
    parsed = parse({"f": bytearray(JPEG), "max_faces": bytearray(text.encode())},
                           DEFAULTS, MULTIPART)
    assert parsed.params.max_faces == expected


@pytest.mark.parametrize("text", ["1.5", "abc", "-2", "", "10.0", "1e3", "9" * 5000])
def test_multipart_max_faces_text_rejected(text: str) -> None:
    error = error_of({"f": bytearray(JPEG), "max_faces": text}, MULTIPART)
    assert error.status == 400
    assert error.message.startswith("max_faces must be an integer >= -1")


def test_multipart_without_image_is_400() -> None:
    error = error_of({"score_threshold": b"0.5"}, MULTIPART)
    assert error.status == 400
    assert "no image" in error.message


def test_multipart_empty_file_is_400() -> None:
    error = error_of({"a": bytearray(JPEG), "photo": bytearray()}, MULTIPART)
    assert error.status == 400
    assert "'photo'" in error.message and "empty" in error.message


def test_multipart_text_in_image_field_is_400() -> None:
    error = error_of({"photo": "hello"}, MULTIPART)
    assert error.status == 400
    assert "'photo'" in error.message and "image file" in error.message


def test_multipart_json_part_param_is_validated() -> None:
    parsed = parse({"f": bytearray(JPEG), "max_faces": 4}, DEFAULTS, MULTIPART)
    assert parsed.params.max_faces == 4
    assert error_of({"f": bytearray(JPEG), "score_threshold": True}, MULTIPART).status == 400


# --- image count cap --------------------------------------------------------


def test_json_image_cap() -> None:
    at_cap = parse({"body": {"images": [B64_JPEG] * 3}}, DEFAULTS,
                           max_images_per_request=3)
    assert len(at_cap.images) == 3
    error = error_of({"body": {"images": [B64_JPEG] * 4}}, max_images_per_request=3)
    assert error.status == 400
    assert "4" in error.message and "limit is 3" in error.message


def test_production_cap_is_the_handler_default() -> None:
    assert len(parse({"body": {"images": [B64_JPEG] * PRODUCTION_LIMIT}}, DEFAULTS).images) == PRODUCTION_LIMIT
    error = error_of({"body": {"images": [B64_JPEG] * (PRODUCTION_LIMIT + 1)}})
    assert error.status == 400 and f"limit is {PRODUCTION_LIMIT}" in error.message


def test_multipart_image_cap() -> None:
    row = {f"f{i}": bytearray(JPEG) for i in range(3)}
    assert len(parse(row, DEFAULTS, MULTIPART, max_images_per_request=3).images) == 3
    row["f3"] = bytearray(PNG)
    error = error_of(row, MULTIPART, max_images_per_request=3)
    assert error.status == 400
    assert "limit is 3" in error.message
