"""Download, verify and upload against a real HTTP server on loopback."""

from __future__ import annotations

import hashlib
import io
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from flask import Flask, Response, redirect, request
from PIL import Image
from werkzeug.wrappers import Response as BaseResponse

from orchestrator.api.local_storage import make_storage_blueprint
from orchestrator.netutil import free_port
from orchestrator.storage.images import (
    DisallowedHost,
    DownloadFailed,
    InvalidImage,
    TooLarge,
    UploadFailed,
    download_image,
    host_allowed,
    upload,
    verify_image,
)
from orchestrator.storage.local import LocalStorage
from tests.http_helpers import WsgiServer

CAP = 256 * 1024


def encode(fmt: str, width: int, height: int, noisy: bool = False) -> bytes:
    image = Image.effect_noise((width, height), 64).convert("RGB") if noisy else Image.new("RGB", (width, height))
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


IMAGES = {
    "ok.png": encode("PNG", 64, 48),
    "ok.jpg": encode("JPEG", 64, 48),
    "ok.webp": encode("WEBP", 64, 48),
    "wrong-size.png": encode("PNG", 32, 32),
    "corrupt.png": encode("PNG", 128, 128, noisy=True)[:3000],
    "corrupt.jpg": encode("JPEG", 128, 128, noisy=True)[:1500],
    "text.png": b"<html>not an image</html>",
    "anim.gif": encode("GIF", 64, 48),
}


def make_app(hits: Counter[str]) -> Flask:
    """Image routes that misbehave in each way a provider CDN can."""
    app = Flask(__name__)

    @app.before_request
    def count() -> None:
        hits[request.path] += 1

    @app.get("/img/<name>")
    def image(name: str) -> Response | tuple[str, int]:
        return Response(IMAGES[name], mimetype="image/png") if name in IMAGES else ("", 404)

    @app.get("/status/<int:code>")
    def status(code: int) -> tuple[str, int]:
        return "", code

    @app.get("/huge-declared")
    def huge_declared() -> Response:
        return Response(b"\0" * (CAP * 4), mimetype="image/png")

    @app.get("/huge-streamed")
    def huge_streamed() -> Response:
        # A generator body goes out chunked, with no Content-Length to refuse early.
        return Response((b"\0" * 65536 for _ in range(64)), mimetype="image/png")

    @app.get("/slow")
    def slow() -> bytes:
        time.sleep(2)
        return IMAGES["ok.png"]

    @app.get("/trickle")
    def trickle() -> Response:
        def drip() -> Iterator[bytes]:
            for _ in range(40):
                time.sleep(0.05)
                yield b"\0"

        return Response(drip(), mimetype="image/png")

    @app.get("/redirect/<path:target>")
    def redirect_to(target: str) -> BaseResponse:
        return redirect(target.replace("_", "/") if target.startswith("http") else f"/{target}", 302)

    @app.get("/loop")
    def loop() -> BaseResponse:
        return redirect("/loop", 302)

    @app.put("/flaky")
    def flaky() -> tuple[str, int]:
        return "", 503

    @app.put("/s3-denied")
    def s3_denied() -> tuple[str, int]:
        return "<Error><Code>SignatureDoesNotMatch</Code><StringToSign>x</StringToSign></Error>", 403

    return app


class Server:
    """The image routes plus a local storage blueprint, on one loopback port."""

    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.allowed = [f"127.0.0.1:{self.port}"]
        self.hits: Counter[str] = Counter()
        self.storage = LocalStorage(root, secret_key="s" * 32, public_url=self.base)
        app = make_app(self.hits)
        app.register_blueprint(make_storage_blueprint(self.storage))
        self.http = WsgiServer(app, self.port)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("objects"))
    yield srv
    srv.http.close()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5) as c:
        yield c


def fetch(server: Server, client: httpx.Client, path: str, timeout: float = 5) -> bytes:
    return download_image(client, server.base + path, allowed_hosts=server.allowed, max_bytes=CAP, timeout=timeout)


@pytest.mark.parametrize(
    ("name", "fmt", "ext"), [("ok.png", "png", "png"), ("ok.jpg", "jpeg", "jpg"), ("ok.webp", "webp", "webp")]
)
def test_download_and_verify_each_format(server: Server, client: httpx.Client, name: str, fmt: str, ext: str) -> None:
    data = fetch(server, client, f"/img/{name}")
    assert data == IMAGES[name]
    image = verify_image(data, expected_format=fmt, width=64, height=48)
    assert (image.width, image.height, image.ext, image.size) == (64, 48, ext, len(data))
    assert image.content_type == f"image/{'jpeg' if ext == 'jpg' else ext}"
    assert image.sha256 == hashlib.sha256(data).hexdigest()


def test_disallowed_host_makes_no_request(server: Server, client: httpx.Client) -> None:
    before = sum(server.hits.values())
    for url in (
        f"http://localhost:{server.port}/img/ok.png",
        f"http://127.0.0.1:{server.port + 1}/img/ok.png",
        f"ftp://127.0.0.1:{server.port}/img/ok.png",
        "file:///etc/passwd",
        f"http://user:pw@127.0.0.1:{server.port}/img/ok.png",
    ):
        with pytest.raises(DisallowedHost):
            download_image(client, url, allowed_hosts=server.allowed, max_bytes=CAP, timeout=5)
    assert sum(server.hits.values()) == before


def test_redirect_within_allow_list_is_followed(server: Server, client: httpx.Client) -> None:
    assert fetch(server, client, "/redirect/img/ok.png") == IMAGES["ok.png"]


def test_redirect_to_disallowed_host_is_refused(server: Server, client: httpx.Client) -> None:
    target = f"http:__localhost:{server.port}_img_wrong-size.png"
    with pytest.raises(DisallowedHost):
        fetch(server, client, f"/redirect/{target}")
    assert server.hits["/img/wrong-size.png"] == 0


def test_redirect_loop_gives_up(server: Server, client: httpx.Client) -> None:
    with pytest.raises(DownloadFailed, match="too many redirects") as info:
        fetch(server, client, "/loop")
    assert not info.value.transient


@pytest.mark.parametrize(("path", "message"), [("/huge-declared", "declared"), ("/huge-streamed", "body")])
def test_oversize_body_is_refused(server: Server, client: httpx.Client, path: str, message: str) -> None:
    with pytest.raises(TooLarge, match=message):
        fetch(server, client, path)


@pytest.mark.parametrize(
    ("path", "transient", "expired"),
    [
        ("/img/missing.png", False, True),
        ("/status/410", False, True),
        ("/status/503", True, False),
        ("/status/429", True, False),
        ("/status/403", False, False),
    ],
)
def test_bad_status_is_classified(
    server: Server, client: httpx.Client, path: str, transient: bool, expired: bool
) -> None:
    with pytest.raises(DownloadFailed) as info:
        fetch(server, client, path)
    assert (info.value.transient, info.value.expired) == (transient, expired)


def test_timeout_is_transient(server: Server, client: httpx.Client) -> None:
    with pytest.raises(DownloadFailed) as info:
        fetch(server, client, "/slow", timeout=0.3)
    assert info.value.transient


def test_trickling_body_hits_the_overall_deadline(server: Server, client: httpx.Client) -> None:
    started = time.monotonic()
    with pytest.raises(DownloadFailed, match="overall time limit") as info:
        fetch(server, client, "/trickle", timeout=0.5)
    assert info.value.transient
    assert time.monotonic() - started < 1.9


def test_connection_refused_is_transient(client: httpx.Client) -> None:
    port = free_port()
    with pytest.raises(DownloadFailed) as info:
        download_image(
            client, f"http://127.0.0.1:{port}/x.png", allowed_hosts=[f"127.0.0.1:{port}"], max_bytes=CAP, timeout=2
        )
    assert info.value.transient


@pytest.mark.parametrize(
    ("name", "kwargs", "reason"),
    [
        ("wrong-size.png", {"expected_format": "png", "width": 64, "height": 48}, "dimensions"),
        ("ok.png", {"expected_format": "jpeg", "width": 64, "height": 48}, "format"),
        ("ok.jpg", {"expected_format": "webp", "width": None, "height": None}, "format"),
        ("corrupt.png", {"expected_format": "png", "width": 128, "height": 128}, "decodable"),
        ("corrupt.jpg", {"expected_format": "jpg", "width": 128, "height": 128}, "decodable"),
        ("text.png", {"expected_format": None, "width": None, "height": None}, "decodable"),
        ("anim.gif", {"expected_format": None, "width": None, "height": None}, "decodable"),
        ("ok.png", {"expected_format": "png", "width": None, "height": None, "max_pixels": 100}, "pixels"),
    ],
)
def test_invalid_images_are_rejected(
    server: Server, client: httpx.Client, name: str, kwargs: dict[str, object], reason: str
) -> None:
    data = fetch(server, client, f"/img/{name}")
    with pytest.raises(InvalidImage, match=reason):
        verify_image(data, **kwargs)  # type: ignore[arg-type]


def test_unknown_expected_format_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        verify_image(IMAGES["ok.png"], expected_format="bmp", width=None, height=None)


def test_upload_to_presigned_url(server: Server, client: httpx.Client) -> None:
    data = IMAGES["ok.webp"]
    key = "acme/b1/0-up/0.webp"
    upload(client, server.storage.presign_put(key, "image/webp", 60), data, "image/webp", timeout=5)
    info = server.storage.head(key)
    assert info is not None and info.sha256 == hashlib.sha256(data).hexdigest()


def test_rejected_upload_never_reveals_the_signature(server: Server, client: httpx.Client) -> None:
    url = server.storage.presign_put("acme/b1/1-up/0.png", "image/png", 60)
    sig = url.rsplit("sig=", 1)[1]
    with pytest.raises(UploadFailed) as info:
        upload(client, url, IMAGES["ok.jpg"], "image/jpeg", timeout=5)
    assert (info.value.status, info.value.transient) == (403, False)
    assert sig not in str(info.value) and "sig=***" in str(info.value)


@pytest.mark.parametrize(("path", "status", "transient"), [("/flaky", 503, True), ("/s3-denied", 403, False)])
def test_upload_errors_are_classified(
    server: Server, client: httpx.Client, path: str, status: int, transient: bool
) -> None:
    url = f"{server.base}{path}?X-Amz-Signature=deadbeefcafe&X-Amz-Credential=AKIAEXAMPLE"
    with pytest.raises(UploadFailed) as info:
        upload(client, url, b"x", "image/png", timeout=5)
    assert (info.value.status, info.value.transient) == (status, transient)
    assert "deadbeefcafe" not in str(info.value) and "AKIAEXAMPLE" not in str(info.value)
    if status == 403:
        assert "SignatureDoesNotMatch" in str(info.value) and "StringToSign" not in str(info.value)


def test_upload_connection_refused_is_transient(client: httpx.Client) -> None:
    url = f"http://127.0.0.1:{free_port()}/storage/a.png?expires=1&sig=abcdef123456"
    with pytest.raises(UploadFailed) as info:
        upload(client, url, b"x", "image/png", timeout=2)
    assert info.value.transient and "abcdef123456" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://v3.fal.media/files/x.png", True),
        ("https://a.b.fal.media/x.png", True),
        ("https://fal.media/x.png", False),
        ("https://evilfal.media/x.png", False),
        ("https://im.runware.ai/image/x.jpg", True),
        ("https://im.runware.ai:8443/image/x.jpg", False),
        ("https://im.runware.ai.evil.com/x.jpg", False),
        ("https://evil.com/?u=https://im.runware.ai/", False),
        ("https://evil.com#@im.runware.ai/", False),
        ("https://im.runware.ai\\@evil.com/", False),
        ("http://127.0.0.1:8080/x", True),
        ("http://127.0.0.1/x", False),
        ("javascript:alert(1)", False),
    ],
)
def test_host_allow_list(url: str, allowed: bool) -> None:
    assert host_allowed(url, ["*.fal.media", "im.runware.ai", "127.0.0.1:8080"]) is allowed
