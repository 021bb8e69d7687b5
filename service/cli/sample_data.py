"""`trainyard sample-data`: a small image dataset drawn on the spot, so that the service can be tried
with no dataset and no internet. Four classes of simple shapes, 28x28 grey PNGs in the class-folder
layout that `POST /v1/datasets` takes (train/<class>/*.png, test/<class>/*.png). Every image has its
own seed, derived from the seed given, its split, class and number: the same seed writes the same
bytes, and the example images (a split of their own) are never in the zip."""

from __future__ import annotations

import io
import math
import zipfile
from pathlib import Path

SHAPES = ("circle", "square", "triangle", "cross")
SIZE = 28
SPLITS = {"train": 0, "test": 1, "examples": 2}
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # a fixed date in every entry, or the zip would differ by the clock


def draw(shape: str, seed: list[int], size: int = SIZE):
    """One grey image of a shape (a PIL image): its place, size, rotation and brightness drawn at
    random, on a noisy dark background. Drawn at 4x and scaled down, so that its edges are smooth."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    background = rng.integers(0, 40, size=(size, size), dtype=np.uint8)
    scale = 4
    canvas = Image.new("L", (size * scale, size * scale), 0)
    pen = ImageDraw.Draw(canvas)
    radius = rng.uniform(0.28, 0.42) * size
    cx, cy = rng.uniform(radius + 1, size - radius - 1, size=2)
    angle = rng.uniform(0, 2 * math.pi)
    fill = int(rng.integers(150, 256))
    r, cx, cy = radius * scale, cx * scale, cy * scale
    if shape == "circle":
        pen.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "cross":
        for a in (angle, angle + math.pi / 2):
            dx, dy = r * math.cos(a), r * math.sin(a)
            pen.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=fill, width=max(2, size // 9) * scale)
    else:
        corners = {"square": 4, "triangle": 3}[shape]
        turns = [angle + 2 * math.pi * k / corners for k in range(corners)]
        pen.polygon([(cx + r * math.cos(turn), cy + r * math.sin(turn)) for turn in turns], fill=fill)
    shape_pixels = np.asarray(canvas.resize((size, size), Image.Resampling.LANCZOS))
    return Image.fromarray(np.maximum(shape_pixels, background))


def png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def shapes_zip(*, seed: int = 0, per_class: int = 100, test_per_class: int = 25) -> bytes:
    """The dataset as zip bytes: per_class training and test_per_class test images of each shape."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:  # PNGs are compressed already
        for split, count in (("train", per_class), ("test", test_per_class)):
            for index, shape in enumerate(SHAPES):
                for number in range(count):
                    image = draw(shape, [seed, SPLITS[split], index, number])
                    archive.writestr(zipfile.ZipInfo(f"{split}/{shape}/{number:03d}.png", ZIP_TIME), png(image))
    return buffer.getvalue()


def write_examples(folder: Path, *, seed: int = 0) -> list[Path]:
    """One new image of each shape, folder/<shape>.png, drawn like the dataset's but not in it."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for index, shape in enumerate(SHAPES):
        path = folder / f"{shape}.png"
        path.write_bytes(png(draw(shape, [seed, SPLITS["examples"], index, 0])))
        written.append(path)
    return written
