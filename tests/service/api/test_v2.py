"""The Open Inference Protocol codec without HTTP: bodies in, tensors and encoded outputs out."""

from __future__ import annotations

import base64
import json
import struct

import numpy as np
import pytest
import torch

from service.api import v2
from tests.support.datagen import png_bytes


def bytes_tensor(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def test_a_body_splits_into_its_json_header_and_binary_data():
    header = json.dumps({"inputs": []}).encode()
    assert v2.split_body(header, None) == ({"inputs": []}, b"")
    assert v2.split_body(header + b"\x01\x02", str(len(header))) == ({"inputs": []}, b"\x01\x02")
    for body, length in ((header, "0"), (header, str(len(header) + 1)), (b"\xe9\xdf\xfe", None), (b"{", None)):
        with pytest.raises(v2.ProtocolError):
            v2.split_body(body, length)


def test_exactly_one_named_input_is_taken():
    assert v2.single_input({"inputs": [{"name": "input"}]}) == {"name": "input"}
    for header in ([], {}, {"inputs": []}, {"inputs": [{}, {}]}, {"inputs": [{"name": 3}]}):
        with pytest.raises(v2.ProtocolError):
            v2.single_input(header)


def test_fp32_from_json_and_from_binary_agree(predictor):
    values = np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32)
    spec = {"name": "input", "datatype": "FP32", "shape": [2, 1, 28, 28]}
    from_json = v2.fp32_input({**spec, "data": values.reshape(-1).tolist()}, values.reshape(-1).tolist(), predictor, 8)
    raw = values.astype("<f4").tobytes()
    data, end = v2.tensor_data({**spec, "parameters": {"binary_data_size": len(raw)}}, raw, 0)
    assert end == len(raw)
    assert torch.equal(from_json, v2.fp32_input(spec, data, predictor, 8))
    assert torch.equal(from_json, torch.from_numpy(values))


@pytest.mark.parametrize(
    "shape, data, message",
    [
        ([2, 1, 28], [0.0] * 56, "must have shape"),
        ([9, 1, 28, 28], [0.0] * 9 * 784, "1 <= N <= 8"),
        ([1, 1, 28, 28], [0.0] * 10, r"10 values for shape \[1, 1, 28, 28\], which holds 784"),
        ([1, 1, 28, 28], [float("nan")] * 784, "NaN or infinite"),
        ([1, 1, 28, 28], ["x"] * 784, "must be numbers"),
    ],
)
def test_bad_fp32_inputs_say_why(predictor, shape, data, message):
    with pytest.raises(v2.ProtocolError, match=message):
        v2.fp32_input({"name": "input", "shape": shape}, data, predictor, 8)


def test_bytes_inputs_come_binary_or_base64_and_are_named():
    images = [png_bytes(1, seed=1), png_bytes(2, seed=2)]
    spec = {"name": "images", "datatype": "BYTES", "shape": [2]}
    binary = v2.encoded_images(spec, bytes_tensor(images), 64)
    as_json = v2.encoded_images(spec, [base64.b64encode(i).decode() for i in images], 64)
    assert binary == as_json == [("images[0]", images[0]), ("images[1]", images[1])]
    with pytest.raises(v2.ProtocolError, match="truncated"):
        v2.encoded_images(spec, bytes_tensor(images)[:-3], 64)
    with pytest.raises(v2.ProtocolError, match="base64"):
        v2.encoded_images(spec, ["not base64!"], 64)
    with pytest.raises(v2.ProtocolError, match="1 to 1 images"):
        v2.encoded_images(spec, bytes_tensor(images), 1)
    for shape in ([1], [3], None, [2, 0]):
        with pytest.raises(v2.ProtocolError, match=r"does not hold its 2 image\(s\); give \[2\]"):
            v2.encoded_images({**spec, "shape": shape}, bytes_tensor(images), 64)
    assert len(v2.encoded_images({**spec, "shape": [2, 1]}, bytes_tensor(images), 64)) == 2  # [N, 1], as Triton's


def test_an_input_is_named_as_the_metadata_names_it():
    with pytest.raises(v2.ProtocolError, match="BYTES input is named 'images'"):
        v2.single_input({"inputs": [{"name": "x", "datatype": "BYTES"}]})
    with pytest.raises(v2.ProtocolError, match="FP32 input is named 'input'"):
        v2.single_input({"inputs": [{"name": "images", "datatype": "FP32"}]})


def test_outputs_as_probabilities_or_top_k_strings(predictor):
    probs = predictor.probabilities(torch.rand(2, 1, 28, 28))
    (plain,) = v2.outputs([], probs, predictor, binary_default=False)
    assert plain["shape"] == [2, 10] and plain["data"] == pytest.approx(probs.reshape(-1).tolist())
    (top,) = v2.outputs([{"name": "probabilities", "parameters": {"classification": 3}}], probs, predictor, False)
    assert top["datatype"] == "BYTES" and top["shape"] == [2, 3]
    value, index, label = top["data"][0].split(":")
    assert int(index) == int(probs[0].argmax()) and label == predictor.classes[int(index)]
    assert float(value) == pytest.approx(float(probs[0].max()), abs=1e-6)
    with pytest.raises(v2.ProtocolError, match="unknown output"):
        v2.outputs([{"name": "logits"}], probs, predictor, False)


def test_a_threshold_withholds_classification_labels_with_a_documented_sentinel(predictor):
    probs = torch.tensor([[0.75, 0.15625, 0.09375] + [0.0] * 7, [0.4, 0.35, 0.25] + [0.0] * 7])
    wanted = [{"name": "probabilities", "parameters": {"classification": 2}}]
    (top,) = v2.outputs(wanted, probs, predictor, False, threshold=0.5)
    assert top["shape"] == [2, 2]
    assert top["data"] == [
        "0.750000:0:0",
        "0.156250:1:1",  # sure: as without a threshold
        "0.400000:-1:",
        "0.400000:0:0",
    ]  # not sure: no class, then the most likely ones
    (plain,) = v2.outputs(wanted, probs, predictor, False, threshold=0.0)
    assert plain["data"] == v2.outputs(wanted, probs, predictor, False)[0]["data"]
    (raw,) = v2.outputs([], probs, predictor, False, threshold=0.99)  # probabilities are sent as they are
    assert raw["data"] == pytest.approx(probs.reshape(-1).tolist())
    assert v2.requested_threshold({"parameters": {"threshold": 0.25}}, predictor) == 0.25
    assert v2.requested_threshold({"parameters": {}}, predictor) is None
    for bad in (1.5, -0.1, "abc", True):
        with pytest.raises(v2.ProtocolError, match="'threshold' must be a number from 0 to 1"):
            v2.requested_threshold({"parameters": {"threshold": bad}}, predictor)


def test_a_binary_output_follows_its_json_header(predictor):
    probs = predictor.probabilities(torch.rand(1, 1, 28, 28))
    response = v2.response({"model_name": "m"}, v2.outputs([], probs, predictor, binary_default=True))
    length = int(response.headers["inference-header-content-length"])
    header = json.loads(response.body[:length])
    assert header["outputs"][0]["parameters"]["binary_data_size"] == 40
    assert np.frombuffer(response.body[length:], dtype="<f4") == pytest.approx(probs.reshape(-1).numpy())


def test_a_version_is_a_registered_models_or_for_a_job_the_epoch_it_serves():
    """/v2/models/job:ID/versions/N serves epoch N: what a job's metadata and answers call its version."""
    from service.core.references import ResolvedCheckpoint
    from service.core.storage import StoredFile

    stored = StoredFile("checkpoints/j/epoch-0003.safetensors", 1, None)
    assert v2.version_label(ResolvedCheckpoint("job:j", stored, "j", 3)) == "3"
    assert v2.version_label(ResolvedCheckpoint("shoes:2", stored, "j", 3, name="shoes", version=2)) == "2"


def test_metadata_names_inputs_outputs_and_classes(predictor):
    meta = v2.metadata("fashion", "3", predictor, "job-1", 2)
    assert meta["versions"] == ["3"] and meta["parameters"]["classes"] == predictor.classes
    assert meta["parameters"]["input"] == predictor.contract.to_json()  # how FP32 inputs are prepared
    assert [i["name"] for i in meta["inputs"]] == ["input", "images"]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
