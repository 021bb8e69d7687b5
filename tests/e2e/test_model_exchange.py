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

from models.inference.formats import SUFFIXES
from tests.support.datagen import png_bytes
from tests.support.specs import submit

pytestmark = pytest.mark.e2e

LENET = {
    "name": "course-lenet",
    "model": {"arch": "lenet"},
    "data": {"dataset": "fashion-mnist"},
    "optimizer": {"lr": 0.9},
    "epochs": 1,
    "batch_size": 128,
}

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
        program = torch.export.load(f"{folder}/model.pt2").module()(x)[0]
    (onnx_out,) = onnxruntime.InferenceSession(f"{folder}/model.onnx").run(None, {"input": x.numpy()})
    print(json.dumps({"course": course.tolist(), "torchscript": scripted.tolist(), "onnx": onnx_out[0].tolist(),
                      "pt2": program.tolist(),
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
    answer = api.post(
        f"/v1/models/{reference}/predict", params={"top_k": 10}, content=image, headers={"content-type": "image/png"}
    )
    assert answer.status_code == 200, answer.text
    scores = {entry["index"]: entry["probability"] for entry in answer.json()["predictions"][0]["top_k"]}
    return [scores[i] for i in range(10)]


def test_exports_run_in_the_courses_own_code(api, lenet_version, tmp_path):
    job_id, version = lenet_version
    for fmt, suffix in SUFFIXES.items():
        answer = api.get(f"/v1/models/course-lenet/versions/{version}/export", params={"format": fmt})
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-disposition"] == f'attachment; filename="course-lenet-v{version}.{suffix}"'
        (tmp_path / f"model.{suffix}").write_bytes(answer.content)
    image = png_bytes(7, seed=3)
    (tmp_path / "image.png").write_bytes(image)
    run = subprocess.run(
        [sys.executable, "-c", COURSE, str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
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
    assert set(load(by_job.content)) == {
        "0.weight",
        "0.bias",
        "3.weight",
        "3.bias",
        "7.weight",
        "7.bias",
        "9.weight",
        "9.bias",
        "11.weight",
        "11.bias",
    }
    assert api.put("/v1/models/course-lenet/aliases/production", json={"version": version}).status_code == 200
    assert api.get("/v1/models/course-lenet@production/export", params={"format": "onnx"}).status_code == 200
    assert api.get("/v1/models/nobody/export").status_code == 404
    assert api.get("/v1/models/course-lenet/versions/1/export", params={"format": "pickle"}).status_code == 422


def course_lenet() -> torch.nn.Module:
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5, padding=2),
        nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5),
        nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120),
        nn.Sigmoid(),
        nn.Linear(120, 84),
        nn.Sigmoid(),
        nn.Linear(84, 10),
    )


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
    form = {
        "name": "brought",
        "model": json.dumps({"arch": "lenet"}),
        "classes": json.dumps([f"k{i}" for i in range(10)]),
    }
    answer = api.post("/v1/models/import", data=form, files={"file": ("w.safetensors", save(weights))})
    assert answer.status_code == 201, answer.text
    assert (answer.json()["job_id"], answer.json()["selector"], answer.json()["epoch"]) == (None, "import", None)

    image = png_bytes(2, seed=8)
    pixels = np.asarray(Image.open(io.BytesIO(image)).convert("L"), dtype=np.float32) / 255
    with torch.no_grad():
        expected = torch.softmax(net(torch.from_numpy(pixels).reshape(1, 1, 28, 28)), dim=1)[0].tolist()
    assert probabilities(api, "brought", image) == pytest.approx(expected, abs=1e-5)
    inferred = api.post(
        "/v2/models/brought/infer",
        json={
            "inputs": [
                {"name": "input", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": pixels.reshape(-1).tolist()}
            ]
        },
    )
    assert inferred.status_code == 200, inferred.text
    assert inferred.json()["outputs"][0]["data"] == pytest.approx(expected, abs=1e-5)
    served = api.post("/v1/models/brought/predict", content=image, headers={"content-type": "image/png"}).json()
    assert served["model"]["job_id"] is None and served["predictions"][0]["label"].startswith("k")
    back = load(api.get("/v1/models/brought/export").content)
    assert all(torch.equal(back[name], weights[name]) for name in weights)


def test_an_imported_classifier_keeps_its_threshold_for_json_inputs_and_its_export(api):
    model, classes = {"arch": "mlp", "hidden": [8]}, ["low", "mid", "high"]
    form = {
        "name": "tabular-unsure",
        "model": json.dumps(model),
        "classes": json.dumps(classes),
        "input_shape": "[4]",
        "threshold": "0.99",
    }
    weights = save(random_weights(model, [4], 3))
    for bad in ("1.5", "abc"):
        refused = api.post(
            "/v1/models/import", data={**form, "threshold": bad}, files={"file": ("w.safetensors", weights)}
        )
        assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "threshold"]
    regression = api.post(
        "/v1/models/import", data={**form, "classes": "null"}, files={"file": ("w.safetensors", weights)}
    )
    assert regression.status_code == 422 and regression.json()["detail"][0]["loc"] == ["body", "threshold"]
    answer = api.post("/v1/models/import", data=form, files={"file": ("w.safetensors", weights)})
    assert answer.status_code == 201 and answer.json()["threshold"] == 0.99, answer.text

    rows = [[0.1 * i, -0.2 * i, 0.3, 1.0] for i in range(5)]
    plain = api.post("/v1/predict", json={"model": "tabular-unsure", "inputs": rows, "top_k": 3, "threshold": 0})
    assert plain.status_code == 200, plain.text
    assert plain.json()["threshold"] == 0 and all(p["label"] in classes for p in plain.json()["predictions"])
    by_default = api.post("/v1/predict", json={"model": "tabular-unsure", "inputs": rows, "top_k": 3}).json()
    assert by_default["threshold"] == 0.99
    for sure, unsure in zip(plain.json()["predictions"], by_default["predictions"], strict=True):
        assert sure["probability"] < 0.99  # three classes, random weights: never that sure
        assert (unsure["label"], unsure["index"], unsure["below_threshold"]) == (None, None, True)
        assert (unsure["probability"], unsure["top_k"]) == (sure["probability"], sure["top_k"])
    for bad in (1.5, "abc", -1):
        refused = api.post("/v1/predict", json={"model": "tabular-unsure", "inputs": rows, "threshold": bad})
        assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "threshold"], refused.text

    exported = api.get("/v1/models/tabular-unsure/export")
    header = json.loads(exported.content[8 : 8 + int.from_bytes(exported.content[:8], "little")])["__metadata__"]
    assert json.loads(header["threshold"]) == 0.99 and json.loads(header["trainyard"])["threshold"] == 0.99


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda w: w.pop("3.weight"), "3.weight"),
        (lambda w: w.update({"extra.weight": torch.zeros(2)}), "extra.weight"),
        (lambda w: w.update({"11.bias": torch.zeros(7)}), "11.bias"),
    ],
)
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
    bad_arch = api.post(
        "/v1/models/import",
        data={**form, "model": json.dumps({"arch": "transformer"})},
        files={"file": ("w.safetensors", save({"x": torch.zeros(1)}))},
    )
    assert bad_arch.status_code == 422 and bad_arch.json()["detail"][0]["loc"][:2] == ["body", "model"]
    bad_shape = api.post(
        "/v1/models/import",
        data={**form, "input_shape": "[1, 2]"},
        files={"file": ("w.safetensors", save({"x": torch.zeros(1)}))},
    )
    assert bad_shape.status_code == 422 and bad_shape.json()["detail"][0]["loc"] == ["body", "input_shape"]
    two_channels = api.post(
        "/v1/models/import",
        data={**form, "input_shape": "[2, 28, 28]"},
        files={"file": ("w.safetensors", save({"x": torch.zeros(1)}))},
    )
    assert two_channels.status_code == 422 and "1 (grey) or 3 (RGB) channels" in two_channels.text
    stray = api.post(
        "/v1/models/import",
        data={**form, "labels": "[]"},
        files={"file": ("w.safetensors", save({"x": torch.zeros(1)}))},
    )
    assert stray.status_code == 422 and stray.json()["detail"][0]["loc"] == ["body", "labels"]
    wrong_norm = api.post(
        "/v1/models/import",
        data={**form, "normalize": '{"mean": [0.5, 0.5], "std": [1, 1]}'},
        files={"file": ("w.safetensors", save({"x": torch.zeros(1)}))},
    )
    assert wrong_norm.status_code == 422 and wrong_norm.json()["detail"][0]["loc"] == ["body", "normalize"]


# Each curriculum architecture as its users write it, in a process that never imports trainyard.
EVERY_ARCHITECTURE = textwrap.dedent("""
    import json, math, sys
    import numpy as np, onnxruntime, torch, torchvision
    from safetensors.torch import load_file
    from torch import nn

    def lenet(act, pool):
        return nn.Sequential(
            nn.Conv2d(1, 6, kernel_size=5, padding=2), act(), pool(kernel_size=2, stride=2),
            nn.Conv2d(6, 16, kernel_size=5), act(), pool(kernel_size=2, stride=2),
            nn.Flatten(), nn.Linear(16 * 5 * 5, 120), act(), nn.Linear(120, 84), act(), nn.Linear(84, 10))

    def resnet18():
        net = torchvision.models.resnet18(num_classes=10)
        net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        return net

    COURSE = {
        "linear-regression": lambda: nn.Sequential(nn.Flatten(), nn.Linear(2, 1)),
        "softmax": lambda: nn.Sequential(nn.Flatten(), nn.Linear(784, 10)),
        "mlp-dropout": lambda: nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Dropout(0.5),
                                             nn.Linear(64, 10)),
        "lenet-sigmoid-avg": lambda: lenet(nn.Sigmoid, nn.AvgPool2d),
        "lenet-relu-max": lambda: lenet(nn.ReLU, nn.MaxPool2d),
        "resnet18": resnet18,
        "sequential-batchnorm": lambda: nn.Sequential(nn.Conv2d(1, 4, kernel_size=3), nn.BatchNorm2d(4), nn.ReLU(),
                                                      nn.Flatten(), nn.Linear(4 * 26 * 26, 10)),
        # data.resize: the images grow to 32x32 inside the network, then the course's LeNet.
        "resized-lenet": lambda: nn.Sequential(
            nn.Upsample(size=(32, 32), mode="bilinear", align_corners=False),
            nn.Sequential(nn.Conv2d(1, 6, kernel_size=5, padding=2), nn.Sigmoid(),
                          nn.AvgPool2d(kernel_size=2, stride=2),
                          nn.Conv2d(6, 16, kernel_size=5), nn.Sigmoid(), nn.AvgPool2d(kernel_size=2, stride=2),
                          nn.Flatten(), nn.Linear(16 * 6 * 6, 120), nn.Sigmoid(), nn.Linear(120, 84), nn.Sigmoid(),
                          nn.Linear(84, 10))),
    }

    folder, cases = sys.argv[1], json.loads(sys.argv[2])
    results = {}
    for name, x in cases.items():
        x = torch.tensor(x, dtype=torch.float32)
        weights = load_file(f"{folder}/{name}.safetensors")
        with torch.no_grad():
            if name == "polynomial":  # the course computes x^i / i! before its linear layer
                linear = nn.Linear(4, 1)
                linear.load_state_dict({"weight": weights["1.weight"], "bias": weights["1.bias"]})
                features = torch.cat([x ** i / math.factorial(i) for i in range(1, 5)], dim=1)
                course = linear(features)
            else:
                net = COURSE[name]()
                net.load_state_dict(weights)
                out = net.eval()(x)
                course = torch.softmax(out, dim=1) if out.shape[1] > 1 else out
            scripted = torch.jit.load(f"{folder}/{name}.pt")(x)
            program = torch.export.load(f"{folder}/{name}.pt2").module()(x)
        (onnx_out,) = onnxruntime.InferenceSession(f"{folder}/{name}.onnx").run(None, {"input": x.numpy()})
        results[name] = {"safetensors": course.tolist(), "torchscript": scripted.tolist(), "onnx": onnx_out.tolist(),
                         "pt2": program.tolist()}
    results["trainyard imported"] = [m for m in ("models", "service", "workers") if m in sys.modules]
    print(json.dumps(results))
""")

ARCHITECTURES = {  # name -> (model spec, input shape, classes)
    "linear-regression": ({"arch": "linear_regression"}, [2], None),
    "polynomial": ({"arch": "polynomial", "degree": 4}, [1], None),
    "softmax": ({"arch": "softmax_regression"}, [1, 28, 28], 10),
    "mlp-dropout": ({"arch": "mlp", "hidden": [64], "dropout": 0.5}, [1, 28, 28], 10),
    "lenet-sigmoid-avg": ({"arch": "lenet"}, [1, 28, 28], 10),
    "lenet-relu-max": ({"arch": "lenet", "activation": "relu", "pool": "max"}, [1, 28, 28], 10),
    "resnet18": ({"arch": "resnet18"}, [1, 28, 28], 10),
    "sequential-batchnorm": (
        {
            "arch": "sequential",
            "layers": [
                {"type": "conv2d", "out_channels": 4, "kernel_size": 3},
                {"type": "batchnorm"},
                {"type": "relu"},
                {"type": "flatten"},
                {"type": "linear", "out_features": 10},
            ],
        },
        [1, 28, 28],
        10,
    ),
}


def random_weights(model: dict, shape: list[int], classes: int | None) -> dict:
    """Weights "from elsewhere": the architecture's tensors, drawn at random (batch-norm statistics too)."""
    from models.nets.archs import build_model
    from models.spec.job import MODEL_SPEC

    torch.manual_seed(len(json.dumps(model)))
    state = build_model(MODEL_SPEC.validate_python(model), shape, classes or 1).state_dict()
    return {
        name: (t.uniform_(0.5, 1.5) if "running_var" in name else t.normal_(0, 0.2)) if t.is_floating_point() else t
        for name, t in state.items()
    }


def test_every_architecture_leaves_and_matches_predict(api, embedded_stack, tmp_path):
    """Imported (or, for a resized model, trained), served by /v1/predict, exported in each format,
    and run by the users' own code."""
    import io

    import numpy as np
    from PIL import Image

    image = png_bytes(5, seed=21)
    pixels = (np.asarray(Image.open(io.BytesIO(image)).convert("L"), dtype=np.float32) / 255).reshape(1, 1, 28, 28)
    cases, served = {}, {}
    for name, (model, shape, classes) in ARCHITECTURES.items():
        form = {"name": f"every-{name}", "model": json.dumps(model), "input_shape": json.dumps(shape)}
        if classes:
            form["classes"] = json.dumps([f"c{i}" for i in range(classes)])
        answer = api.post(
            "/v1/models/import",
            data=form,
            files={"file": ("w.safetensors", save(random_weights(model, shape, classes)))},
        )
        assert answer.status_code == 201, (name, answer.text)
        if classes:
            cases[name] = pixels.tolist()
            served[name] = [probabilities(api, f"every-{name}", image)]
        else:
            rows = [[0.3, -1.2]] if shape == [2] else [[0.7], [-1.1]]
            cases[name] = rows
            predicted = api.post("/v1/predict", json={"model": f"every-{name}", "inputs": rows}).json()
            served[name] = [[p["value"]] for p in predicted["predictions"]]
        for fmt, suffix in SUFFIXES.items():
            exported = api.get(f"/v1/models/every-{name}/export", params={"format": fmt})
            assert exported.status_code == 200, (name, fmt, exported.text)
            (tmp_path / f"{name}.{suffix}").write_bytes(exported.content)
    resized = submit(
        api,
        {
            "model": {"arch": "lenet"},
            "epochs": 1,
            "batch_size": 64,
            "optimizer": {"lr": 0.9},
            "data": {"dataset": "fashion-mnist", "resize": 32, "limit_train": 512, "limit_test": 64},
        },
    )
    assert embedded_stack.wait_for_job(api, resized)["status"] == "succeeded"
    cases["resized-lenet"] = pixels.tolist()
    served["resized-lenet"] = [probabilities(api, f"job:{resized}", image)]
    for fmt, suffix in SUFFIXES.items():
        exported = api.get(f"/v1/models/job:{resized}/export", params={"format": fmt})
        assert exported.status_code == 200, (fmt, exported.text)
        (tmp_path / f"resized-lenet.{suffix}").write_bytes(exported.content)
    run = subprocess.run(
        [sys.executable, "-c", EVERY_ARCHITECTURE, str(tmp_path), json.dumps(cases)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(run.stdout.strip().splitlines()[-1])
    assert results.pop("trainyard imported") == []
    assert set(results) == set(ARCHITECTURES) | {"resized-lenet"}
    for name, by_format in results.items():
        for fmt, values in by_format.items():
            assert np.allclose(values, served[name], atol=1e-4), (name, fmt)


def test_an_import_over_the_size_limit_is_413(tmp_path, data_dir):
    from tests.support.servers import Stack

    with Stack(
        home=tmp_path / "small",
        data_dir=data_dir,
        with_worker=False,
        extra_env={"TRAINYARD_MAX_MODEL_UPLOAD_BYTES": "4096"},
    ) as stack:
        with stack.client() as client:
            weights = save({"w": torch.zeros(4096)})
            answer = client.post(
                "/v1/models/import",
                data={"name": "big", "model": json.dumps({"arch": "lenet"})},
                files={"file": ("w.safetensors", weights)},
            )
            assert answer.status_code == 413 and "set by TRAINYARD_MAX_MODEL_UPLOAD_BYTES" in answer.json()["detail"]
