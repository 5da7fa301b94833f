"""The S3 backend against a real S3-compatible server (moto in server mode) on loopback.

moto does not check presigned signatures or expiry; the local backend's tests cover those.
"""

from __future__ import annotations

import hashlib
import io
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import boto3
import httpx
import pytest
from botocore.config import Config
from flask import Flask
from PIL import Image

from orchestrator.netutil import free_port
from orchestrator.storage.base import DirectUploads, StorageError, object_key, staging_key
from orchestrator.storage.factory import storage_from_url
from orchestrator.storage.images import download_image, upload, verify_image
from orchestrator.storage.s3 import S3Storage
from tests.http_helpers import WsgiServer
from tests.s3_helpers import moto_server, use_dummy_aws


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    use_dummy_aws(monkeypatch, tmp_path_factory.getbasetemp() / "no-aws-config")


@pytest.fixture
def bucket(endpoint: str, aws_env: None) -> str:
    name = f"orch-test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5) as c:
        yield c


def jpeg_bytes(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (10, 120, 240)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_presigned_round_trip(endpoint: str, bucket: str, client: httpx.Client) -> None:
    storage = storage_from_url(f"s3://{bucket}/renders/v1", s3_endpoint_url=endpoint, secret_key="", public_url="")
    key = object_key("acme", "b42", 3, "red/shoe", 0, "jpg")
    data = jpeg_bytes(64, 40)

    put_url = storage.presign_put(key, "image/jpeg", 300)
    # Path-style addressing on a custom endpoint, SigV4, content type bound to the signature.
    assert put_url.startswith(f"{endpoint}/{bucket}/renders/v1/acme/b42/3-red_shoe/0.jpg?")
    query = parse_qs(urlsplit(put_url).query)
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert "content-type" in query["X-Amz-SignedHeaders"][0]
    assert query["X-Amz-Expires"] == ["300"]
    upload(client, put_url, data, "image/jpeg", timeout=5)

    resp = client.get(storage.presign_get(key, 300))
    assert resp.status_code == 200
    assert hashlib.sha256(resp.content).hexdigest() == hashlib.sha256(data).hexdigest()

    info = storage.head(key)
    assert info is not None
    assert (info.key, info.size, info.content_type) == (key, len(data), "image/jpeg")
    # The prefix lives in the backend, not in the logical key.
    raw = boto3.client("s3", endpoint_url=endpoint).head_object(Bucket=bucket, Key=f"renders/v1/{key}")
    assert raw["ContentLength"] == len(data)


def test_store_pipeline_from_presigned_get(endpoint: str, bucket: str, client: httpx.Client) -> None:
    storage = S3Storage(bucket, endpoint_url=endpoint)
    key = object_key("acme", "b1", 0, "x", 0, "jpg")
    upload(client, storage.presign_put(key, "image/jpeg", 60), jpeg_bytes(48, 32), "image/jpeg", 5)

    host = urlsplit(endpoint).netloc
    data = download_image(client, storage.presign_get(key, 60), allowed_hosts=[host], max_bytes=1 << 20, timeout=5)
    image = verify_image(data, expected_format="jpeg", width=48, height=32)
    info = storage.head(key)
    assert info is not None and info.size == image.size


def test_head_of_missing_key_is_none(endpoint: str, bucket: str) -> None:
    assert S3Storage(bucket, "p", endpoint_url=endpoint).head("acme/b/0-x/0.png") is None


def _client_without_retries(endpoint_url: str) -> object:
    config = Config(signature_version="s3v4", s3={"addressing_style": "path"}, retries={"max_attempts": 1})
    return boto3.client("s3", endpoint_url=endpoint_url, config=config)


def test_head_on_unreachable_endpoint_is_a_storage_error() -> None:
    endpoint_url = f"http://127.0.0.1:{free_port()}"
    storage = S3Storage("b", endpoint_url=endpoint_url, client=_client_without_retries(endpoint_url))
    with pytest.raises(StorageError) as info:
        storage.head("acme/b/0-x/0.png")
    assert "dummy-secret" not in str(info.value)


def test_head_denied_is_a_storage_error_not_missing() -> None:
    app = Flask(__name__)
    app.add_url_rule("/<path:_p>", "deny", lambda _p: ("", 403), methods=["HEAD", "GET"])
    with WsgiServer(app) as server:
        endpoint_url = server.url
        storage = S3Storage("b", endpoint_url=endpoint_url, client=_client_without_retries(endpoint_url))
        with pytest.raises(StorageError, match="403"):
            storage.head("acme/b/0-x/0.png")


def test_describe_hides_endpoint_credentials(endpoint: str) -> None:
    port = urlsplit(endpoint).port
    storage = S3Storage("b", "p/q", endpoint_url=f"http://user:hunter22@127.0.0.1:{port}")
    assert storage.describe() == f"s3://b/p/q at http://127.0.0.1:{port}"
    assert S3Storage("b").describe() == "s3://b"


@pytest.mark.parametrize("expires_in", [0, -1, 7 * 24 * 3600 + 1])
def test_presign_rejects_bad_expiry(expires_in: int) -> None:
    with pytest.raises(ValueError):
        S3Storage("b").presign_get("a/b.png", expires_in)


def test_presign_rejects_unsafe_keys() -> None:
    with pytest.raises(ValueError):
        S3Storage("b", "p").presign_put("../escape.png", "image/png", 60)


def test_exists_read_and_delete(endpoint: str, bucket: str, client: httpx.Client) -> None:
    storage = storage_from_url(f"s3://{bucket}/p", s3_endpoint_url=endpoint, secret_key="", public_url="")
    key = "acme/catalog/products.csv"
    assert storage.exists(key) is False and storage.read(key, 100) is None
    client.put(storage.presign_put(key, "text/csv", 60), content=b"sku\nA1\n",
               headers={"Content-Type": "text/csv"}).raise_for_status()
    assert storage.exists(key) is True and storage.read(key, 100) == b"sku\nA1\n"
    with pytest.raises(StorageError, match="exceeds 3 bytes"):
        storage.read(key, 3)
    storage.delete(key)
    storage.delete(key)  # deleting a missing key is not an error
    assert storage.exists(key) is False


def test_direct_upload_staging_then_verified_copy(endpoint: str, bucket: str, client: httpx.Client) -> None:
    storage = storage_from_url(f"s3://{bucket}/p", s3_endpoint_url=endpoint, secret_key="", public_url="")
    assert isinstance(storage, DirectUploads)
    final = object_key("acme", "b42", 0, "c", 0, "jpg")
    staging = staging_key("7b0c2a4e-1f2d-4c3b-9a8e-000000000001", "jpg")
    assert staging == "incoming/7b0c2a4e-1f2d-4c3b-9a8e-000000000001.jpg"
    data = jpeg_bytes(64, 40)
    # The provider's Content-Type is not bound to the URL: whatever it sends, the PUT lands.
    client.put(storage.presign_upload(staging, 300), content=data,
               headers={"Content-Type": "application/octet-stream"}).raise_for_status()
    got = storage.read_tagged(staging, 10_000)
    assert got is not None and got[0] == data
    sha = hashlib.sha256(data).hexdigest()
    assert storage.copy_verified(staging, final, etag=got[1], sha256=sha, content_type="image/jpeg")
    landed = storage.head(final)
    assert landed is not None and landed.content_type == "image/jpeg" and landed.sha256 == sha
    # The staging object changed after it was read (a late PUT): the copy is refused.
    client.put(storage.presign_upload(staging, 300), content=data[:100]).raise_for_status()
    assert not storage.copy_verified(staging, final, etag=got[1], sha256=sha, content_type="image/jpeg")
    storage.delete(staging)
    assert storage.read_tagged(staging, 10_000) is None
    assert not storage.copy_verified(staging, final, etag=got[1], sha256=sha, content_type="image/jpeg")


def test_local_storage_takes_no_direct_uploads(tmp_path: Path) -> None:
    local = storage_from_url(tmp_path.as_uri(), s3_endpoint_url=None, secret_key="k", public_url="http://x")
    assert not isinstance(local, DirectUploads)
