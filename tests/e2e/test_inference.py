"""The model registry, predict in every form, request batching, and the v2 protocol via tritonclient."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import json

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from PIL import Image
from tritonclient.utils import InferenceServerException

from tests.support.datagen import png_bytes
from tests.support.servers import Stack, wait_until
from tests.support.specs import SOFTMAX_SPEC, submit

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def trained(embedded_stack):
    """Two finished jobs on the embedded stack: a classifier and a regression model."""
    with embedded_stack.client() as client:
        # Every epoch's checkpoint kept: the tests register and serve epochs other than the best and the last.
        classifier = submit(
            client, {**SOFTMAX_SPEC, "epochs": 3, "name": "registry-source", "checkpoints": {"keep": "all"}}
        )
        regressor = submit(
            client,
            {
                "model": {"arch": "linear_regression"},
                "data": {"dataset": "synthetic-linear"},
                "optimizer": {"lr": 0.03},
                "epochs": 3,
                "batch_size": 10,
            },
        )
        for job_id in (classifier, regressor):
            assert embedded_stack.wait_for_job(client, job_id)["status"] == "succeeded"
    return {"classifier": classifier, "regressor": regressor}


@pytest.fixture
def api(embedded_stack):
    with embedded_stack.client() as client:
        yield client


def encoded(label: int, fmt: str, mode: str) -> bytes:
    image = Image.open(io.BytesIO(png_bytes(label, seed=900 + label))).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_register_alias_resolve_and_delete(api, trained, embedded_stack):
    job = trained["classifier"]
    first = api.post("/v1/models", json={"name": "fashion", "job_id": job, "checkpoint": "best"})
    assert first.status_code == 201, first.text
    v1 = first.json()
    assert v1["version"] == 1 and v1["classes"][0] == "t-shirt" and v1["input_shape"] == [1, 28, 28]
    assert v1["metrics"]["final"]["epoch"] == 3 and v1["metrics"]["checkpoint"]["epoch"] == v1["epoch"]
    v2 = api.post("/v1/models", json={"name": "fashion", "job_id": job, "checkpoint": 1}).json()
    assert (v2["version"], v2["epoch"]) == (2, 1)

    def predicted_version(reference):
        answer = api.post(
            "/v1/predict", data={"model": reference}, files=[("files", ("x.png", png_bytes(3, seed=1), "image/png"))]
        )
        assert answer.status_code == 200, answer.text
        return answer.json()["model"]["version"]

    assert predicted_version("fashion") == 2  # no production alias: the latest version
    assert predicted_version("fashion:1") == 1
    assert api.put("/v1/models/fashion/aliases/production", json={"version": 1}).status_code == 200
    assert predicted_version("fashion") == 1 and predicted_version("fashion@production") == 1
    assert api.put("/v1/models/fashion/aliases/production", json={"version": 2}).json()["aliases"] == {"production": 2}
    assert predicted_version("fashion") == 2  # the alias moved; the cache follows it

    listing = api.get("/v1/models").json()
    assert "fashion" in [m["name"] for m in listing["data"]]
    model = api.get("/v1/models/fashion").json()
    assert [v["version"] for v in model["versions"]] == [1, 2] and model["latest_version"] == 2
    assert api.delete("/v1/models/fashion/versions/2").status_code == 409
    assert api.delete("/v1/models/fashion/versions/1").status_code == 204
    assert (
        api.post(
            "/v1/predict", data={"model": "fashion:1"}, files=[("files", ("x.png", png_bytes(3, seed=1), "image/png"))]
        ).status_code
        == 404
    )
    assert api.get("/v1/models/nothing-here").status_code == 404
    assert api.put("/v1/models/fashion/aliases/canary", json={"version": 9}).status_code == 404


def test_registry_refuses_bad_requests(api, trained):
    assert api.post("/v1/models", json={"name": "Bad Name", "job_id": trained["classifier"]}).status_code == 422
    assert (
        api.post("/v1/models", json={"name": "x", "job_id": "00000000-0000-0000-0000-000000000000"}).status_code == 404
    )
    assert (
        api.post("/v1/models", json={"name": "x", "job_id": trained["classifier"], "checkpoint": 99}).status_code == 404
    )
    assert api.post("/v1/models", json={"name": "x", "job_id": trained["classifier"], "extra": 1}).status_code == 422


def test_registered_versions_are_immutable(api, trained, embedded_stack):
    version = api.post(
        "/v1/models", json={"name": "frozen", "job_id": trained["classifier"], "checkpoint": "last"}
    ).json()
    files = [("files", ("x.png", png_bytes(5, seed=3), "image/png"))]
    before = api.post("/v1/predict", data={"model": "frozen", "top_k": "3"}, files=files).json()["predictions"]
    source = embedded_stack.home / "checkpoints" / trained["classifier"] / f"epoch-{version['epoch']:04d}.safetensors"
    original = source.read_bytes()
    replacement = source.with_suffix(".new")
    replacement.write_bytes(b"not a checkpoint any more")
    replacement.replace(source)  # as a resumed job would rewrite it
    try:
        after = api.post("/v1/predict", data={"model": "frozen", "top_k": "3"}, files=files).json()["predictions"]
    finally:
        source.write_bytes(original)  # the job's own checkpoint serves the module's later tests
    assert after == before


def test_images_of_every_common_format_and_mode(api, trained):
    cases = [("PNG", "L"), ("PNG", "RGBA"), ("PNG", "P"), ("JPEG", "RGB"), ("BMP", "RGB"), ("WEBP", "RGB")]
    files = [("files", (f"img.{fmt.lower()}", encoded(7, fmt, mode), f"image/{fmt.lower()}")) for fmt, mode in cases]
    answer = api.post("/v1/predict", data={"model": f"job:{trained['classifier']}"}, files=files)
    assert answer.status_code == 200, answer.text
    assert [p["label"] for p in answer.json()["predictions"]] == ["sneaker"] * len(cases)


def test_raw_image_body(api, trained):
    answer = api.post(
        f"/v1/models/job:{trained['classifier']}/predict",
        params={"top_k": 2},
        content=png_bytes(1, seed=5),
        headers={"content-type": "image/png"},
    )
    assert answer.status_code == 200, answer.text
    (prediction,) = answer.json()["predictions"]
    assert prediction["label"] == "trouser" and len(prediction["top_k"]) == 2
    wrong = api.post(
        f"/v1/models/job:{trained['classifier']}/predict", content=b"{}", headers={"content-type": "application/json"}
    )
    assert wrong.status_code == 415


def test_regression_takes_json_inputs_with_their_width_checked(api, trained):
    job = trained["regressor"]
    answer = api.post("/v1/predict", json={"model": f"job:{job}", "inputs": [[1.0, 2.0], [0.0, 0.0]]})
    assert answer.status_code == 200, answer.text
    values = [p["value"] for p in answer.json()["predictions"]]
    assert values == pytest.approx([2 * 1 - 3.4 * 2 + 4.2, 4.2], abs=0.05)
    wrong = api.post("/v1/predict", json={"model": f"job:{job}", "inputs": [[1.0, 2.0, 3.0]]})
    assert wrong.status_code == 422 and "takes 2" in wrong.json()["detail"][0]["msg"]
    assert api.post("/v1/predict", json={"model": f"job:{job}", "inputs": []}).status_code == 422
    images_model = api.post("/v1/predict", json={"model": f"job:{trained['classifier']}", "inputs": [[1.0]]})
    assert images_model.status_code == 422 and "takes images" in images_model.json()["detail"][0]["msg"]
    as_images = api.post(
        "/v1/predict", data={"model": f"job:{job}"}, files=[("files", ("a.png", png_bytes(1, seed=1), "image/png"))]
    )
    assert as_images.status_code == 422


def test_concurrent_requests_each_get_their_own_answer(api, trained, embedded_stack):
    """Batched together on the server, answered apart; a bad image fails only its own request."""
    job = trained["classifier"]

    def call(i):
        data = b"broken" if i == 7 else png_bytes(i % 10, seed=2000 + i)
        with httpx.Client(base_url=embedded_stack.url, timeout=30) as client:
            return client.post(
                "/v1/predict", data={"model": f"job:{job}"}, files=[("files", (f"{i}.png", data, "image/png"))]
            )

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(call, range(64)))
    for i, answer in enumerate(answers):
        if i == 7:
            assert answer.status_code == 422 and "7.png" in answer.json()["detail"]
        else:
            assert answer.status_code == 200 and answer.json()["predictions"][0]["index"] == i % 10


def test_open_inference_protocol_with_tritonclient(trained, embedded_stack, api):
    api.post("/v1/models", json={"name": "oip", "job_id": trained["classifier"]})
    client = triton.InferenceServerClient(url=embedded_stack.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata()["name"] == "trainyard"
    assert client.is_model_ready("oip")
    meta = client.get_model_metadata("oip")
    assert meta["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}
    assert meta["outputs"][0]["shape"] == [-1, 10]

    labels = [0, 4, 9]
    pixels = np.stack(
        [np.asarray(Image.open(io.BytesIO(png_bytes(n, seed=40 + n))), dtype=np.float32) / 255 for n in labels]
    )[:, None]
    for binary in (True, False):
        tensor = triton.InferInput("input", list(pixels.shape), "FP32")
        tensor.set_data_from_numpy(pixels, binary_data=binary)
        result = client.infer(
            "oip", [tensor], outputs=[triton.InferRequestedOutput("probabilities", binary_data=binary)]
        )
        probs = result.as_numpy("probabilities")
        assert probs.shape == (3, 10) and list(probs.argmax(axis=1)) == labels
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)

    images = np.array([png_bytes(n, seed=60 + n) for n in labels], dtype=np.object_)
    tensor = triton.InferInput("images", [len(labels)], "BYTES")
    tensor.set_data_from_numpy(images)
    result = client.infer(
        "oip", [tensor], model_version="1", outputs=[triton.InferRequestedOutput("probabilities", class_count=2)]
    )
    top = result.as_numpy("probabilities")
    assert top.shape == (3, 2)
    assert [row[0].decode().split(":")[1:] for row in top] == [["0", "t-shirt"], ["4", "coat"], ["9", "ankle boot"]]

    with pytest.raises(InferenceServerException, match="not found"):
        client.infer("no-such-model", [tensor])
    bad = triton.InferInput("input", [1, 1, 5, 5], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 1, 5, 5), dtype=np.float32))
    with pytest.raises(InferenceServerException, match="shape"):
        client.infer("oip", [bad])


def test_v2_json_bytes_are_base64(api, trained):
    body = {
        "inputs": [
            {
                "name": "images",
                "shape": [1],
                "datatype": "BYTES",
                "data": [base64.b64encode(png_bytes(2, seed=8)).decode()],
            }
        ],
        "outputs": [{"name": "probabilities", "parameters": {"classification": 1}}],
    }
    answer = api.post(f"/v2/models/job:{trained['classifier']}/infer", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"][0].endswith(":2:pullover")
    served = api.get(f"/v2/models/job:{trained['classifier']}").json()
    epoch = served["parameters"]["epoch"]  # a job's version is the epoch it serves, as /versions/{n} names it
    assert served["versions"] == [str(epoch)] and answer.json()["model_version"] == str(epoch)
    same = api.post(f"/v2/models/job:{trained['classifier']}/versions/{epoch}/infer", json=body).json()
    assert same["model_version"] == str(epoch) and same["outputs"] == answer.json()["outputs"]
    wordy = api.get(f"/v2/models/job:{trained['classifier']}/versions/abc")
    assert wordy.status_code == 404 and "a version is a number" in wordy.json()["error"]
    broken = api.post(f"/v2/models/job:{trained['classifier']}/infer", content=b"{nope")
    assert broken.status_code == 400 and "error" in broken.json()


def test_preloaded_models_gate_readiness(trained, embedded_stack, api):
    api.post("/v1/models", json={"name": "warm", "job_id": trained["classifier"]})

    def second_api(preload: str) -> Stack:
        stack = Stack(
            home=embedded_stack.home,
            data_dir=embedded_stack.data_dir,
            with_worker=False,
            extra_env={"TRAINYARD_PRELOAD_MODELS": preload},
        )
        stack._spawn("api", ["-m", "uvicorn", "service.api.app:app", "--host", "127.0.0.1", "--port", str(stack.port)])
        wait_until(lambda: httpx.get(f"{stack.url}/healthz", timeout=2).status_code == 200, timeout=60)
        return stack

    good = second_api("warm")
    try:
        wait_until(lambda: httpx.get(f"{good.url}/readyz").status_code == 200, timeout=60, what="preload")
        assert httpx.get(f"{good.url}/readyz").json()["checks"]["models"] == "ok"
    finally:
        good.stop()
    bad = second_api("warm,missing-model")
    try:
        wait_until(lambda: "missing-model" in httpx.get(f"{bad.url}/readyz").json()["checks"]["models"], timeout=60)
        assert httpx.get(f"{bad.url}/readyz").status_code == 503
        assert httpx.get(f"{bad.url}/v2/health/ready").status_code == 503
    finally:
        bad.stop()


# The threshold tests serve the classifier's epoch 2: test_registered_versions_are_immutable
# overwrites its last epoch's file, which `job:ID` (best = last without a validation split) names.
def _classify(api, model: str, files: list, **form) -> dict:
    answer = api.post("/v1/predict", data={"model": model, "top_k": "3", **form}, files=files)
    assert answer.status_code == 200, answer.text
    return answer.json()


def _sample_images() -> list:
    return [("files", (f"{label}.png", png_bytes(label, seed=300 + label), "image/png")) for label in range(6)]


def test_a_threshold_withholds_labels_below_it_and_keeps_top_k(api, trained):
    model, files = f"job:{trained['classifier']}:2", _sample_images()
    plain = _classify(api, model, files)
    assert plain["threshold"] is None and not any(p["below_threshold"] for p in plain["predictions"])
    tops = sorted(p["probability"] for p in plain["predictions"])
    assert tops[-1] < 1

    above_all = _classify(api, model, files, threshold=str((tops[-1] + 1) / 2))
    assert above_all["threshold"] == pytest.approx((tops[-1] + 1) / 2)
    for sure, unsure in zip(plain["predictions"], above_all["predictions"], strict=True):
        assert (unsure["label"], unsure["index"], unsure["below_threshold"]) == (None, None, True)
        assert unsure["probability"] == sure["probability"] and unsure["top_k"] == sure["top_k"]
        assert len(unsure["top_k"]) == 3

    nothing = _classify(api, model, files, threshold="0")
    assert nothing["threshold"] == 0 and nothing["predictions"] == plain["predictions"]

    middle = (tops[2] + tops[3]) / 2
    some = _classify(api, model, files, threshold=str(middle))["predictions"]
    assert [p["label"] is None for p in some] == [p["probability"] < middle for p in plain["predictions"]]
    assert sum(p["below_threshold"] for p in some) == 3

    raw = api.post(
        f"/v1/models/{model}/predict",
        params={"threshold": 1},
        content=png_bytes(1, seed=5),
        headers={"content-type": "image/png"},
    )
    assert raw.status_code == 200 and raw.json()["predictions"][0]["label"] is None


@pytest.mark.parametrize("value", ["1.5", "abc", "-0.1", "nan", ""])
def test_a_threshold_that_is_not_a_number_from_0_to_1_is_refused_naming_it(api, trained, value):
    model = f"job:{trained['classifier']}:2"
    answer = api.post("/v1/predict", data={"model": model, "threshold": value}, files=_sample_images()[:1])
    assert answer.status_code == 422 and answer.json()["detail"][0]["loc"] == ["body", "threshold"], answer.text
    raw = api.post(
        f"/v1/models/{model}/predict",
        params={"threshold": value},
        content=png_bytes(1, seed=5),
        headers={"content-type": "image/png"},
    )
    assert raw.status_code == 422 and raw.json()["detail"][0]["loc"] == ["query", "threshold"], raw.text


def test_a_threshold_on_a_regression_model_is_refused(api, trained):
    job = trained["regressor"]
    for bad in (0.5, 1.5, "abc"):
        answer = api.post("/v1/predict", json={"model": f"job:{job}", "inputs": [[1.0, 2.0]], "threshold": bad})
        assert answer.status_code == 422 and answer.json()["detail"][0]["loc"] == ["body", "threshold"], answer.text
    registered = api.post("/v1/models", json={"name": "linear-unsure", "job_id": job, "threshold": 0.5})
    assert registered.status_code == 422 and registered.json()["detail"][0]["loc"] == ["body", "threshold"]


def test_a_version_default_threshold_applies_and_the_request_and_patch_override_it(api, trained):
    job, files = trained["classifier"], _sample_images()
    assert api.post("/v1/models", json={"name": "unsure", "job_id": job, "threshold": 1.5}).status_code == 422
    assert api.post("/v1/models", json={"name": "unsure", "job_id": job, "threshold": "abc"}).status_code == 422
    version = api.post("/v1/models", json={"name": "unsure", "job_id": job, "checkpoint": 2, "threshold": 1})
    assert version.status_code == 201 and version.json()["threshold"] == 1
    assert api.get("/v1/models/unsure").json()["versions"][0]["threshold"] == 1

    by_default = _classify(api, "unsure", files)
    assert by_default["threshold"] == 1 and all(p["label"] is None for p in by_default["predictions"])
    overridden = _classify(api, "unsure:1", files, threshold="0")
    assert overridden["threshold"] == 0 and all(p["label"] is not None for p in overridden["predictions"])
    from_the_job = _classify(api, f"job:{job}:2", files)  # job references have no default
    assert from_the_job["threshold"] is None and from_the_job["predictions"] == overridden["predictions"]

    patched = api.patch("/v1/models/unsure/versions/1", json={"threshold": 0})
    assert patched.status_code == 200 and patched.json()["threshold"] == 0
    assert not any(p["below_threshold"] for p in _classify(api, "unsure", files)["predictions"])
    assert api.patch("/v1/models/unsure/versions/1", json={}).json()["threshold"] == 0  # left as it is
    cleared = api.patch("/v1/models/unsure/versions/1", json={"threshold": None})
    assert cleared.status_code == 200 and cleared.json()["threshold"] is None
    assert api.get("/v1/models/unsure").json()["versions"][0]["threshold"] is None
    assert _classify(api, "unsure", files)["threshold"] is None

    for body, status in (({"threshold": 1.5}, 422), ({"threshold": "abc"}, 422), ({"other": 1}, 422)):
        refused = api.patch("/v1/models/unsure/versions/1", json=body)
        assert refused.status_code == status, refused.text
    assert api.patch("/v1/models/unsure/versions/1", json={"threshold": 1.5}).json()["detail"][0]["loc"] == [
        "body",
        "threshold",
    ]
    assert api.patch("/v1/models/unsure/versions/9", json={"threshold": 0.5}).status_code == 404
    assert api.patch("/v1/models/nothing-here/versions/1", json={"threshold": 0.5}).status_code == 404

    api.patch("/v1/models/unsure/versions/1", json={"threshold": 0.25})
    exported = api.get("/v1/models/unsure/versions/1/export").content
    header = json.loads(exported[8 : 8 + int.from_bytes(exported[:8], "little")])
    assert json.loads(header["__metadata__"]["threshold"]) == 0.25


def test_v2_classification_honours_the_threshold(api, trained):
    job = f"job:{trained['classifier']}:2"
    api.post(
        "/v1/models", json={"name": "oip-unsure", "job_id": trained["classifier"], "checkpoint": 2, "threshold": 1}
    )
    body = {
        "inputs": [
            {
                "name": "images",
                "shape": [2],
                "datatype": "BYTES",
                "data": [base64.b64encode(png_bytes(n, seed=8)).decode() for n in (2, 7)],
            }
        ],
        "outputs": [{"name": "probabilities", "parameters": {"classification": 2}}],
    }

    def rows(reference: str, **parameters) -> list[list[str]]:
        answer = api.post(f"/v2/models/{reference}/infer", json={**body, "parameters": parameters})
        assert answer.status_code == 200, answer.text
        output = answer.json()["outputs"][0]
        assert output["shape"] == [2, 2]
        return [output["data"][:2], output["data"][2:]]

    sure = rows("oip-unsure", threshold=0)
    assert [row[0].split(":")[1:] for row in sure] == [["2", "pullover"], ["7", "sneaker"]]
    for row, plain in zip(rows("oip-unsure"), sure, strict=True):  # the version's default: every label withheld
        assert row == [f"{plain[0].split(':')[0]}:-1:", plain[0]]
    assert rows(job) == sure  # no default for a job
    assert [row[0].endswith(":-1:") for row in rows(job, threshold=1)] == [True, True]
    assert api.get("/v2/models/oip-unsure").json()["parameters"]["threshold"] == 1
    for bad in (1.5, "abc"):
        refused = api.post("/v2/models/oip-unsure/infer", json={**body, "parameters": {"threshold": bad}})
        assert refused.status_code == 400 and "threshold" in refused.json()["error"]
