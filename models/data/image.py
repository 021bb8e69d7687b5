"""Images in, pixels out: decode an encoded image (PNG, JPEG, ...) to uint8 pixels [C, H, W] with
one or three channels. Training uploads and predict requests both pass here, so a served model
sees its inputs exactly as it saw its training set."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Pillow's own bomb guard only warns below twice its limit; callers pass max_pixels instead.
Image.MAX_IMAGE_PIXELS = None

GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


class ImageError(ValueError):
    """An image cannot be used; the message names it and says why."""


def _flatten_alpha(image: Image.Image) -> Image.Image:
    """Transparent areas become black, like the datasets' backgrounds."""
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        image.mode in ("P", "L", "RGB") and "transparency" in image.info
    ):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image


def _eight_bit(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit grey to 8-bit by scaling the full range (65535 -> 255), never by clipping."""
    if image.mode.startswith("I;16"):
        return Image.fromarray((np.asarray(image, dtype=np.uint32) // 257).astype(np.uint8), mode="L")
    if image.mode == "I":
        array = np.asarray(image, dtype=np.int64)
        top = 65535 if array.max(initial=0) > 255 else 255
        return Image.fromarray((np.clip(array, 0, top) * 255 // top).astype(np.uint8), mode="L")
    if image.mode == "F":
        array = np.nan_to_num(np.asarray(image, dtype=np.float64))
        top = 1.0 if array.max(initial=0) <= 1.0 else 255.0
        return Image.fromarray((np.clip(array / top, 0, 1) * 255).round().astype(np.uint8), mode="L")
    return image


def to_mode(image: Image.Image, channels: int) -> Image.Image:
    """Any decoded image to 8-bit grey ("L", ITU-R 601-2 luma) or RGB: EXIF orientation applied,
    transparency composited on black, CMYK and palette converted by Pillow, 16-bit scaled."""
    image = ImageOps.exif_transpose(image)
    image = _eight_bit(_flatten_alpha(image))
    return image.convert("L" if channels == 1 else "RGB")


def is_grey(image: Image.Image) -> bool:
    """Whether an image holds no colour: a grey mode, or every pixel with R = G = B."""
    if image.mode in GREY_MODES:
        return True
    rgb = np.asarray(to_mode(image, 3))
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def open_image(data: bytes, name: str, *, max_pixels: int) -> Image.Image:
    """An encoded image opened and loaded; ImageError naming `name` when unreadable or too large."""
    if not data:
        raise ImageError(f"{name}: the file is empty")
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > max_pixels:
            side = math.isqrt(max_pixels)
            square = f" ({side}x{side})" if side * side == max_pixels else ""
            raise ImageError(
                f"{name}: image is {width}x{height} pixels; the limit is {max_pixels:,} pixels{square}: make it "
                "smaller, or raise the service's TRAINYARD_MAX_IMAGE_PIXELS"
            )
        image.load()
        return image
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not a recognised image (PNG, JPEG, BMP, WebP, ...)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{name}: image could not be decoded ({exc})") from None


def pixels_of(image: Image.Image, channels: int, size: tuple[int, int] | None = None) -> np.ndarray:
    """An opened image as uint8 pixels [C, H, W], resized (bilinear) to `size` (width, height) when given."""
    try:
        converted = to_mode(image, channels)
        if size is not None and converted.size != tuple(size):
            converted = converted.resize(tuple(size), Image.Resampling.BILINEAR)
        array = np.array(converted, dtype=np.uint8)  # a writable copy: torch.from_numpy warns on read-only arrays
    except (OSError, ValueError) as exc:
        raise ImageError(f"image could not be converted ({exc})") from None
    return array[None] if array.ndim == 2 else np.ascontiguousarray(array.transpose(2, 0, 1))


def decode_image(
    data: bytes, name: str, *, channels: int, max_pixels: int, size: tuple[int, int] | None = None
) -> np.ndarray:
    """Decode an encoded image to uint8 pixels [channels, H, W], resized to `size` (width, height)
    when given. Raises ImageError naming `name` for anything unreadable or too large."""
    with open_image(data, name, max_pixels=max_pixels) as image:
        try:
            return pixels_of(image, channels, size)
        except ImageError as exc:
            raise ImageError(f"{name}: {exc}") from None
