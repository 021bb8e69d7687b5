"""Images in, model inputs out: decode an encoded image to grayscale uint8 pixels, and scale pixels
to the floats a network sees. Training data, uploaded datasets and predict requests all pass here,
so a served model sees its inputs exactly as it saw its training set."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

# Pillow's own bomb guard only warns below twice its limit; callers pass max_pixels instead.
Image.MAX_IMAGE_PIXELS = None


class ImageError(ValueError):
    """An image cannot be used; the message names it and says why."""


def to_grayscale(image: Image.Image) -> Image.Image:
    """Any mode to 8-bit grayscale; transparent areas become black, like the datasets' backgrounds."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("L")
    if image.mode.startswith("I;16"):
        array = np.asarray(image, dtype=np.uint32) // 257
        return Image.fromarray(array.astype(np.uint8), mode="L")
    return image.convert("L")


def decode_grayscale(data: bytes, name: str, *, max_pixels: int, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode an encoded image (PNG, JPEG, ...) to uint8 pixels [H, W], resized to `size` (width,
    height) when given. Raises ImageError naming `name` for anything unreadable or too large."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(f"{name}: image is {width}x{height} pixels; the limit is {max_pixels}")
            image.load()
            gray = to_grayscale(image)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not a recognised image (PNG, JPEG, BMP, WebP, ...)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{name}: image could not be decoded ({exc})") from None
    if size is not None and gray.size != size:
        gray = gray.resize(size, Image.Resampling.BILINEAR)
    return np.array(gray, dtype=np.uint8)  # a writable copy: torch.from_numpy warns on read-only arrays


def scale_pixels(pixels: torch.Tensor, scale: float) -> torch.Tensor:
    """uint8 pixels to the float inputs a network was trained on (one multiply, in place)."""
    return pixels.float().mul_(scale)
