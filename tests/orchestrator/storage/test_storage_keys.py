"""Object keys, key validation and backend selection."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.storage.base import Storage, object_key, sanitize_segment, validate_key
from orchestrator.storage.factory import storage_from_url
from orchestrator.storage.local import LocalStorage
from orchestrator.storage.s3 import S3Storage, parse_s3_url


def test_object_key_layout() -> None:
    assert object_key("acme", "b_123", 7, "hero shot", 0, "PNG") == "acme/b_123/7-hero_shot/0.png"
    assert object_key("acme", "b1", 0, "x", 2, ".jpg", prefix="/nightly/") == "nightly/acme/b1/0-x/2.jpg"


@pytest.mark.parametrize(
    ("custom_id", "segment"),
    [
        ("../../etc/passwd", "_etc_passwd"),
        ("a/b\\c", "a_b_c"),
        ("..", "_"),
        ("", "_"),
        ("tab\there\x00nul", "tab_here_nul"),
        ("a...b", "a_b"),
        ("ünïcode-ok.v2", "_n_code-ok.v2"),
        (".hidden", "hidden"),
    ],
)
def test_custom_id_is_sanitised_to_one_safe_segment(custom_id: str, segment: str) -> None:
    key = object_key("t", "b", 3, custom_id, 0, "webp")
    assert key == f"t/b/3-{segment}/0.webp"
    assert validate_key(key) == key


def test_custom_id_length_is_bounded() -> None:
    assert len(sanitize_segment("x" * 5000)) == 64
    assert not sanitize_segment("a" * 63 + ".").endswith(".")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tenant": "../x"},
        {"tenant": ""},
        {"batch_id": "a/b"},
        {"position": -1},
        {"index": -1},
        {"ext": "p/ng"},
        {"ext": ""},
        {"prefix": "../up"},
    ],
)
def test_object_key_rejects_unsafe_parts(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {
        "tenant": "t",
        "batch_id": "b",
        "position": 0,
        "custom_id": "c",
        "index": 0,
        "ext": "png",
    }
    args.update(kwargs)
    with pytest.raises(ValueError):
        object_key(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize("key", ["", "/abs", "a//b", "a/../b", "..", "a/./b", "a/.hidden", "a\\b", "a/b\n", "x" * 1025])
def test_validate_key_rejects(key: str) -> None:
    with pytest.raises(ValueError):
        validate_key(key)


def test_factory_builds_local_storage(tmp_path: Path) -> None:
    storage = storage_from_url(
        f"file://{tmp_path}/objects", s3_endpoint_url=None, secret_key="k" * 32, public_url="http://h:1/"
    )
    assert isinstance(storage, LocalStorage)
    assert isinstance(storage, Storage)
    assert storage.root == (tmp_path / "objects").resolve()
    assert "k" * 32 not in storage.describe()


def test_factory_builds_s3_storage() -> None:
    storage = storage_from_url(
        "s3://bucket/a/b/", s3_endpoint_url="http://127.0.0.1:9000", secret_key="", public_url=""
    )
    assert isinstance(storage, S3Storage)
    assert isinstance(storage, Storage)
    assert (storage.bucket, storage.prefix) == ("bucket", "a/b")
    assert storage.describe() == "s3://bucket/a/b at http://127.0.0.1:9000"


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/x",
        "gs://bucket",
        "file://relative/dir",
        "file:relative",
        "file:///a/../b",
        "s3://",
        "s3://user:pw@bucket/p",
        "s3://bucket/a/../b",
        "",
    ],
)
def test_factory_rejects_other_urls(url: str) -> None:
    with pytest.raises(ValueError):
        storage_from_url(url, s3_endpoint_url=None, secret_key="k" * 32, public_url="http://h")


def test_local_storage_needs_a_secret(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        storage_from_url(f"file://{tmp_path}", s3_endpoint_url=None, secret_key="", public_url="http://h")


def test_parse_s3_url_without_prefix() -> None:
    assert parse_s3_url("s3://bucket") == ("bucket", "")
