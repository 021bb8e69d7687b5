from pathlib import Path

import pytest
from pydantic import ValidationError

from service.core.settings import Settings


def test_embedded_defaults_live_under_home(tmp_path, monkeypatch):
    for key in ("TRAINYARD_DATABASE_URL", "TRAINYARD_BROKER_URL", "TRAINYARD_DATA_DIR", "TRAINYARD_CHECKPOINT_DIR"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("TRAINYARD_HOME", str(tmp_path / "state"))
    settings = Settings()
    assert settings.database_url == f"sqlite:///{tmp_path / 'state' / 'trainyard.db'}"
    assert settings.broker_url == f"sqla+sqlite:///{tmp_path / 'state' / 'broker.db'}"
    assert settings.embedded_broker
    assert settings.data_dir == tmp_path / "state" / "data"
    assert settings.checkpoint_dir == tmp_path / "state" / "checkpoints"
    assert settings.host == "127.0.0.1" and settings.port == 8000


def test_production_urls_switch_backends(monkeypatch, tmp_path):
    monkeypatch.setenv("TRAINYARD_HOME", str(tmp_path))
    monkeypatch.setenv("TRAINYARD_DATABASE_URL", "postgresql+psycopg://u:p@db/trainyard")
    monkeypatch.setenv("TRAINYARD_BROKER_URL", "redis://redis:6379/0")
    monkeypatch.setenv("TRAINYARD_DATA_DIR", "relative-data")
    monkeypatch.setenv("TRAINYARD_PORT", "9001")
    settings = Settings()
    assert settings.database_url.startswith("postgresql+psycopg://") and not settings.embedded_broker
    assert settings.data_dir == Path("relative-data").resolve() and settings.port == 9001


@pytest.mark.parametrize("key, value", [("TRAINYARD_PORT", "0"), ("TRAINYARD_QUEUE", "bad queue!"),
                                        ("TRAINYARD_MAX_UPLOAD_BYTES", "10")])
def test_unsafe_values_are_refused(monkeypatch, key, value):
    monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError):
        Settings()


def test_threads_and_queues(monkeypatch, tmp_path):
    import os

    monkeypatch.setenv("TRAINYARD_HOME", str(tmp_path))
    monkeypatch.setenv("TRAINYARD_WORKER_CONCURRENCY", "2")
    settings = Settings()
    assert settings.training_threads == max(1, (os.cpu_count() or 1) // 2)
    assert settings.queue_for("cuda") == settings.queue_for("cuda:1") == "trainyard-gpu"
    assert settings.queue_for("auto") == settings.queue_for("cpu") == "trainyard"
    monkeypatch.setenv("TRAINYARD_TRAIN_THREADS", "3")
    assert Settings().training_threads == 3


@pytest.mark.parametrize("host, tokens, allow_open, refused", [
    ("127.0.0.1", "", False, False), ("::1", "", False, False), ("localhost", "", False, False),
    ("0.0.0.0", "", False, True), ("192.168.1.5", " , ", False, True),
    ("0.0.0.0", "secret", False, False), ("0.0.0.0", "", True, False)])
def test_the_api_is_not_exposed_without_tokens_by_accident(host, tokens, allow_open, refused):
    settings = Settings(host=host, api_tokens=tokens, allow_open=allow_open)
    assert (settings.exposure_refusal() is not None) == refused
