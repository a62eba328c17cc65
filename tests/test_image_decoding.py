from __future__ import annotations

import struct
import zlib
from io import BytesIO

import numpy as np
import pytest
import torch
from PIL import Image

from img2pose_serve.protocol.errors import InvalidInput, PayloadTooLarge, RequestError
from img2pose_serve.runtime import image_decoding
from img2pose_serve.runtime.image_decoding import (
    check_resizable,
    decode_image,
    decode_tensor,
    image_size,
    image_to_tensor,
    leave_bomb_checks_to_img2pose,
)
from tests.support.fresh_interpreter import PILLOW_GUARD_SET_BY_THE_USER

LIMIT = 10_000_000


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def noise_rgb(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def pixels(img: Image.Image) -> np.ndarray:
    assert img.mode == "RGB"
    return np.array(img)


def png_with_declared_size(width: int, height: int) -> bytes:
    """A 1x1 PNG whose IHDR claims width x height, with a valid CRC."""
    data = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    ihdr_start = 8  # after the signature: length(4) type(4) payload(13) crc(4)
    assert data[ihdr_start + 4 : ihdr_start + 8] == b"IHDR"
    payload = bytearray(data[ihdr_start + 8 : ihdr_start + 21])
    payload[0:8] = struct.pack(">II", width, height)
    crc = zlib.crc32(b"IHDR" + payload) & 0xFFFFFFFF
    data[ihdr_start + 8 : ihdr_start + 21] = payload
    data[ihdr_start + 21 : ihdr_start + 25] = struct.pack(">I", crc)
    return bytes(data)


def decode_error(data: bytes, max_pixels: int = LIMIT) -> RequestError:
    with pytest.raises(RequestError) as info:
        decode_image(data, max_pixels)
    return info.value


# --- modes ------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF"])
def test_rgb_lossless_round_trip(fmt: str) -> None:
    src = noise_rgb()
    out = decode_image(encode(src, fmt), LIMIT)
    assert out.size == (64, 48)
    np.testing.assert_array_equal(pixels(out), np.array(src))


def test_rgb_jpeg_matches_pil_decode() -> None:
    data = encode(noise_rgb(), "JPEG", quality=90)
    expected = np.array(Image.open(BytesIO(data)))
    np.testing.assert_array_equal(pixels(decode_image(data, LIMIT)), expected)


def test_rgba_drops_alpha_without_compositing() -> None:
    src = Image.new("RGBA", (3, 2), (10, 20, 30, 0))
    src.putpixel((1, 1), (200, 100, 50, 128))
    out = pixels(decode_image(encode(src, "PNG"), LIMIT))
    assert out.shape == (2, 3, 3)
    assert out[0, 0].tolist() == [10, 20, 30]
    assert out[1, 1].tolist() == [200, 100, 50]


def test_la_drops_alpha_and_replicates_grey() -> None:
    src = Image.new("LA", (2, 2), (77, 0))
    out = pixels(decode_image(encode(src, "PNG"), LIMIT))
    assert (out == 77).all()


def test_greyscale_replicated_to_three_channels() -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    out = pixels(decode_image(encode(Image.fromarray(grey), "PNG"), LIMIT))
    assert out.shape == (3, 4, 3)
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], grey)


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_goes_through_palette(fmt: str) -> None:
    src = Image.new("P", (2, 1))
    src.putpalette([255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    src.putpixel((0, 0), 0)
    src.putpixel((1, 0), 1)
    out = pixels(decode_image(encode(src, fmt), LIMIT))
    assert out[0, 0].tolist() == [255, 0, 0]
    assert out[0, 1].tolist() == [0, 0, 255]


def test_cmyk_jpeg_uses_pil_conversion() -> None:
    data = encode(Image.new("CMYK", (8, 8), (255, 0, 0, 0)), "JPEG", quality=100)
    assert Image.open(BytesIO(data)).mode == "CMYK"
    out = pixels(decode_image(data, LIMIT))
    np.testing.assert_array_equal(out, np.array(Image.open(BytesIO(data)).convert("RGB")))
    assert np.abs(out[0, 0].astype(int) - [0, 255, 255]).max() <= 2  # cyan


def test_sixteen_bit_png_is_scaled_not_clipped() -> None:
    values = np.array([[0, 255, 256, 1000, 32768, 65535]], dtype=np.uint16)
    data = encode(Image.fromarray(values), "PNG")
    assert Image.open(BytesIO(data)).mode.startswith("I;16")
    out = pixels(decode_image(data, LIMIT))
    for channel in range(3):
        assert out[0, :, channel].tolist() == [0, 0, 1, 3, 128, 255]


def test_thirty_two_bit_integer_mode_is_clipped_then_scaled() -> None:
    values = np.array([[-5, 256, 65535, 10**6]], dtype=np.int32)
    data = encode(Image.fromarray(values), "TIFF")
    assert Image.open(BytesIO(data)).mode == "I"
    out = pixels(decode_image(data, LIMIT))
    assert out[0, :, 0].tolist() == [0, 1, 255, 255]


def test_one_bit_image() -> None:
    src = Image.new("1", (2, 1), 0)
    src.putpixel((1, 0), 1)
    out = pixels(decode_image(encode(src, "PNG"), LIMIT))
    assert out[0].tolist() == [[0, 0, 0], [255, 255, 255]]


def test_one_by_one_image() -> None:
    out = decode_image(encode(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG"), LIMIT)
    assert out.size == (1, 1)
    assert pixels(out)[0, 0].tolist() == [1, 2, 3]


def test_animated_gif_uses_first_frame() -> None:
    frames = [Image.new("RGB", (4, 4), c) for c in [(255, 0, 0), (0, 255, 0)]]
    buf = BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    assert Image.open(BytesIO(buf.getvalue())).n_frames == 2
    out = pixels(decode_image(buf.getvalue(), LIMIT))
    assert (out == [255, 0, 0]).all()


def test_exif_orientation_is_ignored() -> None:
    src = noise_rgb(8, 4)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    data = encode(src, "PNG", exif=exif)
    assert Image.open(BytesIO(data)).getexif()[0x0112] == 6
    out = decode_image(data, LIMIT)
    assert out.size == (8, 4)
    np.testing.assert_array_equal(pixels(out), np.array(src))


# --- errors -----------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image_is_400(fmt: str) -> None:
    data = encode(noise_rgb(), fmt)
    error = decode_error(data[: len(data) // 2])
    assert error.status == 400
    assert "could not be decoded as an image" in error.message
    assert "truncated" in error.message


def test_random_bytes_are_400() -> None:
    data = np.random.default_rng(1).bytes(2000)
    error = decode_error(data)
    assert error.status == 400
    assert error.message.startswith("the data (2000 bytes) could not be decoded as an image")


def test_text_is_named_as_text() -> None:
    error = decode_error(b"hello")
    assert error.status == 400
    assert error.message.endswith("it is text ('hello'), not an image file")


def test_broken_header_checksum_names_the_format() -> None:
    data = bytearray(encode(noise_rgb(), "PNG"))
    data[29] ^= 0xFF  # inside the IHDR CRC
    error = decode_error(bytes(data))
    assert error.status == 400
    assert "it has a PNG signature, but broken PNG file (bad header checksum" in error.message


@pytest.mark.parametrize("size", [(0, 0), (0, 48), (64, 0)])
def test_zero_declared_size_is_400_naming_it(size: tuple[int, int]) -> None:
    error = decode_error(png_with_declared_size(*size))
    assert error.status == 400
    assert "PNG signature, but its header declares no pixels (width or height 0)" in error.message


def test_header_cut_short_says_truncated() -> None:
    error = decode_error(encode(noise_rgb(), "JPEG")[:4])
    assert error.message.endswith("it has a JPEG signature, but the data ends inside its header (truncated)")


def test_empty_data_is_400() -> None:
    error = decode_error(b"")
    assert (error.status, error.message) == (400, "the image is empty (0 bytes)")


PILLOWS_DEFAULT_GUARD = 89_478_485


@pytest.mark.parametrize("pillow_guard", [PILLOWS_DEFAULT_GUARD, None], ids=["in-process", "worker"])
def test_bomb_header_is_413_before_decoding(pillow_guard, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pillow_guard)
    data = png_with_declared_size(100_000, 100_000)
    error = decode_error(data, max_pixels=LIMIT)
    assert error.status == 413
    assert error.message == (
        "image is 100000 x 100000 = 10000000000 pixels; the limit is 10000000"
    )
    assert error.to_json() == {"error": error.message, "code": 413}


def test_limit_is_inclusive() -> None:
    data = encode(Image.new("RGB", (10, 5)), "PNG")
    assert decode_image(data, max_pixels=50).size == (10, 5)
    assert decode_error(data, max_pixels=49).status == 413


@pytest.mark.slow
def test_importing_the_package_leaves_pillows_guard_to_its_owner(fresh_interpreter) -> None:
    assert fresh_interpreter.pillow_guard == PILLOW_GUARD_SET_BY_THE_USER


def test_the_worker_switches_pillows_guard_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", PILLOWS_DEFAULT_GUARD)
    leave_bomb_checks_to_img2pose()
    assert Image.MAX_IMAGE_PIXELS is None


def test_an_image_pillows_guard_refuses_under_our_limit_is_413_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)
    error = decode_error(encode(Image.new("RGB", (10, 10)), "PNG"), max_pixels=LIMIT)
    assert error.status == 413
    assert "PIL.Image.MAX_IMAGE_PIXELS = 10" in error.message


# --- tensor -----------------------------------------------------------------


def test_image_to_tensor_is_bit_identical_to_reference() -> None:
    img = decode_image(encode(noise_rgb(37, 23, seed=3), "PNG"), LIMIT)
    expected = torch.from_numpy(np.array(img, np.float32)).permute(2, 0, 1) / 255.0
    tensor = image_to_tensor(img)
    assert tensor.shape == (3, 23, 37)
    assert tensor.dtype == torch.float32
    assert tensor.device.type == "cpu"
    assert torch.equal(tensor, expected)
    assert float(tensor.min()) >= 0.0 and float(tensor.max()) <= 1.0
    assert tensor[0, 5, 7].item() == np.float32(np.array(img)[5, 7, 0]) / np.float32(255.0)


def test_image_to_tensor_refuses_non_rgb() -> None:
    with pytest.raises(ValueError):
        image_to_tensor(Image.new("L", (2, 2)))


# --- decode_tensor -----------------------------------------------------------


def test_decode_tensor_returns_tensors_and_raises_typed_errors() -> None:
    good_a = decode_tensor(encode(Image.new("RGB", (3, 3), (9, 9, 9)), "PNG"), 1000)
    good_b = decode_tensor(encode(Image.new("L", (2, 5), 40), "PNG"), 1000)
    assert isinstance(good_a, torch.Tensor) and tuple(good_a.shape) == (3, 3, 3)
    assert isinstance(good_b, torch.Tensor) and tuple(good_b.shape) == (3, 5, 2)
    assert good_b[:, 0, 0].tolist() == [np.float32(40) / np.float32(255)] * 3
    for data, error_type, status in ((b"not an image", InvalidInput, 400),
                                     (png_with_declared_size(5000, 5000), PayloadTooLarge, 413),
                                     (b"", InvalidInput, 400)):
        with pytest.raises(error_type) as error:
            decode_tensor(data, 1000)
        assert error.value.status == status


def test_running_out_of_memory_while_decoding_is_the_images_fault(monkeypatch) -> None:
    def no_memory(img):
        raise MemoryError

    monkeypatch.setattr(image_decoding, "image_to_tensor", no_memory)
    with pytest.raises(PayloadTooLarge, match="too large to decode in the memory available"):
        decode_tensor(encode(Image.new("RGB", (3, 3)), "PNG"), 1000)


def test_a_failure_of_ours_while_decoding_is_not_a_request_error(monkeypatch) -> None:
    def broken(img):
        raise RuntimeError("a bug")

    monkeypatch.setattr(image_decoding, "image_to_tensor", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        decode_tensor(encode(Image.new("RGB", (3, 3)), "PNG"), 1000)


def test_image_size_reads_the_header_only() -> None:
    noise = np.random.default_rng(1).integers(0, 256, size=(21, 370, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), "PNG")
    cut = data[: len(data) // 2]  # the pixel data is cut off: not read here
    assert image_size(data, 10_000) == (370, 21)
    assert image_size(cut, 10_000) == (370, 21)
    with pytest.raises(RequestError) as error:
        image_size(png_with_declared_size(5000, 5000), 1000)
    assert error.value.status == 413
    with pytest.raises(InvalidInput):
        decode_tensor(cut, 10_000)


def test_image_to_tensor_equals_the_reference_expression_bit_for_bit() -> None:
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, size=(31, 17, 3), dtype=np.uint8))
    ours = image_to_tensor(img)
    reference = torch.from_numpy(np.array(img, dtype=np.float32)).permute(2, 0, 1) / 255.0
    assert torch.equal(ours, reference)
    assert ours.stride() == reference.stride() and ours.dtype == reference.dtype


def test_an_image_too_thin_for_the_resize_is_refused_from_its_size():
    check_resizable(1400, 1, 640, 1400)  # 1 px high after the resize: the network runs it
    with pytest.raises(InvalidInput, match=r"1401x1: too thin for this model.*at most 1400 times"):
        check_resizable(1401, 1, 640, 1400)
    check_resizable(1401, 1, 640, 2000)  # another model's resize keeps it
