"""One typed settings object, read from TRAINYARD_* environment variables."""

from __future__ import annotations

import ipaddress
import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Secrets the API and Flower accept when they listen beyond loopback: at least this long, and none
# of the documented examples' values (what a copied .env.example or docs/ line would hold).
MIN_SECRET_LENGTH = 24
PLACEHOLDER_SECRETS = frozenset(
    {"change-me-to-a-long-random-token", "change-me-too", "change-me", "changeme", "secret", "password", "token"}
)
GENERATE_SECRET = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


def weak_secret(secret: str) -> bool:
    """A documented placeholder, or too short to be secret."""
    value = secret.strip()
    return (
        len(value) < MIN_SECRET_LENGTH
        or value.lower() in PLACEHOLDER_SECRETS
        or "change-me" in value.lower()
        or "changeme" in value.lower()
    )


def flower_auth_refusal(basic_auth: str) -> str | None:
    """Why Flower must not start with this FLOWER_BASIC_AUTH (`user:password`, comma-separated), or None."""
    pairs = [pair.strip() for pair in basic_auth.split(",") if pair.strip()]
    if not pairs or any(":" not in pair or not pair.split(":", 1)[0] for pair in pairs):
        return "refusing to start Flower: set FLOWER_BASIC_AUTH to user:password (comma-separated for several)"
    if any(weak_secret(pair.split(":", 1)[1]) for pair in pairs):
        return (
            f"refusing to start Flower with a placeholder or short password in FLOWER_BASIC_AUTH: use at "
            f"least {MIN_SECRET_LENGTH} characters and no example's value, e.g. the output of `{GENERATE_SECRET}`"
        )
    return None


# What TRAINYARD_STORAGE_URL may be: folders under a local path, or a bucket (and a prefix in it).
STORAGE_URL_PATTERN = r"^(file:///.*|s3://[a-z0-9][a-z0-9.-]{1,62}(/.*)?)$"


def half_of_memory() -> int:
    """Half of this machine's physical memory, in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def api_tokens(raw: str) -> list[tuple[str, bool]]:
    """TRAINYARD_API_TOKENS (`tok1,tok2:read`) as (token, read-only) pairs; ValueError, naming the
    entry by its place (never its value), for an empty token or a `:` other than the `:read` suffix."""
    found = []
    entries = [entry.strip() for entry in raw.split(",") if entry.strip()]
    for number, entry in enumerate(entries, start=1):
        token, colon, suffix = entry.rpartition(":") if ":" in entry else (entry, "", "")
        if colon and suffix != "read":
            raise ValueError(
                f"token {number} of {len(entries)} ends in ':{suffix}': a token may end in ':read' (read-only) "
                "or nothing (read-write), and holds no other ':'"
            )
        if not token or ":" in token:
            raise ValueError(f"token {number} of {len(entries)} is empty or holds a ':' of its own")
        found.append((token, bool(colon)))
    return found


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRAINYARD_", extra="ignore")

    home: Path = Path("./var")
    database_url: str | None = None
    broker_url: str | None = None
    data_dir: Path | None = None
    checkpoint_dir: Path | None = None
    datasets_dir: Path | None = None
    registry_dir: Path | None = None
    # Where datasets, checkpoints and registered versions are stored: unset, the folders above;
    # file:///path for folders under path; s3://bucket/prefix for an S3-compatible object store
    # (endpoint and credentials from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ... as boto3 reads them).
    storage_url: str | None = Field(default=None, pattern=STORAGE_URL_PATTERN)
    # This machine's copies of objects from an object store, shared by its processes; the least
    # recently used beyond this many bytes are removed.
    cache_bytes: int = Field(default=20 * 1024**3, ge=1024 * 1024)
    # A worker that cannot reach the store retries with back-off this long, then gives its job back
    # to the queue (it resumes from its last stored checkpoint).
    storage_retry_seconds: float = Field(default=120.0, ge=0, le=86400)
    # Pretrained backbones' weights files (torchvision's file names); $TORCH_HOME/hub/checkpoints is
    # looked in after it. Default: HOME/weights.
    weights_dir: Path | None = None
    # What the API and the workers log: the least level shown (a job's own log keeps its lines
    # whatever it is), and the API's access log (a line per request: client, method, path, status).
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    access_log: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    allow_download: bool = False
    # API processes `trainyard api` and `make run` start (each with its own model cache and
    # batcher); default: the cores this process may use.
    api_workers: int = Field(default_factory=lambda: len(os.sched_getaffinity(0)), ge=1, le=256)
    # Set by the CLI for the processes it starts: where they report readiness to each other.
    api_run_dir: Path | None = None
    queue: str = Field(default="trainyard", pattern=r"^[A-Za-z0-9_.-]{1,100}$")
    worker_concurrency: int = Field(default=1, ge=1, le=64)
    # Queues `trainyard worker` and `make run` serve, comma-separated; default: the CPU queue, and
    # the GPU queue too on a machine with CUDA.
    worker_queues: str = Field(default="", pattern=r"^[A-Za-z0-9_.,-]{0,1000}$")
    # Workers renew their registry entry this often; one silent for 3 beats is no longer live.
    worker_heartbeat_seconds: float = Field(default=5.0, gt=0, le=300)
    # Refuse (409) a job that no live worker can serve, instead of queueing it with a warning.
    require_worker: bool = False
    # Torch threads per training process; default: the cores shared among the worker's processes.
    train_threads: int | None = Field(default=None, ge=1, le=1024)
    # Jobs asking for device cuda or cuda:N go to this queue, served by workers with a GPU; auto and
    # cpu jobs go to `queue`, which GPU workers serve too (and run auto jobs on their GPU).
    gpu_queue: str = Field(default="trainyard-gpu", pattern=r"^[A-Za-z0-9_.-]{1,100}$")

    # A running job's worker renews its lease every heartbeat_seconds; a lease older than
    # lease_seconds means the worker is gone, and the job is re-queued (up to max_attempts runs).
    heartbeat_seconds: float = Field(default=2.0, gt=0, le=300)
    lease_seconds: float = Field(default=30.0, gt=0, le=86400)
    max_attempts: int = Field(default=3, ge=1, le=100)
    # Admission by cost: a job whose network has more parameters, or whose training step needs more
    # memory (weights, gradients, optimizer state, activations at its batch size), is refused at
    # submit (422) and by the worker; each job also trains under a memory limit of max_job_memory
    # bytes beyond what its process held when it started (reason out_of_memory past it).
    max_parameters: int = Field(default=500_000_000, ge=1)
    # Default: half the machine's memory shared among the worker's training processes.
    max_job_memory: int | None = Field(default=None, ge=16 * 1024 * 1024)
    # A training process lost while it held this share of its memory budget (or of the machine's
    # memory) was killed for memory: its job fails with out_of_memory instead of being retried.
    oom_kill_fraction: float = Field(default=0.9, gt=0, le=1)
    reaper_interval_seconds: float = Field(default=5.0, gt=0, le=3600)
    # Log lines a job keeps per attempt (GET /v1/jobs/{id}/logs); errors beyond it are still kept.
    job_log_lines: int = Field(default=2000, ge=10, le=1_000_000)
    # A distributed job's processes (spec `distributed`): at most max_job_processes on the CPU
    # (default: the worker's training threads, one core each); torchrun starts the group again up
    # to distributed_max_restarts times when a process dies, and a collective that waits longer
    # than distributed_timeout_seconds for a process fails the job instead of hanging.
    max_job_processes: int | None = Field(default=None, ge=1, le=1024)
    # A job on several machines (nnodes > 1): the address the other workers reach this worker at
    # when it leads one (default: its host name's address), and how long its processes wait for
    # the other machines' to join.
    worker_address: str | None = Field(default=None, max_length=255)
    distributed_join_timeout_seconds: float = Field(default=120.0, gt=0, le=86400)
    distributed_max_restarts: int = Field(default=2, ge=0, le=100)
    distributed_timeout_seconds: float = Field(default=300.0, gt=0, le=86400)
    # Comment lines the event stream sends when it has nothing else to say, so that proxies keep it.
    events_keepalive_seconds: float = Field(default=15.0, gt=0, le=3600)
    # A worker that cannot reach the database keeps its job and retries its writes (epochs, the
    # job's end) with backoff for this long before the job fails.
    database_retry_seconds: float = Field(default=600.0, gt=0, le=86400)
    # A queued job whose message is older than this and missing from the broker is sent again.
    resend_after_seconds: float = Field(default=30.0, gt=0, le=86400)

    # Finished jobs' checkpoints are removed this many days after they end, unless a registered
    # version came from the job (it keeps its own copy); their records and metrics stay. None: keep.
    retention_days: float | None = Field(default=None, gt=0, le=36500)
    # The embedded broker's consumed messages are removed after this long.
    broker_message_retention_seconds: float = Field(default=3600, gt=0, le=30 * 86400)
    # How often the reaper's holder applies the two retentions above.
    housekeeping_interval_seconds: float = Field(default=600, gt=0, le=86400)

    # Comma-separated bearer tokens; a token ending in ":read" may only read.
    api_tokens: str = ""
    # Without tokens the API refuses to listen on an address other than loopback, unless this says
    # that serving everyone who can reach it is intended.
    allow_open: bool = False
    # The dashboard's session cookie is marked Secure (sent over HTTPS only). The service's own
    # server speaks plain HTTP, so HTTPS is a proxy's in front of it: set this there.
    secure_cookies: bool = False

    max_upload_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    max_dataset_upload_bytes: int = Field(default=512 * 1024 * 1024, ge=1024)
    # Dataset uploads at least this large are decoded after the answer (202, status processing).
    dataset_background_bytes: int = Field(default=32 * 1024 * 1024, ge=0)
    # A processing upload whose decoder has not renewed its heartbeat for this long is failed.
    dataset_decode_timeout_seconds: float = Field(default=60, gt=0)
    dataset_heartbeat_seconds: float = Field(default=5, gt=0)
    max_decoded_dataset_bytes: int = Field(default=8 * 1024**3, ge=1024)  # what one upload's images may decode to
    max_model_upload_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)  # POST /v1/models/import
    max_files_per_request: int = Field(default=64, ge=1)
    max_image_pixels: int = Field(default=4096 * 4096, ge=1)
    model_cache_size: int = Field(default=8, ge=1)
    # Concurrent predict requests for one model are run as one batch of up to this many images,
    # waiting at most this long for company.
    max_batch_size: int = Field(default=64, ge=1, le=4096)
    max_batch_delay_ms: float = Field(default=0.0, ge=0, le=1000)
    # Requests that may wait for one model's next batch; one more is answered 503 with Retry-After.
    predict_queue_size: int = Field(default=512, ge=1, le=1_000_000)
    # A predict that has no answer after this long is answered 503 instead of waiting on.
    predict_timeout_ms: float = Field(default=10_000, gt=0, le=3_600_000)
    # Model references loaded and warmed up at start-up; /readyz waits for them.
    preload_models: str = ""
    # How long a resolved model reference is reused before it is looked up again; an alias
    # that moves takes effect within this time.
    reference_cache_seconds: float = Field(default=1.0, ge=0, le=3600)
    # Where the API runs its models: auto (a GPU when the process has one), cpu, cuda or cuda:N.
    predict_device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:[0-9]{1,2})?)$")
    # What runs the forward pass of served models: ONNX Runtime on the exported graph (CPU only),
    # or torch; auto: ONNX Runtime on the CPU (faster on every curriculum model, bench/predict.py),
    # torch on a GPU, and torch for a model ONNX cannot hold.
    predict_backend: Literal["auto", "torch", "onnxruntime"] = "auto"
    # Torch threads for inference in the API process; small models answer fastest on one.
    inference_threads: int = Field(default=1, ge=1, le=256)
    # Where the Optuna studies of adaptive sweeps live. Unset: beside trainyard's own tables but never
    # among them (a schema of their own on PostgreSQL, a file beside the SQLite database).
    optuna_storage_url: str | None = None
    # Adds POST /v1/_bench/floor, a route that reads an upload and answers a constant, so that
    # bench/predict.py can measure the server's own HTTP cost. Off in production.
    bench_routes: bool = False

    @field_validator("log_level", mode="before")
    @classmethod
    def _any_case(cls, value):
        return value.upper() if isinstance(value, str) else value

    @field_validator("api_tokens")
    @classmethod
    def _tokens_as_written(cls, value: str) -> str:
        api_tokens(value)  # a suffix mistyped (`:Read`, `:write`) would make a read-write token
        return value

    @model_validator(mode="after")
    def _derive_paths(self) -> Settings:
        self.home = self.home.expanduser().resolve()
        if self.data_dir is None:
            self.data_dir = self.home / "data"
        if self.checkpoint_dir is None:
            self.checkpoint_dir = self.home / "checkpoints"
        if self.datasets_dir is None:
            self.datasets_dir = self.home / "datasets"
        self.datasets_dir = self.datasets_dir.expanduser().resolve()
        if self.registry_dir is None:
            self.registry_dir = self.home / "registry"
        self.registry_dir = self.registry_dir.expanduser().resolve()
        self.weights_dir = (self.weights_dir or self.home / "weights").expanduser().resolve()
        if self.max_job_memory is None:
            self.max_job_memory = half_of_memory() // self.worker_concurrency
        self.data_dir = self.data_dir.expanduser().resolve()
        self.checkpoint_dir = self.checkpoint_dir.expanduser().resolve()
        if self.database_url is None:
            self.database_url = f"sqlite:///{self.home / 'trainyard.db'}"
        if self.broker_url is None:
            self.broker_url = f"sqla+sqlite:///{self.home / 'broker.db'}"
        if self.optuna_storage_url is not None and self.optuna_storage_url == self.database_url:
            raise ValueError(
                "optuna_storage_url must not be the database URL: Optuna's tables (its alembic_version "
                "among them) would sit among trainyard's; give it a database, schema or file of its own, "
                "or leave it unset"
            )
        if self.heartbeat_seconds * 2 > self.lease_seconds:
            raise ValueError("lease_seconds must be at least twice heartbeat_seconds")
        return self

    @property
    def training_threads(self) -> int:
        return self.train_threads or max(1, (os.cpu_count() or 1) // self.worker_concurrency)

    @property
    def job_processes(self) -> int:
        """The processes this worker gives one distributed job on the CPU, at most."""
        return self.max_job_processes or self.training_threads

    @property
    def cache_dir(self) -> Path:
        """Decoded datasets, so the next job on the same files starts fast."""
        return self.home / "cache"

    @property
    def object_cache_dir(self) -> Path:
        """This machine's copies of objects from the object store, by digest."""
        return self.home / "cache" / "objects"

    def queue_for(self, device: str) -> str:
        return self.gpu_queue if device.startswith("cuda") else self.queue

    @property
    def worker_stale_seconds(self) -> float:
        return 3 * self.worker_heartbeat_seconds

    @property
    def queues(self) -> list[str]:
        return [self.queue, self.gpu_queue]

    @property
    def listens_on_loopback(self) -> bool:
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return self.host == "localhost"

    def exposure_refusal(self) -> str | None:
        """Why the API must not start, or None: beyond loopback only with tokens that are neither
        placeholders nor short, or with none where allow_open says serving everyone is intended."""
        if self.listens_on_loopback:
            return None
        tokens = [token for token, _ in api_tokens(self.api_tokens)]
        weak = [str(i + 1) for i, token in enumerate(tokens) if weak_secret(token)]
        if weak:
            return (
                f"refusing to listen on {self.host} with a placeholder or short API token (number "
                f"{', '.join(weak)} of {len(tokens)} in TRAINYARD_API_TOKENS): tokens must have at least "
                f"{MIN_SECRET_LENGTH} characters and not be an example's value. Generate one with "
                f"`{GENERATE_SECRET}`"
            )
        if tokens or self.allow_open:
            return None
        return (
            f"refusing to listen on {self.host} without API tokens: anyone who can reach it could train, "
            f"predict and delete. Set TRAINYARD_API_TOKENS (e.g. to the output of `{GENERATE_SECRET}`), "
            "or listen on 127.0.0.1, or set TRAINYARD_ALLOW_OPEN=true to serve everyone on purpose"
        )

    @property
    def embedded_broker(self) -> bool:
        return self.broker_url.startswith("sqla+")

    def ensure_dirs(self) -> None:
        """The home's folders; those of checkpoints and the registry only while they are the store
        (the datasets folder stays: uploads are decoded there before they are stored)."""
        folders = [self.home, self.data_dir, self.datasets_dir]
        if self.storage_url is None:
            folders += [self.checkpoint_dir, self.registry_dir]
        for path in folders:
            path.mkdir(parents=True, exist_ok=True)


@lru_cache
def get_settings() -> Settings:
    return Settings()
