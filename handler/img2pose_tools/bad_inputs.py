"""A corpus of named bad requests and the answer the handler must give each (400 / 413 / 415).

Every case is built in memory (PIL / struct / zlib): no files are committed. A case is sent one of
three ways: a raw body with a Content-Type, a JSON object (``json=``), or multipart ``files=``.
``row()`` gives the dict TorchServe hands the handler for it, for the unit-level test that runs
``parse_request`` + ``decode_many`` without a server.

Left out on purpose (valid requests, not bad ones): ``"score_threshold": null`` means "use the
default" (documented), so it answers 200.
"""

from __future__ import annotations

import base64
import io
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

OCTET = "application/octet-stream"


@dataclass(frozen=True)
class BadCase:
    name: str
    status: int  # expected HTTP status: 400, 413 or 415
    substring: str  # must appear in the JSON body's "error"
    body: bytes | None = None  # raw body (with content_type)
    content_type: str | None = None
    json: Any = None  # a JSON document (sent with json=)
    files: list | None = field(default=None)  # requests' files= list: [(name, (filename, bytes, type))]

    def request_kwargs(self) -> dict:
        """Keyword arguments for TorchServeServer.predict / requests.post (body is ``data``)."""
        if self.files is not None:
            return {"body": None, "files": self.files}
        if self.json is not None:
            return {"body": None, "json": self.json}
        headers = {"Content-Type": self.content_type} if self.content_type else {}
        return {"body": self.body, "headers": headers}

    def header_content_type(self) -> str | None:
        if self.files is not None:
            return "multipart/form-data; boundary=x"
        if self.json is not None:
            return "application/json"
        return self.content_type

    def row(self) -> dict:
        """The request row TorchServe would hand the handler (its usual shapes)."""
        if self.files is not None:
            row = {}
            for name, spec in self.files:
                data = spec[1]
                # TorchServe 0.12 hands text parts over as bytes too, like file parts.
                row[name] = bytearray(data.encode("utf-8") if isinstance(data, str) else data)
            return row
        if self.json is not None:
            return {"body": self.json}
        return {"body": bytearray(self.body or b"")}


# --- building blocks -----------------------------------------------------------------------------


def encode(fmt: str, size=(64, 48), mode="RGB", **save) -> bytes:
    image = Image.new(mode, size)
    if mode == "RGB":
        image.putdata([((x * 7) % 256, (y * 5) % 256, (x * y) % 256)
                       for y in range(size[1]) for x in range(size[0])])
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_with_size(width: int, height: int) -> bytes:
    """A PNG whose IHDR (valid CRC) declares width x height; the data is a few bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def bmp_with_size(width: int, height: int) -> bytes:
    header = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + 16, 0, 0, 14 + 40) + header + b"\x00" * 16


def gif_with_size(width: int, height: int) -> bytes:
    return (b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00" * 6
            + b"," + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00;")


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0xFF]) + data[index + 1:]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _cases() -> list[BadCase]:
    jpeg, png = encode("JPEG", quality=90), encode("PNG")
    gif, webp = encode("GIF"), encode("WEBP", quality=80)
    bmp, tiff = encode("BMP"), encode("TIFF")
    good = b64(png)  # a valid image, so that JSON cases fail on the field under test
    cases: list[BadCase] = []

    def raw(name, status, substring, body, content_type=OCTET):
        cases.append(BadCase(name, status, substring, body=body, content_type=content_type))

    def js(name, substring, doc, status=400):
        cases.append(BadCase(name, status, substring, json=doc))

    undecodable = "could not be decoded as an image"
    unknown_format = "unrecognised file format"
    is_text = "it is text ("
    truncated_header = "signature, but the data ends inside its header (truncated)"

    # Truncated files of each format, cut at several points.
    for fmt, data in [("jpeg", jpeg), ("png", png), ("gif", gif), ("webp", webp), ("bmp", bmp), ("tiff", tiff)]:
        for fraction in (0.5, 0.9):
            raw(f"{fmt}_truncated_{int(fraction * 100)}pct", 400, undecodable, data[: int(len(data) * fraction)])
    raw("jpeg_truncated_after_soi", 400, truncated_header, jpeg[:4])
    thin = io.BytesIO()
    Image.new("RGB", (3000, 2)).save(thin, format="PNG")
    raw("png_3000x2_too_thin_to_resize", 400, "too thin for this model", thin.getvalue())
    raw("png_signature_only", 400, truncated_header, png[:8])
    raw("png_truncated_in_ihdr", 400, undecodable, png[:20])
    raw("gif_header_only", 400, "GIF signature, but", gif[:6])
    raw("tiff_header_only", 400, undecodable, tiff[:8])
    # Flipped bytes in headers.
    raw("jpeg_flipped_soi", 400, unknown_format, flip(jpeg, 1))
    raw("png_flipped_signature", 400, unknown_format, flip(png, 1))
    raw("png_broken_ihdr_crc", 400, "PNG signature, but broken PNG file (bad header checksum", flip(png, 29))
    raw("gif_flipped_magic", 400, unknown_format, flip(gif, 0))
    raw("webp_flipped_riff", 400, unknown_format, flip(webp, 0))
    raw("bmp_flipped_magic", 400, unknown_format, flip(bmp, 0))
    raw("tiff_flipped_byte_order", 400, unknown_format, flip(tiff, 0))
    # Zero and giant declared dimensions.
    no_pixels = "header declares no pixels"
    raw("png_0x0", 400, no_pixels, png_with_size(0, 0))
    raw("png_0x480", 400, no_pixels, png_with_size(0, 480))
    raw("bmp_0x0", 400, no_pixels, bmp_with_size(0, 0), "image/bmp")
    raw("gif_0x0", 400, no_pixels, gif_with_size(0, 0), "image/gif")
    raw("png_100000x100000", 413, "the limit is", png_with_size(100_000, 100_000))
    raw("png_20000x10000", 413, "the limit is", png_with_size(20_000, 10_000))
    raw("bmp_200000x1000", 413, "the limit is", bmp_with_size(200_000, 1000), "image/bmp")
    raw("gif_65535x65535", 413, "the limit is", gif_with_size(65535, 65535), "image/gif")
    # Non-image bytes.
    raw("text_as_octet_stream", 400, is_text, b"hello, this is not an image\n")
    raw("pdf_header", 400, unknown_format, b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", "application/pdf")
    raw("zip_file", 400, unknown_format, b"PK\x03\x04" + b"\x00" * 26 + b"PK\x05\x06" + b"\x00" * 18, "application/zip")
    raw("elf_binary", 400, unknown_format, b"\x7fELF\x02\x01\x01" + b"\x00" * 57)
    raw("html_as_image_jpeg", 400, is_text, b"<!doctype html><html><body>hi</body></html>", "image/jpeg")
    raw("empty_body_octet_stream", 400, "empty", b"")
    raw("empty_body_image_png", 400, "empty", b"", "image/png")
    # Unsupported content types.
    raw("text_plain", 415, "cannot carry an image", b"hello", "text/plain")
    raw("text_html", 415, "cannot carry an image", b"<html></html>", "text/html")
    raw("application_xml", 415, "cannot carry an image", b"<a/>", "application/xml")
    raw("video_mp4", 415, "cannot carry an image", jpeg, "video/mp4")
    raw("multipart_mixed", 415, "cannot carry an image", jpeg, "multipart/mixed; boundary=x")
    # JSON: wrong shapes and types.
    raw("json_not_json", 400, "not valid JSON", b"{not json", "application/json")
    raw("json_empty_body", 400, "empty", b"", "application/json")
    js("json_list_not_object", "must be an object", [good])
    js("json_string_not_object", "must be an object", "hello")
    js("json_empty_object", "has no image", {})
    js("json_image_is_number", "must be a base64-encoded image string", {"image": 123})
    js("json_image_is_null", "must be a base64-encoded image string", {"image": None})
    js("json_images_empty", "at least one", {"images": []})
    js("json_images_not_a_list", "must be a list", {"images": "notalist"})
    js("json_images_valid_then_number", "images[1]", {"images": [good, 5]})
    js("json_image_and_images", "not both", {"image": good, "images": [good]})
    js("json_unknown_key", "unknown JSON key", {"image": good, "threshold": 0.3})
    js("json_score_threshold_string", "score_threshold", {"image": good, "score_threshold": "abc"})
    js("json_score_threshold_negative", "score_threshold", {"image": good, "score_threshold": -0.1})
    js("json_score_threshold_above_one", "score_threshold", {"image": good, "score_threshold": 1.5})
    js("json_score_threshold_true", "score_threshold", {"image": good, "score_threshold": True})
    js("json_max_faces_fraction", "max_faces", {"image": good, "max_faces": 1.5})
    js("json_max_faces_minus_two", "max_faces", {"image": good, "max_faces": -2})
    js("json_max_faces_string", "max_faces", {"image": good, "max_faces": "x"})
    # Bad base64 and data URLs.
    js("b64_invalid_chars", "not valid base64", {"image": "iVBOR*&^%$#@!"})
    js("b64_wrong_padding", "not valid base64", {"image": "iVBORw0KGgoAAAANSUhEUg"})
    js("b64_empty_string", "is empty", {"image": ""})
    js("data_url_without_base64", "without ';base64'", {"image": "data:image/png," + good})
    js("data_url_base64_not_an_image", is_text, {"image": "data:image/png;base64," + b64(b"not an image at all")})
    js("b64_decodes_to_text", is_text, {"image": b64(b"plain text, not an image")})
    js("b64_giant_png", "the limit is", {"image": b64(png_with_size(100_000, 100_000))}, status=413)
    js("b64_too_many_images", "too many images", {"images": [good] * 17})
    js("b64_second_image_corrupt", "images[1]: the data (40 bytes)", {"images": [good, b64(png[:40])]})
    # Multipart.
    cases.append(BadCase("multipart_empty_file", 400, "is empty", files=[("photo", ("a.png", b"", "image/png"))]))
    cases.append(BadCase("multipart_only_parameters", 400, "no image file field",
                         files=[("score_threshold", (None, "0.5")), ("max_faces", (None, "3"))]))
    cases.append(BadCase("multipart_corrupt_file", 400, undecodable,
                         files=[("photo", ("a.jpg", jpeg[:100], "image/jpeg"))]))
    cases.append(BadCase("multipart_bad_score_threshold", 400, "score_threshold",
                         files=[("photo", ("a.png", png, "image/png")), ("score_threshold", (None, "abc"))]))
    cases.append(BadCase("multipart_bad_max_faces", 400, "max_faces",
                         files=[("photo", ("a.png", png, "image/png")), ("max_faces", (None, "1.5"))]))
    # TorchServe hands text parts over as bytes, so a stray field is read as an image and named.
    cases.append(BadCase("multipart_stray_text_field", 400, "form field 'comment': the data (5 bytes) could not "
                         "be decoded as an image: it is text ('hello')",
                         files=[("photo", ("a.png", png, "image/png")), ("comment", (None, "hello"))]))
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "duplicate case names"
    return cases


CASES: list[BadCase] = _cases()
