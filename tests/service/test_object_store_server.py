"""The S3 server the tests start (tests/support/object_store.py) is a real one: objects go in and come
back, multipart uploads, copies, prefix listings and batch deletes work, a wrong signature is
refused, objects outlive a restart and a stopped server refuses connections.

The checks that leave the server running share one server for the module (a start and a stop cost
about 2.5 s); the one that stops it takes a server of its own (the object_store fixture)."""

from __future__ import annotations

import hashlib
import os
import uuid

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError, EndpointConnectionError

from tests.support.object_store import SeaweedS3, require_seaweed

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def store():
    require_seaweed()
    with SeaweedS3() as server:
        yield server


@pytest.fixture
def prefix(store) -> str:
    """A key prefix no other test writes under."""
    return f"{store.prefix}/{uuid.uuid4().hex[:12]}"


def keys(client, bucket: str, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def error_code(excinfo) -> str:
    return excinfo.value.response["Error"]["Code"]


def test_put_and_get_an_object(store, prefix):
    client = store.client()
    client.put_object(Bucket=store.bucket, Key=f"{prefix}/a.txt", Body=b"hello")
    got = client.get_object(Bucket=store.bucket, Key=f"{prefix}/a.txt")
    assert got["Body"].read() == b"hello"
    assert got["ETag"] == f'"{hashlib.md5(b"hello").hexdigest()}"'
    with pytest.raises(ClientError) as missing:
        client.get_object(Bucket=store.bucket, Key=f"{prefix}/nothing")
    assert error_code(missing) == "NoSuchKey"


def test_a_multipart_upload_round_trips_byte_identical(store, prefix, tmp_path):
    data = os.urandom(12 * MiB + 12345)
    source, back = tmp_path / "source.bin", tmp_path / "back.bin"
    source.write_bytes(data)
    client = store.client()
    five = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    client.upload_file(str(source), store.bucket, f"{prefix}/big.bin", Config=five)
    head = client.head_object(Bucket=store.bucket, Key=f"{prefix}/big.bin")
    assert head["ContentLength"] == len(data)
    assert head["ETag"].strip('"').endswith("-3")  # three parts: 5 + 5 + 2 MiB
    client.download_file(store.bucket, f"{prefix}/big.bin", str(back), Config=five)
    assert hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(data).digest()


def test_copy_list_and_delete_under_a_prefix(store, prefix):
    client, bucket = store.client(), store.bucket
    for name in ("1", "2", "3", "sub/4"):
        client.put_object(Bucket=bucket, Key=f"{prefix}/a/{name}", Body=name.encode())
    client.put_object(Bucket=bucket, Key=f"{prefix}/ab", Body=b"beside a/, not under it")
    client.copy_object(Bucket=bucket, Key=f"{prefix}/b/1", CopySource={"Bucket": bucket, "Key": f"{prefix}/a/1"})
    assert client.get_object(Bucket=bucket, Key=f"{prefix}/b/1")["Body"].read() == b"1"

    under_a = [f"{prefix}/a/{name}" for name in ("1", "2", "3", "sub/4")]
    assert keys(client, bucket, f"{prefix}/a/") == under_a
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=f"{prefix}/a/", PaginationConfig={"PageSize": 2}
    )
    assert [[item["Key"] for item in page["Contents"]] for page in pages] == [under_a[:2], under_a[2:]]

    deleted = client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": key} for key in under_a]})
    assert sorted(item["Key"] for item in deleted["Deleted"]) == under_a
    assert "Errors" not in deleted
    assert keys(client, bucket, f"{prefix}/a/") == []
    assert keys(client, bucket, prefix) == [f"{prefix}/ab", f"{prefix}/b/1"]


def test_a_wrong_secret_an_unknown_key_or_no_signature_is_refused(store, prefix):
    key = f"{prefix}/secret.txt"
    store.client().put_object(Bucket=store.bucket, Key=key, Body=b"mine")
    wrong = store.client(secret_key=store.secret_key + "x")
    with pytest.raises(ClientError) as read:
        wrong.get_object(Bucket=store.bucket, Key=key)
    assert error_code(read) == "SignatureDoesNotMatch"
    with pytest.raises(ClientError) as write:
        wrong.put_object(Bucket=store.bucket, Key=f"{prefix}/theirs.txt", Body=b"theirs")
    assert error_code(write) == "SignatureDoesNotMatch"

    stranger = boto3.client(
        "s3",
        endpoint_url=store.endpoint_url,
        aws_access_key_id="TYNOSUCHKEY",
        aws_secret_access_key=store.secret_key,
        region_name=store.region,
    )
    with pytest.raises(ClientError) as unknown:
        stranger.list_objects_v2(Bucket=store.bucket)
    assert error_code(unknown) == "InvalidAccessKeyId"

    anonymous = boto3.client(
        "s3", endpoint_url=store.endpoint_url, region_name=store.region, config=Config(signature_version=UNSIGNED)
    )
    with pytest.raises(ClientError) as unsigned:
        anonymous.get_object(Bucket=store.bucket, Key=key)
    assert error_code(unsigned) == "AccessDenied"

    assert keys(store.client(), store.bucket, prefix) == [key]


def test_its_env_is_enough_for_a_client(store, prefix, monkeypatch):
    env = store.env()
    assert env["TRAINYARD_STORAGE_URL"] == f"s3://{store.bucket}/{store.prefix}"
    assert env["AWS_ENDPOINT_URL"] == f"http://127.0.0.1:{store.ports['s3.port']}"
    for name in [name for name in os.environ if name.startswith("AWS_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    client = boto3.session.Session().client("s3")  # a fresh session: the default one keeps its credentials
    client.put_object(Bucket=store.bucket, Key=f"{prefix}/from-env", Body=b"env")
    assert store.client().get_object(Bucket=store.bucket, Key=f"{prefix}/from-env")["Body"].read() == b"env"


def test_a_restart_keeps_objects_and_a_stopped_server_refuses_connections(object_store):
    server = object_store
    ports, pid = dict(server.ports), server.pid
    server.client().put_object(Bucket=server.bucket, Key="kept.txt", Body=b"still here")

    server.restart()
    assert server.pid != pid and server.ports == ports
    assert server.client().get_object(Bucket=server.bucket, Key="kept.txt")["Body"].read() == b"still here"

    server.stop()
    assert not server.running
    once = server.client(connect_timeout=2, retries={"total_max_attempts": 1})
    with pytest.raises(EndpointConnectionError):
        once.get_object(Bucket=server.bucket, Key="kept.txt")
