"""The local backend and its blueprint, served by a real HTTP server on loopback."""

from __future__ import annotations

import hashlib
import http.client
import io
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from flask import Flask
from PIL import Image

from orchestrator.api.local_storage import make_storage_blueprint
from orchestrator.netutil import free_port
from orchestrator.storage.local import LocalStorage, ObjectTooLarge, SignatureInvalid
from tests.http_helpers import WsgiServer

SECRET = "test-secret-key-0123456789abcdef"
MAX_BYTES = 64 * 1024


def png_bytes(width: int = 32, height: int = 24) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 90)).save(buf, "PNG")
    return buf.getvalue()


class Server:
    """A LocalStorage behind its blueprint, served by werkzeug in a thread."""

    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.root = root
        self.storage = LocalStorage(root, secret_key=SECRET, public_url=self.base, max_bytes=MAX_BYTES)
        app = Flask(__name__)
        app.register_blueprint(make_storage_blueprint(self.storage))
        self.http = WsgiServer(app, self.port)

    def past_storage(self) -> LocalStorage:
        """A twin whose clock is an hour behind, to mint already-expired URLs."""
        return LocalStorage(self.root, secret_key=SECRET, public_url=self.base, clock=lambda: time.time() - 3600)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("objects"))
    yield srv
    srv.http.close()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5) as c:
        yield c


def assert_problem(resp: httpx.Response | http.client.HTTPResponse, status: int) -> None:
    assert resp.status == status if isinstance(resp, http.client.HTTPResponse) else resp.status_code == status
    assert resp.headers["content-type"] == "application/problem+json"


def no_partial_files(root: Path) -> bool:
    return not any(p.name.endswith(".part") for p in root.rglob("*"))


def test_put_get_round_trip(server: Server, client: httpx.Client) -> None:
    key = "acme/b1/0-hero/0.png"
    data = png_bytes()
    put_url = server.storage.presign_put(key, "image/png", 60)
    assert put_url.startswith(f"{server.base}/storage/{key}?expires=")
    assert client.put(put_url, content=data, headers={"Content-Type": "image/png"}).status_code == 201

    resp = client.get(server.storage.presign_get(key, 60))
    assert resp.status_code == 200
    assert resp.content == data
    assert resp.headers["content-type"] == "image/png"
    assert resp.headers["x-content-type-options"] == "nosniff"

    info = server.storage.head(key)
    assert info is not None
    assert (info.size, info.content_type) == (len(data), "image/png")
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert no_partial_files(server.root)


def test_second_put_replaces_object(server: Server, client: httpx.Client) -> None:
    key = "acme/b1/1-again/0.png"
    for expected_status, data in ((201, b"first"), (200, b"second")):
        url = server.storage.presign_put(key, "image/png", 60)
        resp = client.put(url, content=data, headers={"Content-Type": "image/png; charset=binary"})
        assert resp.status_code == expected_status
    assert client.get(server.storage.presign_get(key, 60)).content == b"second"


def test_head_of_missing_object_is_none(server: Server) -> None:
    assert server.storage.head("acme/none/0-x/0.png") is None


def test_missing_object_is_404(server: Server, client: httpx.Client) -> None:
    resp = client.get(server.storage.presign_get("acme/b1/9-nope/0.png", 60))
    assert_problem(resp, 404)
    assert resp.json()["type"] == "https://orchestrator.dev/problems/storage-not-found"


def test_expired_urls_are_rejected(server: Server, client: httpx.Client) -> None:
    key = "acme/b1/2-expired/0.png"
    past = server.past_storage()
    resp = client.put(past.presign_put(key, "image/png", 60), content=b"x", headers={"Content-Type": "image/png"})
    assert_problem(resp, 403)
    assert "expired" in resp.json()["detail"]
    assert server.storage.head(key) is None

    server.storage.write(key, [b"exists"])
    assert_problem(client.get(past.presign_get(key, 60)), 403)


def _tamper(url: str, field: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    path = parts.path
    if field == "sig":
        query["sig"] = ("0" if query["sig"][0] != "0" else "1") + query["sig"][1:]
    elif field == "expires":
        query["expires"] = str(int(query["expires"]) + 3600)
    elif field == "key":
        path = path.replace("/0.png", "/1.png")
    elif field == "no-sig":
        del query["sig"]
    elif field == "bad-expires":
        query["expires"] = "-5"
    elif field == "unicode-sig":
        query["sig"] = "é" * 64
    elif field == "unicode-expires":
        query["expires"] = "²"
    return parts._replace(path=path, query="&".join(f"{k}={v}" for k, v in query.items())).geturl()


@pytest.mark.parametrize("field", ["sig", "expires", "key", "no-sig", "bad-expires", "unicode-sig", "unicode-expires"])
def test_tampered_put_urls_are_rejected(server: Server, client: httpx.Client, field: str) -> None:
    key = f"acme/b1/3-{field}/0.png"
    url = _tamper(server.storage.presign_put(key, "image/png", 60), field)
    resp = client.put(url, content=b"evil", headers={"Content-Type": "image/png"})
    assert_problem(resp, 403)
    assert resp.json()["type"] == "https://orchestrator.dev/problems/storage-forbidden"
    assert server.storage.head(key) is None
    assert server.storage.head(key.replace("/0.png", "/1.png")) is None


@pytest.mark.parametrize("field", ["sig", "expires", "key"])
def test_tampered_get_urls_are_rejected(server: Server, client: httpx.Client, field: str) -> None:
    key = f"acme/b1/4-{field}/0.png"
    server.storage.write(key, [b"secret image"])
    server.storage.write(key.replace("/0.png", "/1.png"), [b"other image"])
    resp = client.get(_tamper(server.storage.presign_get(key, 60), field))
    assert_problem(resp, 403)
    assert b"image" not in resp.content


def test_signature_binds_method_and_content_type(server: Server, client: httpx.Client) -> None:
    key = "acme/b1/5-bind/0.png"
    get_url = server.storage.presign_get(key, 60)
    assert_problem(client.put(get_url, content=b"x", headers={"Content-Type": "image/png"}), 403)

    put_url = server.storage.presign_put(key, "image/png", 60)
    assert_problem(client.put(put_url, content=b"<html>", headers={"Content-Type": "text/html"}), 403)
    assert_problem(client.put(put_url, content=b"x"), 403)
    server.storage.write(key, [b"x"])
    assert_problem(client.get(put_url), 403)


def test_verify_accepts_only_exact_tuples(server: Server) -> None:
    storage = server.storage
    expires = int(time.time()) + 60
    sig = storage.sign("PUT", "a/b.png", expires, "image/png")
    storage.verify("PUT", "a/b.png", str(expires), sig, "image/png")
    storage.verify("PUT", "a/b.png", str(expires), sig.upper(), "IMAGE/PNG")
    for args in (
        ("GET", "a/b.png", str(expires), sig, "image/png"),
        ("PUT", "a/c.png", str(expires), sig, "image/png"),
        ("PUT", "a/b.png", str(expires + 1), sig, "image/png"),
        ("PUT", "a/b.png", str(expires), sig, "image/jpeg"),
        ("PUT", "a/b.png", str(expires), sig[:-2], "image/png"),
        ("PUT", "a/b.png", None, sig, "image/png"),
    ):
        with pytest.raises(SignatureInvalid):
            storage.verify(*args)


def test_signatures_depend_on_the_secret(server: Server) -> None:
    other = LocalStorage(server.root, secret_key="another-secret", public_url=server.base)
    assert other.sign("GET", "a/b.png", 1) != server.storage.sign("GET", "a/b.png", 1)


def _raw_request(server: Server, method: str, path: str, body: bytes = b"") -> http.client.HTTPResponse:
    """Send `path` byte for byte; httpx would normalise the dot segments away."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request(method, path, body=body or None, headers={"Content-Type": "image/png"})
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp


@pytest.mark.parametrize(
    "raw_key",
    ["../outside.txt", "a/%2e%2e/%2e%2e/outside.txt", "%2e%2e%2foutside.txt", "a/..%2f..%2foutside.txt"],
)
@pytest.mark.parametrize("method", ["GET", "PUT"])
def test_path_traversal_is_rejected(server: Server, raw_key: str, method: str) -> None:
    outside = server.root.parent / "outside.txt"
    outside.write_bytes(b"top secret")
    decoded = raw_key.replace("%2e", ".").replace("%2f", "/")
    expires = int(time.time()) + 60
    # Even a correctly signed traversal key (which presign would refuse to mint) is refused.
    sig = server.storage.sign(method, decoded, expires, "image/png" if method == "PUT" else None)
    resp = _raw_request(server, method, f"/storage/{raw_key}?expires={expires}&sig={sig}", b"overwrite")
    assert_problem(resp, 400)
    assert outside.read_bytes() == b"top secret"
    with pytest.raises(ValueError):
        server.storage.presign_get(decoded, 60)


def test_symlink_out_of_root_is_refused(server: Server, client: httpx.Client) -> None:
    outside = server.root.parent / "linked-secret.png"
    outside.write_bytes(b"top secret")
    (server.root / "acme").mkdir(exist_ok=True)
    (server.root / "acme" / "link.png").symlink_to(outside)
    resp = client.get(server.storage.presign_get("acme/link.png", 60))
    assert_problem(resp, 400)
    assert b"top secret" not in resp.content


def test_oversize_body_with_content_length_is_rejected(server: Server, client: httpx.Client) -> None:
    key = "acme/b1/6-big/0.png"
    url = server.storage.presign_put(key, "image/png", 60)
    resp = client.put(url, content=b"\0" * (MAX_BYTES + 1), headers={"Content-Type": "image/png"})
    assert_problem(resp, 413)
    assert server.storage.head(key) is None


def test_oversize_chunked_body_is_rejected_while_streaming(server: Server, client: httpx.Client) -> None:
    key = "acme/b1/7-chunked/0.png"
    url = server.storage.presign_put(key, "image/png", 60)

    def body() -> Iterator[bytes]:
        for _ in range(8):
            yield b"\0" * (MAX_BYTES // 4)

    resp = client.put(url, content=body(), headers={"Content-Type": "image/png"})
    assert_problem(resp, 413)
    assert server.storage.head(key) is None
    assert no_partial_files(server.root)


def test_body_at_the_cap_is_accepted(server: Server, client: httpx.Client) -> None:
    key = "acme/b1/8-exact/0.png"
    url = server.storage.presign_put(key, "image/png", 60)
    resp = client.put(url, content=b"\1" * MAX_BYTES, headers={"Content-Type": "image/png"})
    assert resp.status_code == 201
    info = server.storage.head(key)
    assert info is not None and info.size == MAX_BYTES


def test_presign_rejects_non_positive_expiry(server: Server) -> None:
    with pytest.raises(ValueError):
        server.storage.presign_get("a/b.png", 0)


@pytest.mark.parametrize("key", ["acme/b1/10-dir", "acme/b1/10-dir/0.png/inner.png"])
def test_key_colliding_with_existing_objects_is_a_conflict(server: Server, client: httpx.Client, key: str) -> None:
    server.storage.write("acme/b1/10-dir/0.png", [b"x"])
    url = server.storage.presign_put(key, "image/png", 60)
    assert_problem(client.put(url, content=b"y", headers={"Content-Type": "image/png"}), 409)
    assert no_partial_files(server.root)


def test_exists_read_and_delete(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path, secret_key="s" * 20, public_url="http://127.0.0.1:9")
    assert storage.exists("acme/a.csv") is False and storage.read("acme/a.csv", 10) is None
    storage.write("acme/a.csv", [b"sku\nA1\n"])
    assert storage.exists("acme/a.csv") and storage.read("acme/a.csv", 10) == b"sku\nA1\n"
    assert storage.read("acme", 10) is None  # a folder is not an object
    with pytest.raises(ObjectTooLarge):
        storage.read("acme/a.csv", 3)
    storage.delete("acme/a.csv")
    storage.delete("acme/a.csv")
    assert not storage.exists("acme/a.csv")
    with pytest.raises(ValueError):
        storage.exists("../escape.csv")
