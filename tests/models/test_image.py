"""One image decoder for training uploads and predict requests."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from models.image import ImageError, decode_grayscale, scale_pixels


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_decodes_to_grayscale_uint8_and_resizes_only_when_asked():
    rgb = Image.new("RGB", (40, 30), (255, 0, 0))
    pixels = decode_grayscale(png(rgb), "red.png", max_pixels=10**6)
    assert pixels.shape == (30, 40) and pixels.dtype == np.uint8
    assert int(pixels[0, 0]) == round(255 * 299 / 1000)  # ITU-R 601-2 luma, as Pillow's "L"
    assert decode_grayscale(png(rgb), "red.png", max_pixels=10**6, size=(28, 28)).shape == (28, 28)


def test_refusals_name_the_image():
    with pytest.raises(ImageError, match="notes.txt: not a recognised image"):
        decode_grayscale(b"hello", "notes.txt", max_pixels=10**6)
    with pytest.raises(ImageError, match="wide.png: image is 50x10 pixels; the limit is 400"):
        decode_grayscale(png(Image.new("L", (50, 10))), "wide.png", max_pixels=400)
    with pytest.raises(ImageError, match="cut.png: "):
        decode_grayscale(png(Image.new("L", (28, 28)))[:40], "cut.png", max_pixels=10**6)


def test_scaling_matches_the_training_data():
    pixels = torch.tensor([[0, 51, 255]], dtype=torch.uint8)
    assert torch.allclose(scale_pixels(pixels, 1 / 255), torch.tensor([[0.0, 0.2, 1.0]]))
    assert pixels.dtype == torch.uint8  # the stored pixels are not changed
