"""S3-compatible storage (AWS, MinIO, R2) through boto3 presigned URLs."""

from __future__ import annotations

import base64
import binascii
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from orchestrator.storage.base import ObjectInfo, StorageError, validate_key

# AWS caps SigV4 presigned URLs at 7 days.
MAX_EXPIRES_IN = 7 * 24 * 3600
_MISSING_CODES = {"404", "NoSuchKey", "NotFound"}


def parse_s3_url(url: str) -> tuple[str, str]:
    """Split `s3://bucket/prefix` into (bucket, prefix without slashes at either end)."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError("expected a storage URL of the form s3://bucket/prefix")
    if parts.query or parts.fragment or "@" in parts.netloc:
        raise ValueError("an s3:// storage URL takes no credentials, query or fragment")
    prefix = parts.path.strip("/")
    if prefix:
        validate_key(prefix)
    return parts.netloc, prefix


def _addressing_style(bucket: str, endpoint_url: str | None) -> str:
    # Custom endpoints (MinIO, R2, moto) rarely resolve virtual-host bucket names, and dotted
    # bucket names break TLS there. On AWS, "auto" presigns against the legacy global host,
    # which answers 307 for new buckets outside us-east-1; "virtual" uses the regional host.
    return "path" if endpoint_url or "." in bucket else "virtual"


def make_s3_client(bucket: str, endpoint_url: str | None) -> Any:
    """Build a boto3 S3 client; region and credentials come from the standard AWS sources."""
    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": _addressing_style(bucket, endpoint_url)},
        # Newer botocore adds CRC checksums by default, which several S3-compatible
        # servers reject; only send them where the API requires it.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        connect_timeout=5,
        read_timeout=30,
        retries={"max_attempts": 3, "mode": "standard"},
    )
    return boto3.client("s3", endpoint_url=endpoint_url, config=config)


class S3Storage:
    """Objects in one bucket under an optional prefix."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None, client: Any = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self._client = client if client is not None else make_s3_client(bucket, endpoint_url)

    @classmethod
    def from_url(cls, url: str, *, endpoint_url: str | None = None) -> S3Storage:
        """Build from `s3://bucket/prefix`."""
        bucket, prefix = parse_s3_url(url)
        return cls(bucket, prefix, endpoint_url=endpoint_url)

    def describe(self) -> str:
        """Return a description of the backend that is safe to log."""
        where = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        if not self.endpoint_url:
            return where
        endpoint = urlsplit(self.endpoint_url)
        port = f":{endpoint.port}" if endpoint.port else ""
        # Rebuilt from parts so any userinfo in the endpoint is dropped.
        return f"{where} at {endpoint.scheme}://{endpoint.hostname}{port}"

    def full_key(self, key: str) -> str:
        """Return the bucket key for a logical key (the prefix applied)."""
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def presign_put(self, key: str, content_type: str, expires_in: int) -> str:
        """Return a URL accepting one PUT of `key`; the PUT must send `content_type`."""
        params = {"Bucket": self.bucket, "Key": self.full_key(key), "ContentType": content_type}
        return self._presign("put_object", params, expires_in)

    def presign_get(self, key: str, expires_in: int) -> str:
        """Return a URL serving `key` to GET for `expires_in` seconds."""
        return self._presign("get_object", {"Bucket": self.bucket, "Key": self.full_key(key)}, expires_in)

    def _presign(self, operation: str, params: dict[str, str], expires_in: int) -> str:
        if not 0 < expires_in <= MAX_EXPIRES_IN:
            raise ValueError(f"expires_in must be between 1 and {MAX_EXPIRES_IN} seconds")
        try:
            url: str = self._client.generate_presigned_url(operation, Params=params, ExpiresIn=expires_in)
        except BotoCoreError as exc:
            # e.g. NoCredentialsError; its message names no secret.
            raise StorageError(f"cannot presign {operation}: {type(exc).__name__}") from None
        return url

    def presign_upload(self, key: str, expires_in: int) -> str:
        """Return a URL accepting one PUT of `key` with any Content-Type (see DirectUploads)."""
        return self._presign("put_object", {"Bucket": self.bucket, "Key": self.full_key(key)}, expires_in)

    def head(self, key: str) -> ObjectInfo | None:
        """Return size and content type via HEAD Object, or None if the key is absent."""
        resp = self._head(key, ChecksumMode="ENABLED")
        if resp is None:
            return None
        return ObjectInfo(
            key=key,
            size=int(resp.get("ContentLength", 0)),
            content_type=resp.get("ContentType"),
            sha256=_sha256_hex(resp.get("ChecksumSHA256")),
        )

    def exists(self, key: str) -> bool:
        """HEAD the object (without checksum mode)."""
        return self._head(key) is not None

    def _head(self, key: str, **options: Any) -> dict[str, Any] | None:
        """HEAD Object's answer, or None if the key is absent; any other failure is a StorageError."""
        try:
            resp: dict[str, Any] = self._client.head_object(Bucket=self.bucket, Key=self.full_key(key), **options)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _MISSING_CODES:
                return None
            raise StorageError(f"HEAD {self.describe()}/{key} failed: {code or 'error'}") from None
        except BotoCoreError as exc:
            raise StorageError(f"HEAD {self.describe()}/{key} failed: {type(exc).__name__}") from None
        return resp

    def read(self, key: str, max_bytes: int) -> bytes | None:
        """GET the object, refusing one above `max_bytes` before reading its body."""
        got = self.read_tagged(key, max_bytes)
        return None if got is None else got[0]

    def read_tagged(self, key: str, max_bytes: int) -> tuple[bytes, str] | None:
        """GET the object and its ETag, refusing one above `max_bytes` before reading its body."""
        try:
            resp = self._client.get_object(Bucket=self.bucket, Key=self.full_key(key))
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _MISSING_CODES or code == "NoSuchKey":
                return None
            raise StorageError(f"GET {self.describe()}/{key} failed: {code or 'error'}") from None
        except BotoCoreError as exc:
            raise StorageError(f"GET {self.describe()}/{key} failed: {type(exc).__name__}") from None
        body = resp["Body"]
        try:
            if int(resp.get("ContentLength", 0)) > max_bytes:
                raise StorageError(f"object exceeds {max_bytes} bytes")
            data: bytes = body.read(max_bytes + 1)
        finally:
            body.close()
        if len(data) > max_bytes:
            raise StorageError(f"object exceeds {max_bytes} bytes")
        return data, str(resp.get("ETag", ""))

    def copy_verified(self, source: str, target: str, *, etag: str, sha256: str, content_type: str) -> bool:
        """CopyObject under `If-Match: etag`, the store computing the copy's SHA-256 (see DirectUploads).

        The precondition stops a PUT that replaced the source after it was read; the checksum
        proves the copy's bytes on servers that ignore the precondition (moto does).
        """
        try:
            resp = self._client.copy_object(
                Bucket=self.bucket, Key=self.full_key(target), CopySource={"Bucket": self.bucket,
                                                                           "Key": self.full_key(source)},
                CopySourceIfMatch=etag, MetadataDirective="REPLACE", ContentType=content_type,
                ChecksumAlgorithm="SHA256")
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _MISSING_CODES or code in ("PreconditionFailed", "412"):
                return False
            raise StorageError(f"COPY {self.describe()}/{source} failed: {code or 'error'}") from None
        except BotoCoreError as exc:
            raise StorageError(f"COPY {self.describe()}/{source} failed: {type(exc).__name__}") from None
        result = resp.get("CopyObjectResult", {})
        copied = _sha256_hex(result.get("ChecksumSHA256"))
        # Without a checksum (an older S3-compatible server), an unchanged single-part ETag will do.
        return copied == sha256 or (copied is None and result.get("ETag") == etag)

    def delete(self, key: str) -> None:
        """DELETE the object (S3 answers success for a missing key too)."""
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self.full_key(key))
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"DELETE {self.describe()}/{key} failed: {type(exc).__name__}") from None


def _sha256_hex(checksum: str | None) -> str | None:
    """Turn S3's base64 SHA-256 checksum into hex; multipart (`...-N`) checksums are not whole-object."""
    if not checksum or "-" in checksum:
        return None
    try:
        raw = base64.b64decode(checksum, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw.hex() if len(raw) == 32 else None
