import io

import numpy as np
import pytest
import torch
from PIL import Image

from models.checkpoint import write_checkpoint
from models.inference.predictor import InputError, Predictor
from models.nets.archs import build_model
from models.spec.job import JobSpec

# Written as checkpoints were before the input contract: they still load, as grey x / 255.
PREPROCESS = {"kind": "image", "channels": 1, "height": 28, "width": 28, "scale": 1 / 255}
CLASSES = [f"c{i}" for i in range(10)]


@pytest.fixture
def predictor(tmp_path) -> Predictor:
    spec = JobSpec.model_validate({"model": {"arch": "softmax_regression"}, "data": {"dataset": "fashion-mnist"}})
    torch.manual_seed(0)
    model = build_model(spec.model, (1, 28, 28), 10)
    path = tmp_path / "epoch-0001.safetensors"
    write_checkpoint(
        path,
        model.state_dict(),
        {
            "spec": spec.model_dump(mode="json"),
            "task": "classification",
            "classes": CLASSES,
            "input_shape": [1, 28, 28],
            "preprocess": PREPROCESS,
            "epoch": 1,
        },
    )
    loaded = Predictor.from_checkpoint(path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor)
    return loaded


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def decode(predictor: Predictor, data: bytes, name: str, max_pixels: int) -> torch.Tensor:
    """An encoded image as the network's float input, the way predict prepares it."""
    return predictor.to_input(torch.from_numpy(predictor.decode_pixels(data, name, max_pixels=max_pixels)))


GRADIENT = np.tile(np.arange(0, 252, 9, dtype=np.uint8), (28, 1))


@pytest.mark.parametrize(
    "mode, fmt",
    [(mode, fmt) for fmt in ("PNG", "BMP", "WEBP") for mode in ("L", "RGB", "P", "RGBA")] + [("I;16", "PNG")],
)
def test_every_common_mode_and_format_decodes_to_the_training_layout(predictor, mode, fmt):
    base = Image.fromarray(GRADIENT, mode="L")
    image = base.convert(mode) if mode != "I;16" else Image.fromarray(GRADIENT.astype(np.uint16) * 257)
    tensor = decode(predictor, encode(image, fmt, **({"lossless": True} if fmt == "WEBP" else {})), "x", 10**6)
    assert tensor.shape == (1, 28, 28) and tensor.dtype == torch.float32
    np.testing.assert_allclose(tensor[0].numpy(), GRADIENT / 255, atol=2 / 255)


def test_transparent_pixels_become_background_black(predictor):
    rgba = Image.new("RGBA", (28, 28), (255, 255, 255, 0))
    rgba.putpixel((3, 3), (255, 255, 255, 255))
    tensor = decode(predictor, encode(rgba, "PNG"), "t.png", 10**6)
    assert float(tensor[0, 3, 3]) == 1.0 and float(tensor.sum()) == 1.0


def test_jpeg_of_another_size_is_resized(predictor):
    tensor = decode(predictor, encode(Image.new("RGB", (100, 60), (200, 200, 200)), "JPEG"), "big.jpg", 10**6)
    assert tensor.shape == (1, 28, 28)
    assert abs(float(tensor.mean()) - 200 / 255) < 0.02


def test_bad_inputs_name_the_file(predictor):
    with pytest.raises(InputError, match="readme.txt: not a recognised image"):
        decode(predictor, b"just text", "readme.txt", 10**6)
    png = encode(Image.new("L", (28, 28)), "PNG")
    with pytest.raises(InputError, match="cut.png"):
        decode(predictor, png[:40], "cut.png", 10**6)
    with pytest.raises(InputError, match=r"big.png: image is 28x28 pixels; the limit is 100 pixels \(10x10\)"):
        decode(predictor, png, "big.png", 100)


def test_label_orders_top_k(predictor):
    inputs = [decode(predictor, encode(Image.fromarray(GRADIENT), "PNG"), "g", 10**6)] * 2
    results = predictor.label(predictor.probabilities(torch.stack(inputs)), top_k=4)
    assert len(results) == 2
    probs = [e["probability"] for e in results[0].top_k]
    assert probs == sorted(probs, reverse=True) and len(probs) == 4
    assert results[0].label == CLASSES[results[0].index] and results[0].probability == probs[0]
    assert len(predictor.label(predictor.probabilities(torch.stack(inputs)), top_k=50)[0].top_k) == 10


def test_a_threshold_withholds_labels_below_it_and_keeps_top_k(predictor):
    probs = torch.tensor([[0.75, 0.15625, 0.09375] + [0.0] * 7, [0.4, 0.35, 0.25] + [0.0] * 7])
    plain = predictor.label(probs, top_k=3)
    assert [(r.label, r.index, r.below_threshold) for r in plain] == [("c0", 0, False), ("c0", 0, False)]
    assert predictor.label(probs, top_k=3, threshold=0.0) == plain  # 0 withholds nothing
    mixed = predictor.label(probs, top_k=3, threshold=0.5)
    assert (mixed[0].label, mixed[0].index, mixed[0].below_threshold) == ("c0", 0, False)
    assert (mixed[1].label, mixed[1].index, mixed[1].below_threshold) == (None, None, True)
    assert mixed[1].probability == pytest.approx(0.4) and mixed[1].top_k == plain[1].top_k
    above_all = predictor.label(probs, top_k=3, threshold=0.76)
    assert all(r.label is None and r.index is None and r.below_threshold for r in above_all)
    assert [r.top_k for r in above_all] == [r.top_k for r in plain]
    assert predictor.label(probs, threshold=0.75)[0].label == "c0"  # below means below: equal keeps it


def test_evaluation_counts_true_against_predicted(predictor):
    x = torch.from_numpy(
        np.stack(
            [
                predictor.decode_pixels(encode(Image.fromarray(GRADIENT * (i % 2)), "PNG"), "g", max_pixels=10**6)
                for i in range(6)
            ]
        )
    )
    probabilities = predictor.probabilities(x)
    predicted = probabilities.argmax(dim=1)
    truth = torch.tensor([0, 1, 2, 0, 1, 2])
    report = predictor.evaluate(x, truth, batch_size=4)  # two batches
    matrix = report.confusion_matrix
    assert len(matrix) == 10 and sum(map(sum, matrix)) == 6 and report.num_test == 6
    for t, p in zip(truth.tolist(), predicted.tolist(), strict=True):
        assert matrix[t][p] >= 1
    assert report.accuracy == pytest.approx(float((predicted == truth).float().mean()))
    for mistake in report.mistakes:
        assert mistake.probability == pytest.approx(float(probabilities[mistake.index].max()))
    assert predictor.evaluate(x[:0], truth[:0]).num_test == 0
