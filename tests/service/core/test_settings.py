from pathlib import Path

import pytest
from pydantic import ValidationError

from service.core.settings import MIN_SECRET_LENGTH, Settings, flower_auth_refusal

LONG_TOKEN = "Xq3v8NfL2pR7tZ1mK9wB4cY6hJ0dS5gA"  # as secrets.token_urlsafe would make


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


@pytest.mark.parametrize(
    "key, value",
    [
        ("TRAINYARD_PORT", "0"),
        ("TRAINYARD_QUEUE", "bad queue!"),
        ("TRAINYARD_MAX_UPLOAD_BYTES", "10"),
        ("TRAINYARD_LOG_LEVEL", "verbose"),
    ],
)
def test_unsafe_values_are_refused(monkeypatch, key, value):
    monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError):
        Settings()


def test_the_log_level_is_taken_in_any_case_and_given_to_the_worker(monkeypatch, tmp_path):
    from service.cli.main import worker_command

    monkeypatch.setenv("TRAINYARD_HOME", str(tmp_path))
    assert Settings().log_level == "INFO" and not Settings().access_log
    monkeypatch.setenv("TRAINYARD_LOG_LEVEL", "warning")
    assert "--loglevel=WARNING" in worker_command(Settings(), ["trainyard"])


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


@pytest.mark.parametrize(
    "host, tokens, allow_open, refused",
    [
        ("127.0.0.1", "", False, False),
        ("::1", "", False, False),
        ("localhost", "", False, False),
        ("0.0.0.0", "", False, True),
        ("192.168.1.5", " , ", False, True),
        ("0.0.0.0", LONG_TOKEN, False, False),
        ("0.0.0.0", "", True, False),
    ],
)
def test_the_api_is_not_exposed_without_tokens_by_accident(host, tokens, allow_open, refused):
    settings = Settings(host=host, api_tokens=tokens, allow_open=allow_open)
    assert (settings.exposure_refusal() is not None) == refused


@pytest.mark.parametrize(
    "tokens",
    [
        "change-me-to-a-long-random-token,change-me-too:read",  # .env.example's old values, verbatim
        f"{LONG_TOKEN},change-me-too:read",
        f"change-me-to-a-long-random-token,{LONG_TOKEN}:read",
        "x" * (MIN_SECRET_LENGTH - 1),
        f"{LONG_TOKEN},short",
        "CHANGE-ME-please-0123456789abcdef",
    ],
)
def test_placeholder_or_short_tokens_are_refused_beyond_loopback(tokens):
    refusal = Settings(host="0.0.0.0", api_tokens=tokens).exposure_refusal()
    assert refusal is not None and str(MIN_SECRET_LENGTH) in refusal and "secrets.token_urlsafe(32)" in refusal
    assert LONG_TOKEN not in refusal and "change-me-too" not in refusal, "a refusal never prints a token"
    assert Settings(host="0.0.0.0", api_tokens=tokens, allow_open=True).exposure_refusal() is not None
    assert Settings(host="127.0.0.1", api_tokens=tokens).exposure_refusal() is None, "loopback: tests, make run"


@pytest.mark.parametrize("tokens", [f"{LONG_TOKEN}:Read", f"{LONG_TOKEN}:write", ":read", f"a:{LONG_TOKEN}:read"])
def test_a_token_suffix_other_than_read_is_refused_without_showing_the_token(tokens, monkeypatch, capsys, tmp_path):
    """`tok:READ` or `tok:write` was taken whole as a read-write token (and the token without it refused)."""
    from service.cli.main import main
    from service.core.settings import get_settings

    with pytest.raises(ValidationError) as refused:
        Settings(api_tokens=tokens)
    said = refused.value.errors()[0]["msg"]
    assert "a token may end in ':read'" in said or "empty or holds a ':'" in said
    monkeypatch.setenv("TRAINYARD_HOME", str(tmp_path))
    monkeypatch.setenv("TRAINYARD_API_TOKENS", f"{LONG_TOKEN},{tokens}")
    monkeypatch.setattr("sys.argv", ["trainyard", "migrate"])
    get_settings.cache_clear()  # read afresh, as a new process does
    with pytest.raises(SystemExit) as stopped:
        main()
    told = capsys.readouterr().err
    assert stopped.value.code == 2 and told.startswith("error: TRAINYARD_API_TOKENS=(not shown): token 2 of 2 ")
    assert LONG_TOKEN not in told  # its place is said, never its value


def test_long_random_tokens_are_accepted_beyond_loopback():
    tokens = f"{LONG_TOKEN},{'r' * MIN_SECRET_LENGTH}:read"
    assert Settings(host="0.0.0.0", api_tokens=tokens).exposure_refusal() is None


@pytest.mark.parametrize(
    "basic_auth, refused",
    [
        ("", True),
        ("admin", True),
        (":" + LONG_TOKEN, True),
        ("admin:change-me", True),
        ("admin:short", True),
        (f"admin:{LONG_TOKEN},ops:change-me", True),
        (f"admin:{LONG_TOKEN}", False),
        (f"admin:{LONG_TOKEN},ops:{LONG_TOKEN[::-1]}", False),
    ],
)
def test_flower_refuses_a_placeholder_login(basic_auth, refused):
    reason = flower_auth_refusal(basic_auth)
    assert (reason is not None) == refused
    if refused and ":" in basic_auth and basic_auth.split(":", 1)[0]:
        assert str(MIN_SECRET_LENGTH) in reason and "secrets.token_urlsafe(32)" in reason


@pytest.mark.parametrize("storage_url", [None, "s3://bucket/trainyard", "file:///srv/trainyard-store"])
def test_a_home_gets_folders_for_checkpoints_and_the_registry_only_while_they_are_the_store(
    tmp_path, monkeypatch, storage_url
):
    for key in ("TRAINYARD_DATA_DIR", "TRAINYARD_CHECKPOINT_DIR", "TRAINYARD_DATASETS_DIR", "TRAINYARD_REGISTRY_DIR"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("TRAINYARD_HOME", str(tmp_path / "home"))
    if storage_url:
        monkeypatch.setenv("TRAINYARD_STORAGE_URL", storage_url)
    else:
        monkeypatch.delenv("TRAINYARD_STORAGE_URL", raising=False)
    Settings().ensure_dirs()
    made = sorted(p.name for p in (tmp_path / "home").iterdir())
    local = ["checkpoints", "registry"] if storage_url is None else []
    assert made == sorted(["data", "datasets", *local])  # datasets: where uploads are decoded
