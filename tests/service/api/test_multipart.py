"""The predict form reader against bodies built by a real HTTP client."""

from __future__ import annotations

import httpx
import pytest

from service.api.multipart import FormError, parse_form


def encoded(data: dict, files: list) -> tuple[bytes, str]:
    request = httpx.Request("POST", "http://x/", data=data, files=files)
    return request.read(), request.headers["content-type"]


def test_fields_and_files_in_order_with_their_bytes_intact():
    image = bytes(range(256)) * 3 + b"\r\n--not-a-boundary\r\n"
    body, content_type = encoded(
        {"model": "fashion@production", "top_k": "3"},
        [("files", ("a.png", image, "image/png")), ("files", ("ünï.png", b"x", "image/png"))],
    )
    parts = parse_form(body, content_type, max_parts=10)
    assert [(p.name, p.filename) for p in parts] == [
        ("model", None),
        ("top_k", None),
        ("files", "a.png"),
        ("files", "ünï.png"),
    ]
    assert parts[0].text == "fashion@production" and bytes(parts[2].data) == image and parts[3].data == b"x"


def test_what_is_not_a_form_is_refused_with_a_reason():
    body, content_type = encoded({"model": "m"}, [("files", ("a.png", b"x", "image/png"))])
    with pytest.raises(FormError, match="boundary"):
        parse_form(body, "multipart/form-data", max_parts=10)
    with pytest.raises(FormError, match="more than 1 parts"):
        parse_form(body, content_type, max_parts=1)
    boundary = content_type.split("boundary=")[1]
    nameless = f"--{boundary}\r\nContent-Disposition: form-data\r\n\r\nx\r\n--{boundary}--\r\n".encode()
    with pytest.raises(FormError, match="with a name"):
        parse_form(nameless, content_type, max_parts=10)
    with pytest.raises(FormError, match="malformed"):
        parse_form(b"--" + boundary.encode() + b"\r\n\x00\x01garbage", content_type, max_parts=10)
