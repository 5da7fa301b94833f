"""No SSRF: client callbacks and provider image downloads never reach internal addresses.

Refused at intake (a literal address, or any address a name resolves to) and again when
connecting (the address actually used), so DNS rebinding cannot steer a connection inside.
Loopback only: internal targets are never connected to, and names resolve through an
injected resolver (no DNS traffic, no /etc/hosts edits).
"""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from flask import Flask
from PIL import Image
from sqlalchemy.orm import Session, sessionmaker

from orchestrator import netpolicy
from orchestrator.db import session_scope, utcnow
from orchestrator.models import Batch, BatchState
from orchestrator.netpolicy import AddressPolicy, AddressRefused, guarded_client
from orchestrator.settings import Settings
from orchestrator.storage.images import DisallowedHost, download_image
from tests.conftest import StackFactory, make_key
from tests.http_helpers import Answer, Call, LoopbackServer
from tests.stack import CallbackReceiver
from workers.context import Context
from workers.notify import CallbackFailed, notify

ITEM = {"model": "fal-ai/flux/schnell", "prompt": "a red fox"}
INTERNAL = [
    "http://127.0.0.1:9/hook", "http://127.1/hook", "http://2130706433/hook", "http://0x7f.0.0.1/hook",
    "http://localhost:9/hook", "http://10.0.0.8/hook", "http://172.16.5.4/hook", "http://192.168.1.1/hook",
    "http://169.254.169.254/latest/meta-data/", "http://100.64.0.1/hook", "http://0.0.0.0/hook",
    "http://224.0.0.1/hook", "http://240.0.0.1/hook", "http://[::1]/hook", "http://[::]/hook",
    "http://[fd00::1]/hook", "http://[fe80::1]/hook", "http://[ff02::1]/hook", "http://[::ffff:127.0.0.1]/hook",
    "http://[::ffff:a9fe:a9fe]/hook", "http://[2002:7f00:1::]/hook", "http://[64:ff9b::a9fe:a9fe]/hook",
    "http://[::7f00:1]/hook",
]
PUBLIC = "http://93.184.216.34/hook"  # a literal public address: accepted at intake, never connected to here


def _refused(resp: Any, field: str = "callback_url") -> str:
    assert resp.status_code == 422, resp.text
    errors = resp.json()["errors"]
    assert errors[0]["field"] == field and errors[0]["message"].startswith("refused: "), errors
    return str(errors[0]["message"])


@pytest.mark.parametrize("url", INTERNAL)
def test_intake_refuses_internal_callback_urls(http: httpx.Client, sessions: sessionmaker[Session], url: str) -> None:
    _refused(http.post("/v1/batches", json={"callback_url": url, "items": [ITEM]}))
    _refused(http.post("/v1/batches", params={"callback_url": url}, content='{"model": "flux-schnell", '
                       '"prompt": "a red fox"}\n', headers={"Content-Type": "application/x-ndjson"}))
    schedule = {"name": "n", "cron": "0 2 * * *", "template": {"callback_url": url, "items": [ITEM]}}
    _refused(http.post("/v1/schedules", json=schedule), "template.callback_url")
    with sessions() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Batch)) == 0


def test_intake_message_names_the_address_kind(http: httpx.Client) -> None:
    message = _refused(http.post("/v1/batches", json={"callback_url": "http://169.254.169.254/", "items": [ITEM]}))
    assert "169.254.169.254 a link-local address" in message
    message = _refused(http.post("/v1/batches", json={"callback_url": "http://[::ffff:10.0.0.1]/", "items": [ITEM]}))
    assert "private (as IPv6)" in message


def test_public_callback_and_patching_a_schedule_to_an_internal_one(http: httpx.Client) -> None:
    assert http.post("/v1/batches", json={"callback_url": PUBLIC, "items": [ITEM]}).status_code == 201
    created = http.post("/v1/schedules", json={"name": "n", "cron": "0 2 * * *",
                                               "template": {"callback_url": PUBLIC, "items": [ITEM]}})
    assert created.status_code == 201
    patched = http.patch(f"/v1/schedules/{created.json()['id']}",
                         json={"template": {"callback_url": "http://10.1.1.1/", "items": [ITEM]}})
    _refused(patched, "template.callback_url")


@pytest.fixture
def private_app(settings: Settings, sessions: sessionmaker[Session]) -> Iterator[Flask]:
    from orchestrator.api import create_app

    app = create_app(settings.model_copy(update={"callback_allow_private": True}))
    yield app
    app.extensions["orchestrator"].engine.dispose()


@pytest.mark.committed
def test_allow_private_lets_loopback_through_but_never_metadata(private_app: Flask, headers: dict[str, str]) -> None:
    client = private_app.test_client()
    for url in ("http://127.0.0.1:9/hook", "http://10.0.0.8/hook", "http://[::1]/hook"):
        assert client.post("/v1/batches", json={"callback_url": url, "items": [ITEM]}, headers=headers).status_code \
            == 201, url
    for url in ("http://169.254.169.254/", "http://[fe80::1]/", "http://224.0.0.1/", "http://0.0.0.0/"):
        resp = client.post("/v1/batches", json={"callback_url": url, "items": [ITEM]}, headers=headers)
        assert resp.status_code == 422, url


def test_names_are_judged_by_every_address_they_resolve_to() -> None:
    answers = {"public.test": ["93.184.216.34"], "mixed.test": ["93.184.216.34", "10.0.0.1"],
               "inside.test": ["fd00::5"], "rebind.test": ["127.0.0.1"]}

    def resolver(host: str, port: int) -> list[str]:
        if host not in answers:
            raise OSError("no such name")
        return answers[host]

    policy = AddressPolicy(resolver=resolver)
    netpolicy.check_url("https://public.test/hook", policy)
    for url, reason in (("http://mixed.test/", "resolves to 10.0.0.1, a private address"),
                        ("http://inside.test/", "a private address"), ("http://rebind.test/", "loopback"),
                        ("http://nowhere.test/", "does not resolve"), ("ftp://public.test/", r"http\(s\)")):
        with pytest.raises(AddressRefused, match=reason):
            netpolicy.check_url(url, policy)


# ---- at send time: the address actually connected to ----

class _Context(Context):
    """A worker context whose guarded clients resolve names with the test's resolver."""

    def __init__(self, settings: Settings, resolver: netpolicy.Resolver):
        super().__init__(settings)
        self._resolver = resolver

    @property
    def callback_http(self) -> httpx.Client:  # type: ignore[override]
        return guarded_client(AddressPolicy(self.settings.callback_allow_private, self._resolver))


def _finished_batch(sessions: sessionmaker[Session], url: str) -> uuid.UUID:
    with session_scope(sessions) as s:
        batch = Batch(tenant="acme", name="b", lane="interactive", callback_url=url, metadata_={}, total=0,
                      state=BatchState.succeeded, created_at=utcnow(), completed_at=utcnow(), completion_round=1)
        s.add(batch)
        s.flush()
        return batch.id


@pytest.mark.committed
def test_dns_rebinding_at_send_time_is_refused_without_connecting(settings: Settings,
                                                                   sessions: sessionmaker[Session]) -> None:
    receiver = CallbackReceiver()
    try:
        port = int(receiver.url.split(":")[2].split("/")[0])
        # Intake saw a public address for this name; by send time it points at loopback.
        batch_id = _finished_batch(sessions, f"http://hooks.rebind.test:{port}/hooks/batch")
        c = _Context(settings, lambda host, p: ["127.0.0.1"])
        try:
            assert notify(c, batch_id).startswith("refused: hooks.rebind.test resolves to 127.0.0.1, a loopback")
        finally:
            c.close()
        assert receiver.calls == []
        with sessions() as s:
            assert s.get(Batch, batch_id).notified_round == 1  # not retried forever
    finally:
        receiver.close()


@pytest.mark.committed
def test_send_connects_to_the_vetted_address_and_keeps_the_host_header(settings: Settings,
                                                                       sessions: sessionmaker[Session]) -> None:
    receiver = CallbackReceiver()
    try:
        port = int(receiver.url.split(":")[2].split("/")[0])
        batch_id = _finished_batch(sessions, f"http://hooks.dev.test:{port}/hooks/batch")
        seen: list[str] = []

        def resolver(host: str, p: int) -> list[str]:
            seen.append(host)
            return ["127.0.0.1"]

        c = _Context(settings.model_copy(update={"callback_allow_private": True}), resolver)
        try:
            assert notify(c, batch_id) == "sent"
        finally:
            c.close()
        assert seen == ["hooks.dev.test"] and len(receiver.calls) == 1
        assert receiver.calls[0][0]["host"] == f"hooks.dev.test:{port}"
    finally:
        receiver.close()


# ---- the store step's downloads ----

class _ImageServer(LoopbackServer):
    """Serves one PNG, or a redirect, on loopback."""

    def __init__(self) -> None:
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), "red").save(buf, "PNG")
        self._png = buf.getvalue()
        super().__init__(self._serve)

    @property
    def hosts(self) -> list[str]:
        return [call.header("Host") or "" for call in self.calls]

    def _serve(self, call: Call) -> Answer:
        metadata = {"Location": "http://169.254.169.254/latest/meta-data/"}
        if call.method == "POST":  # a callback endpoint that redirects to the metadata service
            return Answer(307, headers=metadata)
        if call.path.startswith("/redirect"):
            return Answer(302, headers=metadata)
        return Answer(200, self._png, {"Content-Type": "image/png"})


@pytest.fixture
def image_server() -> Iterator[_ImageServer]:
    server = _ImageServer()
    yield server
    server.close()


def test_allowed_download_host_resolving_inside_is_refused(image_server: _ImageServer) -> None:
    allowed = [f"cdn.provider.test:{image_server.port}", f"127.0.0.1:{image_server.port}", "169.254.169.254"]
    kw: dict[str, Any] = {"allowed_hosts": allowed, "max_bytes": 1 << 20, "timeout": 10}
    with guarded_client(AddressPolicy(resolver=lambda h, p: ["127.0.0.1"])) as client:
        for url in (f"http://cdn.provider.test:{image_server.port}/a.png", f"http://127.0.0.1:{image_server.port}/a"):
            with pytest.raises(DisallowedHost, match="loopback"):
                download_image(client, url, **kw)
    assert image_server.hosts == []
    with guarded_client(AddressPolicy(True, resolver=lambda h, p: ["127.0.0.1"])) as client:
        data = download_image(client, f"http://cdn.provider.test:{image_server.port}/a.png", **kw)
        assert data.startswith(b"\x89PNG") and image_server.hosts == [f"cdn.provider.test:{image_server.port}"]
        # Even with private addresses allowed, a redirect to the metadata service is not followed there.
        with pytest.raises(DisallowedHost, match="link-local"):
            download_image(client, f"http://cdn.provider.test:{image_server.port}/redirect", **kw)


@pytest.mark.slow
def test_worker_without_the_settings_refuses_loopback_downloads_and_callbacks(
        make_stack: StackFactory, sessions: sessionmaker[Session], tmp_path: Path) -> None:
    receiver = CallbackReceiver()
    try:
        # The API accepts the loopback callback (local-development setting); the worker does not
        # have the settings, so it must neither download from the loopback sandbox nor call back.
        stack = make_stack(api_env={"ORCH_CALLBACK_ALLOW_PRIVATE": "true"})
        stack.start_worker("w1", extra_env={"ORCH_CALLBACK_ALLOW_PRIVATE": "false",
                                            "ORCH_DOWNLOAD_ALLOW_PRIVATE": "false"})
        client = stack.client(make_key(sessions, "acme"))
        created = client.post("/v1/batches", json={"callback_url": receiver.url, "items": [ITEM]})
        assert created.status_code == 201, created.text
        batch = stack.wait_batch(client, created.json()["id"], timeout=120)
        assert batch["state"] == "failed", stack.logs()
        job = client.get(f"/v1/batches/{batch['id']}/jobs").json()["data"][0]
        assert job["error_code"] == "disallowed_host" and "loopback" in job["error_message"], job
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with sessions() as s:
                row = s.get(Batch, uuid.UUID(batch["id"]))
                if row is not None and row.notified_round >= row.completion_round >= 1:
                    break
            time.sleep(0.2)
        else:
            raise AssertionError(f"callback never handled\n{stack.logs()}")
        assert receiver.calls == []
    finally:
        receiver.close()


@pytest.mark.committed
def test_a_callback_redirect_is_not_followed(settings: Settings, sessions: sessionmaker[Session],
                                             image_server: _ImageServer) -> None:
    batch_id = _finished_batch(sessions, f"http://127.0.0.1:{image_server.port}/hook")
    seen: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        seen.append(host)  # the redirect target would be looked up here, were it followed
        return [host]

    c = _Context(settings.model_copy(update={"callback_allow_private": True}), resolver)
    try:
        with pytest.raises(CallbackFailed, match="answered 307"):
            notify(c, batch_id)
    finally:
        c.close()
    assert image_server.hosts == [f"127.0.0.1:{image_server.port}"] and seen == []
