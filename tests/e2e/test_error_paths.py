"""Bad specs, bad uploads and jobs that cannot run: clear 4xx errors or failed jobs, never a 500."""

from __future__ import annotations

import io
import zlib

import pytest
from PIL import Image

from tests.support.backends import embedded_only
from tests.support.specs import SOFTMAX_SPEC, submit

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def api(embedded_stack):
    with embedded_stack.client() as c:
        yield c


@pytest.fixture(scope="module")
def trained_job(embedded_stack, api) -> str:
    job_id = submit(api, {**SOFTMAX_SPEC, "epochs": 1})
    assert embedded_stack.wait_for_job(api, job_id)["status"] == "succeeded"
    return job_id


def error_locs(response) -> list[tuple]:
    return [tuple(e["loc"]) for e in response.json()["detail"]]


@pytest.mark.parametrize(
    "patch, loc",
    [
        ({"model": {"arch": "mlp", "dropout": [1.5]}}, ("body", "model", "dropout", 0)),
        ({"model": {"arch": "transformer"}}, ("body", "model")),
        ({"model": {"arch": "mlp", "activation": "swish"}}, ("body", "model", "activation")),
        ({"model": {"arch": "mlp", "hidden": [64, 32], "dropout": [0.1, 0.2, 0.3]}}, ("body", "model")),
        ({"optimizer": {"name": "sgd", "lr": -0.1}}, ("body", "optimizer", "lr")),
        ({"optimizer": {"name": "sgd", "lr": 0.1, "moment": 0.9}}, ("body", "optimizer", "moment")),
        ({"epochs": 0}, ("body", "epochs")),
        ({"batch_size": "big"}, ("body", "batch_size")),
        ({"device": "tpu"}, ("body", "device")),
        ({"surprise": True}, ("body", "surprise")),
        ({"data": {"dataset": "imagenet"}}, ("body", "data", "dataset")),
        ({"data": {"dataset": "fashion-mnist", "val_fraction": 1.0}}, ("body", "data", "val_fraction")),
        ({"model": {"arch": "linear_regression"}}, ("body", "model", "arch")),
        ({"data": {"dataset": "synthetic-linear"}}, ("body", "model", "arch")),
    ],
)
def test_bad_spec_is_422_naming_the_field(api, patch, loc):
    response = api.post("/v1/jobs", json={**SOFTMAX_SPEC, **patch})
    assert response.status_code == 422, response.text
    assert loc in error_locs(response), response.json()


def test_malformed_json_and_missing_fields_are_422(api):
    response = api.post("/v1/jobs", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422
    response = api.post("/v1/jobs", json={"epochs": 1})
    assert response.status_code == 422
    assert {("body", "model"), ("body", "data")} <= set(error_locs(response))


def test_rejected_spec_creates_no_job(api):
    before = api.get("/v1/jobs").json()["count"]
    api.post("/v1/jobs", json={**SOFTMAX_SPEC, "epochs": -1})
    assert api.get("/v1/jobs").json()["count"] == before


def test_missing_dataset_fails_the_job_saying_where_files_go(embedded_stack, api):
    job_id = submit(api, {**SOFTMAX_SPEC, "data": {"dataset": "mnist"}})
    job = embedded_stack.wait_for_job(api, job_id)
    assert job["status"] == "failed" and job["reason"] == "invalid_data"
    assert str(embedded_stack.data_dir / "MNIST" / "raw") in job["error"]
    assert "train-images-idx3-ubyte" in job["error"] and "TRAINYARD_ALLOW_DOWNLOAD" in job["error"]
    assert api.get(f"/v1/jobs/{job_id}/metrics").json()["epochs"] == []


def test_diverging_job_fails_with_reason(embedded_stack, api):
    spec = {
        "model": {"arch": "linear_regression"},
        "data": {"dataset": "synthetic-linear"},
        "optimizer": {"name": "sgd", "lr": 50.0},
        "epochs": 5,
        "batch_size": 10,
    }
    job = embedded_stack.wait_for_job(api, submit(api, spec))
    assert job["status"] == "failed" and job["reason"] == "nan_loss", job
    assert "loss became" in job["error"] and "normalize" not in job["error"]  # synthetic data has no such option


def test_unknown_job_is_404(api):
    assert api.get("/v1/jobs/00000000-0000-0000-0000-000000000000").status_code == 404
    assert api.get("/v1/jobs/nope/metrics").status_code == 404


def _png(**kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (28, 28), 0).save(buffer, format="PNG", **kwargs)
    return buffer.getvalue()


def test_predict_unknown_model_is_404(api):
    for ref in ("job:00000000-0000-0000-0000-000000000000", "resnet", "job:../../etc/passwd", "/etc/passwd"):
        response = api.post("/v1/predict", data={"model": ref}, files=[("files", ("a.png", _png(), "image/png"))])
        assert response.status_code == 404, (ref, response.text)
        assert "not found" in response.json()["detail"]


def test_predict_non_image_is_422_naming_the_file(api, trained_job):
    files = [("files", ("ok.png", _png(), "image/png")), ("files", ("notes.txt", b"hello, world", "text/plain"))]
    response = api.post("/v1/predict", data={"model": f"job:{trained_job}"}, files=files)
    assert response.status_code == 422
    assert "notes.txt" in response.json()["detail"]


def test_predict_truncated_image_is_422(api, trained_job):
    data = _png()[:-30]
    response = api.post(
        "/v1/predict", data={"model": f"job:{trained_job}"}, files=[("files", ("cut.png", data, "image/png"))]
    )
    assert response.status_code == 422 and "cut.png" in response.json()["detail"]


def test_predict_decompression_bomb_is_refused(api, trained_job):
    # A PNG claiming 30000x30000 pixels: tiny on the wire, 900 MP once decoded.
    bomb = _png_header(30000, 30000)
    response = api.post(
        "/v1/predict", data={"model": f"job:{trained_job}"}, files=[("files", ("bomb.png", bomb, "image/png"))]
    )
    assert response.status_code == 422 and "bomb.png" in response.json()["detail"]


def test_predict_oversized_upload_is_413(api, trained_job):
    response = api.post(
        "/v1/predict",
        data={"model": f"job:{trained_job}"},
        files=[("files", ("huge.png", b"\0" * (11 * 1024 * 1024), "image/png"))],
    )
    assert response.status_code == 413 and "set by TRAINYARD_MAX_UPLOAD_BYTES" in response.json()["detail"]


def test_an_oversized_body_without_a_length_is_413_too(api, trained_job):
    def chunks():  # no Content-Length: the body arrives in chunks and is counted as it comes
        for _ in range(12):
            yield b"\0" * (1024 * 1024)

    response = api.post(
        f"/v1/models/job:{trained_job}/predict", content=chunks(), headers={"content-type": "image/png"}
    )
    assert response.status_code == 413 and "set by TRAINYARD_MAX_UPLOAD_BYTES" in response.json()["detail"]


def test_predict_checks_top_k_and_file_count(api, trained_job):
    one = [("files", ("a.png", _png(), "image/png"))]
    assert api.post("/v1/predict", data={"model": f"job:{trained_job}", "top_k": "11"}, files=one).status_code == 422
    assert api.post("/v1/predict", data={"model": f"job:{trained_job}", "top_k": "0"}, files=one).status_code == 422
    assert api.post("/v1/predict", data={"model": f"job:{trained_job}"}).status_code == 415  # not multipart
    misnamed = api.post(
        "/v1/predict", data={"model": f"job:{trained_job}"}, files=[("other", ("a.png", _png(), "image/png"))]
    )
    assert misnamed.status_code == 422 and misnamed.json()["detail"][0]["loc"] == ["body", "other"]
    assert "files" in misnamed.json()["detail"][0]["msg"]  # names the fields predict takes
    text_only = (
        f'--x\r\nContent-Disposition: form-data; name="model"\r\n\r\njob:{trained_job}\r\n'
        '--x\r\nContent-Disposition: form-data; name="files"\r\n\r\nnot a file\r\n--x--\r\n'
    )
    no_files = api.post(
        "/v1/predict", content=text_only.encode(), headers={"content-type": "multipart/form-data; boundary=x"}
    )
    assert no_files.status_code == 422 and no_files.json()["detail"][0]["loc"] == ["body", "files"]
    no_model = api.post("/v1/predict", files=one)
    assert no_model.status_code == 422 and no_model.json()["detail"][0]["loc"] == ["body", "model"]
    many = one * 65
    response = api.post("/v1/predict", data={"model": f"job:{trained_job}"}, files=many)
    assert response.status_code == 422 and "at most 64" in response.json()["detail"][0]["msg"]


def _png_header(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR for a huge image, followed by a tiny compressed IDAT."""
    import struct

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b"")
    )


@embedded_only
@pytest.mark.parametrize(
    "method, path",
    [
        ("POST", "/v1/jobs"),
        ("POST", "/v1/models"),
        ("PUT", "/v1/models/fashion/aliases/production"),
        ("POST", "/v1/predict"),
        ("POST", "/v2/models/fashion/infer"),
        ("POST", "/v1/models/fashion/predict"),
    ],
)
@pytest.mark.parametrize(
    "body",
    [
        b'{"name": 5, "model": "\\udc80", "job_id": "\\ud800"}',  # valid JSON escapes of lone surrogates
        bytes.fromhex("e9dffe0fc33b"),  # not UTF-8 at all
    ],
    ids=["lone-surrogates", "not-utf8"],
)
def test_undecodable_input_is_a_4xx_never_a_500(client, method, path, body):
    answer = client.request(method, path, content=body, headers={"content-type": "application/json"})
    assert 400 <= answer.status_code < 500, answer.text
    answer.json()  # and the answer itself is valid JSON
