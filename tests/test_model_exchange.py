"""Models leave the service and come back: export over HTTP in every format, load the weights into
the course's own code in a process that never imports trainyard, and import weights trained there."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load, save

from tests.datagen import png_bytes
from tests.specs import submit

pytestmark = pytest.mark.e2e

LENET = {"name": "course-lenet", "model": {"arch": "lenet"}, "data": {"dataset": "fashion-mnist"},
         "optimizer": {"lr": 0.9}, "epochs": 1, "batch_size": 128}

# The course's LeNet, as the course writes it: no trainyard anywhere in this process.
COURSE = textwrap.dedent("""
    import io, json, sys
    import numpy as np, onnxruntime, torch
    from PIL import Image
    from safetensors.torch import load_file
    from torch import nn

    net = nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5, padding=2), nn.Sigmoid(), nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5), nn.Sigmoid(), nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.Sigmoid(), nn.Linear(120, 84), nn.Sigmoid(), nn.Linear(84, 10))
    folder = sys.argv[1]
    net.load_state_dict(load_file(f"{folder}/model.safetensors"))
    net.eval()
    image = Image.open(f"{folder}/image.png").convert("L")
    x = torch.tensor(np.asarray(image, dtype=np.float32) / 255).reshape(1, 1, 28, 28)
    with torch.no_grad():
        course = torch.softmax(net(x), dim=1)[0]
        scripted = torch.jit.load(f"{folder}/model.pt")(x)[0]
    (onnx_out,) = onnxruntime.InferenceSession(f"{folder}/model.onnx").run(None, {"input": x.numpy()})
    print(json.dumps({"course": course.tolist(), "torchscript": scripted.tolist(), "onnx": onnx_out[0].tolist(),
                      "trainyard_imported": "models" in sys.modules or "service" in sys.modules}))
""")


@pytest.fixture(scope="module")
def lenet_version(embedded_stack):
    with embedded_stack.client() as client:
        job_id = submit(client, LENET)
        assert embedded_stack.wait_for_job(client, job_id)["status"] == "succeeded"
        version = client.post("/v1/models", json={"name": "course-lenet", "job_id": job_id}).json()
    return job_id, version["version"]


@pytest.fixture
def api(embedded_stack):
    with embedded_stack.client() as client:
        yield client


def probabilities(api, reference: str, image: bytes) -> list[float]:
    answer = api.post(f"/v1/models/{reference}/predict", params={"top_k": 10}, content=image,
                      headers={"content-type": "image/png"})
    assert answer.status_code == 200, answer.text
    scores = {entry["index"]: entry["probability"] for entry in answer.json()["predictions"][0]["top_k"]}
    return [scores[i] for i in range(10)]


def test_exports_run_in_the_courses_own_code(api, lenet_version, tmp_path):
    job_id, version = lenet_version
    for fmt, suffix in (("safetensors", "safetensors"), ("torchscript", "pt"), ("onnx", "onnx")):
        answer = api.get(f"/v1/models/course-lenet/versions/{version}/export", params={"format": fmt})
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-disposition"] == f'attachment; filename="course-lenet-v{version}.{suffix}"'
        (tmp_path / f"model.{suffix}").write_bytes(answer.content)
    image = png_bytes(7, seed=3)
    (tmp_path / "image.png").write_bytes(image)
    run = subprocess.run([sys.executable, "-c", COURSE, str(tmp_path)], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    outputs = json.loads(run.stdout.strip().splitlines()[-1])
    assert outputs.pop("trainyard_imported") is False
    served = probabilities(api, f"course-lenet:{version}", image)
    for name, values in outputs.items():
        assert values == pytest.approx(served, abs=1e-5), name


def test_job_checkpoints_and_aliases_export_too(api, lenet_version):
    job_id, version = lenet_version
    by_job = api.get(f"/v1/models/job:{job_id}:1/export")
    assert by_job.status_code == 200 and f"job-{job_id}-epoch-1.safetensors" in by_job.headers["content-disposition"]
    assert set(load(by_job.content)) == {"0.weight", "0.bias", "3.weight", "3.bias", "7.weight", "7.bias",
                                         "9.weight", "9.bias", "11.weight", "11.bias"}
    assert api.put(f"/v1/models/course-lenet/aliases/production", json={"version": version}).status_code == 200
    assert api.get("/v1/models/course-lenet@production/export", params={"format": "onnx"}).status_code == 200
    assert api.get("/v1/models/nobody/export").status_code == 404
    assert api.get("/v1/models/course-lenet/versions/1/export", params={"format": "pickle"}).status_code == 422


def course_lenet() -> torch.nn.Module:
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5, padding=2), nn.Sigmoid(), nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5), nn.Sigmoid(), nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.Sigmoid(), nn.Linear(120, 84), nn.Sigmoid(), nn.Linear(84, 10))


def test_weights_trained_elsewhere_are_imported_and_served(api):
    import io

    import numpy as np
    from PIL import Image

    torch.manual_seed(5)
    net = course_lenet()  # a plain PyTorch training loop, a few steps on random data
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(net(torch.rand(16, 1, 28, 28)), torch.randint(0, 10, (16,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()
    weights = {name: t.detach().clone() for name, t in net.state_dict().items()}
    form = {"name": "brought", "model": json.dumps({"arch": "lenet"}), "classes": json.dumps([f"k{i}" for i in range(10)])}
    answer = api.post("/v1/models/import", data=form, files={"file": ("w.safetensors", save(weights))})
    assert answer.status_code == 201, answer.text
    assert (answer.json()["job_id"], answer.json()["selector"]) == (None, "import")

    image = png_bytes(2, seed=8)
    pixels = np.asarray(Image.open(io.BytesIO(image)).convert("L"), dtype=np.float32) / 255
    with torch.no_grad():
        expected = torch.softmax(net(torch.from_numpy(pixels).reshape(1, 1, 28, 28)), dim=1)[0].tolist()
    assert probabilities(api, "brought", image) == pytest.approx(expected, abs=1e-5)
    inferred = api.post("/v2/models/brought/infer", json={"inputs": [
        {"name": "input", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": pixels.reshape(-1).tolist()}]})
    assert inferred.status_code == 200, inferred.text
    assert inferred.json()["outputs"][0]["data"] == pytest.approx(expected, abs=1e-5)
    served = api.post("/v1/models/brought/predict", content=image, headers={"content-type": "image/png"}).json()
    assert served["model"]["job_id"] is None and served["predictions"][0]["label"].startswith("k")
    back = load(api.get("/v1/models/brought/export").content)
    assert all(torch.equal(back[name], weights[name]) for name in weights)


@pytest.mark.parametrize("change, field", [
    (lambda w: w.pop("3.weight"), "3.weight"),
    (lambda w: w.update({"extra.weight": torch.zeros(2)}), "extra.weight"),
    (lambda w: w.update({"11.bias": torch.zeros(7)}), "11.bias"),
])
def test_weights_that_do_not_fit_are_refused_naming_the_tensor(api, lenet_version, change, field):
    _, version = lenet_version
    weights = load(api.get(f"/v1/models/course-lenet/versions/{version}/export").content)
    change(weights)
    form = {"name": "misfit", "model": json.dumps({"arch": "lenet"}), "classes": json.dumps(list("abcdefghij"))}
    answer = api.post("/v1/models/import", data=form, files={"file": ("w.safetensors", save(weights))})
    assert answer.status_code == 422
    assert ["body", "file", field] in [e["loc"] for e in answer.json()["detail"]]


def test_an_import_that_is_not_safetensors_or_has_a_bad_field_is_refused(api):
    import pickle

    form = {"name": "misfit", "model": json.dumps({"arch": "lenet"})}
    pickled = api.post("/v1/models/import", data=form, files={"file": ("w.pt", pickle.dumps({"a": 1}))})
    assert pickled.status_code == 422 and pickled.json()["detail"][0]["loc"] == ["body", "file"]
    bad_arch = api.post("/v1/models/import", data={**form, "model": json.dumps({"arch": "transformer"})},
                        files={"file": ("w.safetensors", save({"x": torch.zeros(1)}))})
    assert bad_arch.status_code == 422 and bad_arch.json()["detail"][0]["loc"][:2] == ["body", "model"]
    bad_shape = api.post("/v1/models/import", data={**form, "input_shape": "[1, 2]"},
                         files={"file": ("w.safetensors", save({"x": torch.zeros(1)}))})
    assert bad_shape.status_code == 422 and bad_shape.json()["detail"][0]["loc"] == ["body", "input_shape"]
