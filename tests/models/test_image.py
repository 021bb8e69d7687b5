"""One image decoder for training uploads and predict requests, grey or colour."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from models.data.contract import InputContract
from models.data.image import ImageError, decode_image, is_grey


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_grey_decodes_to_luma_and_rgb_keeps_its_channels():
    rgb = Image.new("RGB", (40, 30), (255, 0, 0))
    grey = decode_image(encode(rgb), "red.png", channels=1, max_pixels=10**6)
    assert grey.shape == (1, 30, 40) and grey.dtype == np.uint8
    assert int(grey[0, 0, 0]) == round(255 * 299 / 1000)  # ITU-R 601-2 luma, as Pillow's "L"
    colour = decode_image(encode(rgb), "red.png", channels=3, max_pixels=10**6)
    assert colour.shape == (3, 30, 40) and colour[:, 0, 0].tolist() == [255, 0, 0]
    assert decode_image(encode(rgb), "red.png", channels=3, max_pixels=10**6, size=(28, 20)).shape == (3, 20, 28)


def test_transparency_palette_cmyk_and_16_bit_convert_predictably():
    rgba = Image.new("RGBA", (4, 4), (0, 200, 0, 0))
    rgba.putpixel((0, 0), (0, 200, 0, 255))
    pixels = decode_image(encode(rgba), "a.png", channels=3, max_pixels=100)
    assert pixels[:, 0, 0].tolist() == [0, 200, 0] and pixels[:, 1, 1].tolist() == [0, 0, 0]  # on black
    palette = Image.new("RGB", (4, 4), (10, 20, 200)).convert("P", palette=Image.Palette.ADAPTIVE)
    assert decode_image(encode(palette), "p.png", channels=3, max_pixels=100)[:, 0, 0].tolist() == [10, 20, 200]
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # pure red in CMYK
    assert decode_image(encode(cmyk, "JPEG", quality=100), "c.jpg", channels=3, max_pixels=100)[
        :, 0, 0
    ].tolist() == pytest.approx([255, 0, 0], abs=2)
    deep = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    assert decode_image(encode(deep), "d.png", channels=1, max_pixels=100).max() == 255
    assert decode_image(encode(deep), "d.png", channels=3, max_pixels=100)[:, 0, 0].tolist() == [255, 255, 255]


def test_a_colour_key_is_transparent_like_an_alpha_channel():
    keyed = Image.new("L", (2, 1), 200)
    keyed.putpixel((1, 0), 90)
    pixels = decode_image(encode(keyed, transparency=200), "k.png", channels=1, max_pixels=100)
    assert pixels[0, 0].tolist() == [0, 90]  # the keyed grey is background, on black


def test_exif_orientation_is_applied():
    tall = Image.new("RGB", (20, 10), (0, 0, 0))
    tall.paste((255, 255, 255), (0, 0, 10, 10))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    pixels = decode_image(encode(tall, "JPEG", quality=95, exif=exif), "r.jpg", channels=1, max_pixels=10**4)
    assert pixels.shape == (1, 20, 10)  # displayed upright: 10 wide, 20 tall
    assert pixels[0, :10].mean() > 200 and pixels[0, 10:].mean() < 50  # the white half is now on top


def test_grey_detection():
    assert is_grey(Image.new("L", (3, 3))) and is_grey(Image.new("RGB", (3, 3), (7, 7, 7)))
    assert not is_grey(Image.new("RGB", (3, 3), (7, 8, 7)))


def test_refusals_name_the_image():
    with pytest.raises(ImageError, match="notes.txt: not a recognised image"):
        decode_image(b"hello", "notes.txt", channels=1, max_pixels=10**6)
    with pytest.raises(ImageError, match=r"wide.png: image is 50x10 pixels; the limit is 400 pixels \(20x20\): make "):
        decode_image(encode(Image.new("L", (50, 10))), "wide.png", channels=3, max_pixels=400)
    with pytest.raises(ImageError, match="TRAINYARD_MAX_IMAGE_PIXELS"):
        decode_image(encode(Image.new("L", (50, 10))), "wide.png", channels=3, max_pixels=400)
    with pytest.raises(ImageError, match="^empty.png: the file is empty$"):
        decode_image(b"", "empty.png", channels=1, max_pixels=10**6)
    with pytest.raises(ImageError, match="cut.png: "):
        decode_image(encode(Image.new("L", (28, 28)))[:40], "cut.png", channels=1, max_pixels=10**6)


def test_the_contract_scales_and_normalises_per_channel():
    pixels = torch.tensor([[0, 51, 255]], dtype=torch.uint8).view(1, 1, 3)
    plain = InputContract.image(1, 1, 3)
    assert torch.allclose(plain.to_float(pixels), torch.tensor([[[0.0, 0.2, 1.0]]]))
    assert pixels.dtype == torch.uint8  # the stored pixels are not changed
    rgb = InputContract.image(3, 1, 1).with_normalisation([0.5, 0.0, 0.2], [0.5, 1.0, 0.1])
    got = rgb.to_float(torch.tensor([255, 255, 0], dtype=torch.uint8).view(3, 1, 1)).flatten()
    assert torch.allclose(got, torch.tensor([1.0, 1.0, -2.0]))
    assert InputContract.model_validate(rgb.to_json()) == rgb


def test_checkpoints_from_before_the_contract_read_as_grey_over_255():
    old = {
        "classes": ["a", "b"],
        "preprocess": {"kind": "image", "channels": 1, "height": 28, "width": 28, "scale": 1 / 255},
    }
    assert InputContract.from_meta(old) == InputContract.image(1, 28, 28, ["a", "b"])
    with pytest.raises(ValueError, match="mean has 1 values for 3 channel"):
        InputContract(kind="image", channels=3, height=2, width=2, mean=[0.5], std=[1, 1, 1])
