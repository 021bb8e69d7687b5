"""Colour through the service: a zip of colour photos uploads as RGB, trains, and predict and the
exports see any photo (RGB, RGBA, JPEG, palette, EXIF-rotated) exactly as training did; CIFAR-10
trains from the data folder; what does not fit is a 422 naming the field."""

from __future__ import annotations

import io

import numpy as np
import onnxruntime
import pytest
import torch
from PIL import Image

from tests.support.backends import embedded_only
from tests.support.datagen import colour_images, zip_bytes
from tests.support.specs import submit

pytestmark = pytest.mark.e2e

CLASSES = ["blue", "green", "red"]  # three colours of equal luminance: grey cannot tell them apart


def photos(label: int, n: int, seed: int) -> list[np.ndarray]:
    """n photos [H, W, 3] of class `label`: a coloured square at a random place on a dark background."""
    images = colour_images(np.full(n, label * 3), np.random.default_rng(seed))
    return [image.transpose(1, 2, 0) for image in images]


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def colour_zip() -> bytes:
    files = {
        f"{name}/{i}.png": encode(Image.fromarray(photo))
        for label, name in enumerate(CLASSES)
        for i, photo in enumerate(photos(label, 50, seed=label))
    }
    files["__MACOSX/red/._0.png"] = b"resource fork"
    return zip_bytes(files)


def upload(client, data: bytes, **form):
    return client.post(
        "/v1/datasets",
        files={"file": ("colours.zip", data, "application/zip")},
        data={k: str(v) for k, v in form.items()},
    )


def probes(label: int) -> list[tuple[str, bytes]]:
    """One new photo of the class in every way another app may send it."""
    photo = photos(label, 1, seed=1000 + label)[0]
    image = Image.fromarray(photo)
    rgba = image.convert("RGBA")
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise: stored rotated the other way
    rotated = Image.fromarray(np.ascontiguousarray(np.rot90(photo)))
    return [
        ("rgb.png", encode(image)),
        ("rgba.png", encode(rgba)),
        ("photo.jpg", encode(image, "JPEG", quality=95)),
        ("palette.png", encode(image.convert("P", palette=Image.Palette.ADAPTIVE))),
        ("big.png", encode(image.resize((96, 96), Image.Resampling.NEAREST))),
        ("rotated.jpg", encode(rotated, "JPEG", quality=95, exif=exif)),
    ]


@embedded_only
def test_colour_photos_upload_train_predict_and_export_alike(stack, client, colour_zip):
    refused = upload(client, colour_zip, color_mode="rgb")
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "color_mode"]
    answer = upload(client, colour_zip, name="colours", test_fraction=0.3)
    assert answer.status_code == 201, answer.text
    dataset = answer.json()
    assert dataset["classes"] == CLASSES and dataset["color"] == "rgb" and dataset["input_shape"] == [3, 32, 32]
    grey = upload(client, colour_zip, name="colours-grey", color="grayscale").json()
    assert grey["input_shape"] == [1, 32, 32] and "have colour" in grey["warnings"][0]

    spec = {
        "model": {"arch": "lenet", "activation": "relu", "pool": "max"},
        "data": {
            "dataset": f"uploaded:{dataset['id']}",
            "normalize": "dataset",
            "val_fraction": 0.1,
            "augment": {"horizontal_flip": True},
        },
        "optimizer": {"name": "adam", "lr": 0.003},
        "epochs": 10,
        "batch_size": 16,
    }
    bad = client.post("/v1/jobs", json={**spec, "data": {**spec["data"], "normalize": {"mean": [0.5], "std": [0.2]}}})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "data", "normalize", "mean"]
    job = stack.wait_for_job(client, submit(client, spec), timeout=240)
    assert job["status"] == "succeeded", job
    assert job["latest_metrics"]["test_acc"] >= 0.95, job["latest_metrics"]
    assert job["latest_metrics"]["val_acc"] is not None  # held out as row indices into the mapped file

    model = f"job:{job['id']}"
    for label, name in enumerate(CLASSES):
        files = [("files", (filename, data, "image/png")) for filename, data in probes(label)]
        predicted = client.post("/v1/predict", data={"model": model, "top_k": "2"}, files=files)
        assert predicted.status_code == 200, predicted.text
        assert [p["label"] for p in predicted.json()["predictions"]] == [name] * len(files), predicted.json()
    stray = client.post(
        "/v1/predict", data={"model": model, "topk": "2"}, files=[("files", ("x.png", probes(0)[0][1], "image/png"))]
    )
    assert stray.status_code == 422 and stray.json()["detail"][0]["loc"] == ["body", "topk"]

    # The export with pixels in predicts what predict says, from the same decoded pixels.
    graph = client.get(f"/v1/models/{model}/export", params={"format": "onnx", "inputs": "pixels"})
    assert graph.status_code == 200, graph.text
    float_in = client.get(f"/v1/models/{model}/export", params={"format": "onnx"}).headers["content-disposition"]
    assert graph.headers["content-disposition"].endswith('-pixels.onnx"') and float_in.endswith('.onnx"')
    assert float_in != graph.headers["content-disposition"]  # both can be downloaded into one folder
    session = onnxruntime.InferenceSession(graph.content)
    contract = __import__("json").loads(session.get_modelmeta().custom_metadata_map["input"])
    assert contract["channels"] == 3 and len(contract["mean"]) == 3 and contract["classes"] == CLASSES
    sent = probes(2)
    served = client.post(
        "/v1/predict", data={"model": model, "top_k": "3"}, files=[("files", (n, d, "image/png")) for n, d in sent]
    ).json()["predictions"]
    pixels = []
    for _, data in sent:
        with Image.open(io.BytesIO(data)) as image:
            from PIL import ImageOps

            upright = ImageOps.exif_transpose(image).convert("RGBA")
            flat = Image.alpha_composite(Image.new("RGBA", upright.size, (0, 0, 0, 255)), upright).convert("RGB")
            pixels.append(np.asarray(flat.resize((32, 32), Image.Resampling.BILINEAR)).transpose(2, 0, 1))
    (probs,) = session.run(None, {"pixels": np.stack(pixels)})
    for row, prediction in zip(probs, served, strict=True):
        by_label = {entry["label"]: entry["probability"] for entry in prediction["top_k"]}
        np.testing.assert_allclose([by_label[c] for c in CLASSES], row, atol=1e-4)
    scripted = client.get(f"/v1/models/{model}/export", params={"format": "torchscript", "inputs": "pixels"})
    module = torch.jit.load(io.BytesIO(scripted.content))
    np.testing.assert_allclose(module(torch.from_numpy(np.stack(pixels))).detach().numpy(), probs, atol=1e-5)


@embedded_only
def test_cifar10_from_the_data_folder_trains_and_predicts(stack, client):
    spec = {
        "model": {
            "arch": "sequential",
            "layers": [
                {"type": "conv2d", "out_channels": 8, "kernel_size": 1},
                {"type": "relu"},  # a 1x1 convolution
                {"type": "conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1},
                {"type": "relu"},
                {"type": "maxpool2d", "kernel_size": 4},
                {"type": "flatten"},
                {"type": "linear", "out_features": 10},
            ],
        },
        "data": {"dataset": "cifar10", "augment": {"random_crop": {"padding": 2}}},
        "optimizer": {"name": "adam", "lr": 0.01},
        "epochs": 6,
        "batch_size": 32,
    }
    wrong = client.post(
        "/v1/jobs",
        json={
            **spec,
            "model": {"arch": "sequential", "layers": [{"type": "flatten"}, {"type": "linear", "out_features": 7}]},
        },
    )
    assert wrong.status_code == 422 and "outputs (7)" in wrong.json()["detail"][0]["msg"]
    assert wrong.json()["detail"][0]["loc"] == ["body", "model", "layers", 1]  # where it is in what was sent
    job = stack.wait_for_job(client, submit(client, spec), timeout=240)
    assert job["status"] == "succeeded", job
    assert job["latest_metrics"]["test_acc"] > 0.3, job["latest_metrics"]  # chance is 0.1
    image = Image.fromarray(colour_images(np.array([4]), np.random.default_rng(5))[0].transpose(1, 2, 0))
    answer = client.post(
        "/v1/predict", data={"model": f"job:{job['id']}"}, files=[("files", ("deer.png", encode(image), "image/png"))]
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"]["classes"][4] == "deer"  # read from batches.meta
