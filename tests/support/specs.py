"""Job specs the end-to-end tests share, and submitting one over HTTP."""

from __future__ import annotations

SOFTMAX_SPEC = {
    "name": "softmax-e2e",
    "model": {"arch": "softmax_regression"},
    "data": {"dataset": "fashion-mnist"},
    "optimizer": {"name": "sgd", "lr": 0.5},
    "epochs": 3,
    "batch_size": 64,
    "seed": 0,
    "device": "auto",
}


def submit(client, spec) -> str:
    response = client.post("/v1/jobs", json=spec)
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued"
    return job["id"]
