"""Where files live: a local folder, or an S3-compatible object store (AWS S3, MinIO, SeaweedFS,
Ceph, R2, ...). A store knows keys and bytes only; what a file means, its digest and who may read
it are the business of service/core/storage/__init__.py.

Keys are `<area>/<path>`: `checkpoints/<job id>/epoch-0001.safetensors`, `datasets/<id>.safetensors`,
`registry/<model>/v1.safetensors`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from service.core.errors import Unavailable, Unusable

AREAS = ("checkpoints", "datasets", "registry")
CHUNK = 1024 * 1024


class StorageError(Unusable):
    """A stored file cannot be read or written; `code` is an object store's error code, where it
    answered one (AccessDenied, NoSuchBucket, ...)."""

    reason = "storage_error"
    code: str | None = None


class StorageUnavailable(StorageError, Unavailable):
    """The store cannot be reached (or answers with a server error): worth trying again later."""

    reason = "storage_unavailable"

    def __init__(self, message: str, retry_after: int = 5):
        Unavailable.__init__(self, message, retry_after)


class ObjectMissing(StorageError):
    """The store has no object under the key."""

    reason = "missing_file"


class ObjectCorrupt(StorageError):
    """The object's bytes are not the ones recorded when it was written."""

    reason = "corrupt_file"


class Store(Protocol):
    url: str
    # The folder files are read in place from (a local store); None: files are fetched into the cache.
    local: bool

    def path(self, key: str) -> Path:
        """Where the file of a key is on this machine (a local store only)."""

    def upload(self, key: str, source: Path, sha256: str) -> None:
        """Write source's bytes under key, whole or not at all."""

    def download(self, key: str, target) -> None:
        """Write the object's bytes into the open binary file `target`."""

    def head(self, key: str) -> tuple[int, str | None] | None:
        """(size, sha256) of the object under key, the digest where the store keeps it (an object
        store's `sha256` metadata, which upload() writes; None in a folder); None if there is none."""

    def copy(self, source_key: str, key: str) -> None: ...

    def delete(self, keys: list[str]) -> None:
        """Delete objects; keys that do not exist are no error."""

    def delete_prefix(self, prefix: str) -> None: ...

    def list(self, prefix: str) -> list[tuple[str, int]]:
        """(key, size) of every object under a prefix."""


def checked_key(key: str) -> str:
    """The key, if it is one (`<area>/<path>` with no empty, `.` or `..` part); else StorageError."""
    parts = key.split("/")
    if parts[0] not in AREAS or any(part in ("", ".", "..") for part in parts):
        raise StorageError(f"not a storage key: {key!r}")
    return key


class FolderStore:
    """Files in local folders, one per area (as a home has always kept them)."""

    local = True

    def __init__(self, roots: dict[str, Path], url: str):
        self.roots = {area: Path(root) for area, root in roots.items()}
        self.url = url

    def path(self, key: str) -> Path:
        area, _, rest = checked_key(key).partition("/")
        return self.roots[area] / rest

    def upload(self, key: str, source: Path, sha256: str) -> None:
        target = self.path(key)
        if source.resolve() == target.resolve():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        os.close(fd)
        try:
            try:
                os.unlink(tmp)
                os.link(source, tmp)  # a file never rewritten in place may be shared
            except OSError:
                shutil.copyfile(source, tmp)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def download(self, key: str, target) -> None:
        try:
            with open(self.path(key), "rb") as fh:
                shutil.copyfileobj(fh, target, CHUNK)
        except FileNotFoundError:
            raise ObjectMissing(f"{key} does not exist in {self.url}") from None

    def head(self, key: str) -> tuple[int, str | None] | None:
        path = self.path(key)
        try:
            stat = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return (stat.st_size, None) if path.is_file() else None

    def copy(self, source_key: str, key: str) -> None:
        source = self.path(source_key)
        if not source.is_file():
            raise ObjectMissing(f"{source_key} does not exist in {self.url}")
        self.upload(key, source, "")

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            self.path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self.path(prefix.rstrip("/")), ignore_errors=True)

    def list(self, prefix: str) -> list[tuple[str, int]]:
        area, _, rest = prefix.partition("/")
        root = self.roots[area]
        found = []
        for path in sorted((root / rest).rglob("*") if (root / rest).is_dir() else []):
            if path.is_file() and not path.name.startswith("."):
                found.append((f"{area}/{path.relative_to(root).as_posix()}", path.stat().st_size))
        return found


# What an S3 error code means for the caller: missing, or worth retrying.
_MISSING_CODES = {"NoSuchKey", "NotFound", "404"}  # not NoSuchBucket: a wrong bucket is no missing object
_RETRY_CODES = {
    "500",
    "502",
    "503",
    "504",
    "429",
    "SlowDown",
    "ServiceUnavailable",
    "InternalError",
    "RequestTimeout",
    "TooManyRequests",
}
MULTIPART_BYTES = 64 * 1024 * 1024


class S3Store:
    """Objects in a bucket of an S3-compatible store, under an optional prefix. The endpoint and
    credentials come the standard way: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    AWS_REGION, AWS_PROFILE and the files boto3 reads."""

    local = False

    def __init__(self, url: str, *, connect_timeout: float = 5.0, read_timeout: float = 60.0):
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"not an s3://bucket/prefix URL: {url!r}")
        self.url, self.bucket, self.prefix = url, parts.netloc, parts.path.strip("/")
        # AWS_REGION as the AWS tools document it (boto3 itself reads only AWS_DEFAULT_REGION).
        region = os.environ.get("AWS_REGION") or None
        self.client = boto3.session.Session(region_name=region).client(
            "s3",
            config=Config(
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                retries={"max_attempts": 2, "mode": "standard"},
                # Stores other than AWS's may not know the newer checksum headers.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )
        self.transfer = TransferConfig(multipart_threshold=MULTIPART_BYTES, multipart_chunksize=MULTIPART_BYTES)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{checked_key(key)}" if self.prefix else checked_key(key)

    def path(self, key: str) -> Path:
        raise TypeError("an object store's files are fetched, not read in place")

    def _call(self, what: str, call):
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return call()
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
            if code in _MISSING_CODES or (status == "404" and not code.startswith("NoSuch")):
                raise ObjectMissing(f"{what}: not found in {self.url}") from None
            if code in _RETRY_CODES or status.startswith("5"):
                raise StorageUnavailable(f"{what}: {self.url} answered {code or status}") from None
            # trainyard makes no bucket: a store's owner does, with the store's own tools
            hint = f"; bucket {self.bucket!r} does not exist there: create it first" if code == "NoSuchBucket" else ""
            refused = StorageError(f"{what}: {self.url} refused: {code} {exc}{hint}")
            refused.code = code
            raise refused from None
        except S3UploadFailedError as exc:  # a multipart upload's failure, as text
            if any(word in str(exc) for word in ("AccessDenied", "Forbidden", "NoSuchBucket", "InvalidAccessKeyId")):
                raise StorageError(f"{what}: {self.url} refused: {exc}") from None
            raise StorageUnavailable(f"{what}: upload to {self.url} failed: {exc}") from None
        except BotoCoreError as exc:  # cannot connect, timed out, connection closed, no credentials
            raise StorageUnavailable(f"{what}: {self.url} cannot be reached: {exc}") from None

    def upload(self, key: str, source: Path, sha256: str) -> None:
        metadata = {"sha256": sha256} if sha256 else {}
        if source.stat().st_size < MULTIPART_BYTES:
            # One PUT: the object appears whole or not at all, without the thread pool s3transfer
            # starts for every call (most of the cost of a small checkpoint's upload).
            def put():
                with open(source, "rb") as body:
                    self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=body, Metadata=metadata)

            self._call(f"writing {key}", put)
            return
        # Large files go as a multipart upload, which s3transfer aborts if a part fails: no part
        # of an unfinished upload is ever visible under the key.
        self._call(
            f"writing {key}",
            lambda: self.client.upload_file(
                str(source),
                self.bucket,
                self._key(key),
                ExtraArgs={"Metadata": metadata} if metadata else None,
                Config=self.transfer,
            ),
        )

    def download(self, key: str, target) -> None:
        def fetch():
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
            for chunk in body.iter_chunks(CHUNK):
                target.write(chunk)

        self._call(f"reading {key}", fetch)

    def head(self, key: str) -> tuple[int, str | None] | None:
        try:
            answer = self._call(
                f"looking up {key}", lambda: self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            )
        except ObjectMissing:
            return None
        return answer["ContentLength"], (answer.get("Metadata") or {}).get("sha256") or None

    def copy(self, source_key: str, key: str) -> None:
        self._call(
            f"copying {source_key} to {key}",
            lambda: self.client.copy(
                {"Bucket": self.bucket, "Key": self._key(source_key)}, self.bucket, self._key(key), Config=self.transfer
            ),
        )

    def delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            batch = [{"Key": self._key(key)} for key in keys[start : start + 1000]]
            self._call(
                "deleting objects",
                lambda batch=batch: self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                ),
            )

    def list(self, prefix: str) -> list[tuple[str, int]]:
        found, token = [], None
        strip = len(self.prefix) + 1 if self.prefix else 0
        under = self._key(prefix.rstrip("/")) + ("/" if prefix.endswith("/") else "")
        while True:
            extra = {"ContinuationToken": token} if token else {}
            page = self._call(
                f"listing {prefix}",
                lambda extra=extra: self.client.list_objects_v2(Bucket=self.bucket, Prefix=under, **extra),
            )
            found += [(item["Key"][strip:], item["Size"]) for item in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                return found
            token = page["NextContinuationToken"]

    def delete_prefix(self, prefix: str) -> None:
        self.delete([key for key, _ in self.list(prefix.rstrip("/") + "/")])


def open_store(url: str | None, roots: dict[str, Path]) -> Store:
    """The store a TRAINYARD_STORAGE_URL names: None for the home's own folders (`roots`, one per
    area), file:///path for folders under that path, s3://bucket/prefix for an object store."""
    if not url:
        return FolderStore(roots, url=f"file://{roots['checkpoints'].parent}")
    scheme = urlsplit(url).scheme
    if scheme == "file":
        root = Path(urlsplit(url).path)
        return FolderStore({area: root / area for area in AREAS}, url=url)
    if scheme == "s3":
        return S3Store(url)
    raise ValueError(f"TRAINYARD_STORAGE_URL must be file:///path or s3://bucket/prefix, not {url!r}")
