"""A predict request's multipart form, read in one pass over its body into memory.

Starlette's request.form() spools every file part into a SpooledTemporaryFile inside an
UploadFile, which is right for large uploads but costs predict, whose images are a few kilobytes
and whose body is already bounded by the size limit, about a sixth of its CPU. This reads the
same parts with the same parser (python-multipart), keeping each part's bytes as they arrive.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from python_multipart.multipart import MultipartParseError, MultipartParser, parse_options_header


class FormError(ValueError):
    """The body is not a usable multipart/form-data form; the message says why."""


class TooManyParts(FormError):
    """More parts than the form takes."""


@dataclass
class Part:
    name: str
    filename: str | None  # None for a plain field
    data: bytearray = field(default_factory=bytearray)

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


def parse_form(body: bytes, content_type: str, *, max_parts: int) -> list[Part]:
    """The parts of a multipart/form-data body, in order."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise FormError("multipart/form-data needs a boundary parameter")
    parts: list[Part] = []
    headers: dict[bytes, bytes] = {}
    name, value = bytearray(), bytearray()

    def header_end() -> None:
        headers[bytes(name).lower()] = bytes(value)
        name.clear()
        value.clear()

    def headers_finished() -> None:
        disposition, params = parse_options_header(headers.get(b"content-disposition", b""))
        if disposition != b"form-data" or b"name" not in params:
            raise FormError("each part needs a Content-Disposition: form-data header with a name")
        if len(parts) >= max_parts:
            raise TooManyParts(f"more than {max_parts} parts sent")
        filename = params.get(b"filename")
        parts.append(
            Part(params[b"name"].decode("latin-1"), None if filename is None else filename.decode(errors="replace"))
        )
        headers.clear()

    parser = MultipartParser(
        boundary,
        callbacks={
            "on_header_field": lambda data, start, end: name.extend(data[start:end]),
            "on_header_value": lambda data, start, end: value.extend(data[start:end]),
            "on_header_end": header_end,
            "on_headers_finished": headers_finished,
            "on_part_data": lambda data, start, end: parts[-1].data.extend(data[start:end]),
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise FormError(f"malformed multipart body: {exc}") from None
    return parts
