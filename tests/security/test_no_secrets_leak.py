"""No secret is ever printed (issue 9, defect 5).

A real batch runs through a real `orchestrator api` (gunicorn), worker and beat, against both
sandboxes, with distinctive secrets: the API key, both provider keys, ORCH_SECRET_KEY and every
callback token derived from it. Then every log line (JSON and text formats), every API answer
and problem document, /metrics and every stored row of jobs, events and deliveries is searched
for each secret, raw and percent-encoded once and twice (httpx logs the fal submit URL with the
callback URL, token included, as an encoded query value).
"""

from __future__ import annotations

import time
import uuid
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.models import Batch, Delivery, Job, JobEvent
from orchestrator.netutil import free_port
from orchestrator.sandbox import Faults
from orchestrator.webhook_urls import attempt_token
from tests.conftest import StackFactory, make_key

pytestmark = pytest.mark.slow


def _forms(secret: str) -> set[str]:
    once = quote(secret, safe="")
    return {secret, once, quote(once, safe="")}


def _rows(sessions: sessionmaker[Session]) -> list[str]:
    texts = []
    with sessions() as s:
        for model in (Batch, Job, JobEvent, Delivery):
            for row in s.scalars(sa.select(model)):
                values: dict[str, Any] = {c.key: getattr(row, c.key) for c in sa.inspect(model).column_attrs}
                texts.append(f"{model.__name__} {values!r} " + (
                    row.body.decode(errors="replace") if isinstance(row, Delivery) else ""))
    return texts


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_no_secret_in_any_log_answer_metric_or_stored_row(make_stack: StackFactory, sessions: sessionmaker[Session],
                                                          monkeypatch: pytest.MonkeyPatch, log_format: str) -> None:
    tag = uuid.uuid4().hex[:12]
    fal_key, runware_key = f"falid-{tag}:falsecret-{tag}", f"rwkey-{tag}-secret"
    secret_key = f"orch-secret-{tag}-0123456789"
    monkeypatch.setenv("FAL_KEY", fal_key)  # the sandboxes accept these keys only
    monkeypatch.setenv("RUNWARE_API_KEY", runware_key)
    api_url = f"http://127.0.0.1:{free_port()}"
    env = {"ORCH_SECRET_KEY": secret_key, "FAL_KEY": fal_key, "RUNWARE_API_KEY": runware_key,
           "ORCH_PUBLIC_URL": api_url, "ORCH_API_URL": api_url, "ORCH_LOG_JSON": str(log_format == "json").lower()}
    # Some trouble on the way, so error paths print too: an nginx 503 on a submit, repeated webhooks.
    noisy = Faults(submit_503_rate=1.0, submit_5xx_request_id_rate=0.0, submit_fault_budget=1,
                   webhook_duplicate_rate=1.0)
    stack = make_stack(env=env, fal_faults=noisy, runware_faults=Faults(webhook_duplicate_rate=1.0))
    stack.start_api(int(api_url.rsplit(":", 1)[1]))
    stack.start_worker("w1")
    stack.start_beat()
    api_key = make_key(sessions, "acme")
    answers: list[str] = []
    client = httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=30)
    items = [{"custom_id": f"f{i}", "model": "fal-ai/flux/dev", "prompt": "a koi pond", "num_images": 2}
             for i in range(2)] + [{"custom_id": f"r{i}", "model": "runware:100@1", "prompt": "a koi pond"}
                                   for i in range(2)]
    created = client.post("/v1/batches", json={"items": items})
    answers.append(created.text)
    batch_id = created.json()["id"]
    deadline = time.monotonic() + 120
    while client.get(f"/v1/batches/{batch_id}").json()["state"] != "succeeded":
        assert time.monotonic() < deadline, stack.logs()
        time.sleep(0.3)

    jobs = client.get(f"/v1/batches/{batch_id}/jobs", params={"limit": 100}).json()["data"]
    for path in [f"/v1/batches/{batch_id}", f"/v1/batches/{batch_id}/jobs", f"/v1/batches/{batch_id}/results",
                 "/metrics", *(f"/v1/jobs/{j['id']}" for j in jobs), f"/v1/jobs/{uuid.uuid4()}", "/v1/nowhere"]:
        answers.append(client.get(path).text)
    answers.append(httpx.get(f"{api_url}/v1/batches", headers={"Authorization": f"Bearer {api_key}x"}).text)
    fal_job = next(j for j in jobs if j["provider"] == "fal")
    rw_job = next(j for j in jobs if j["provider"] == "runware")
    token = attempt_token(secret_key, uuid.UUID(rw_job["id"]), 1)
    answers.append(httpx.post(f"{api_url}/webhooks/fal/{fal_job['id']}/1?token=wrong-{tag}", json={}).text)
    answers.append(httpx.post(f"{api_url}/webhooks/runware/{rw_job['id']}/1?token={token}",
                              json={"data": [{"taskUUID": str(uuid.uuid4())}]}).text)
    time.sleep(1.0)  # let the last lines reach the log files
    for proc in list(stack.procs):
        stack.kill(proc)

    with sessions() as s:
        attempts = {(j.id, j.attempt) for j in s.scalars(sa.select(Job))}
    tokens = [attempt_token(secret_key, job_id, n) for job_id, last in attempts for n in range(1, last + 2)]
    assert max(last for _, last in attempts) >= 2  # the 503 made a second attempt: both tokens are checked
    secrets = {"API key": api_key, "fal key": fal_key, "fal key secret": fal_key.split(":")[1],
               "Runware key": runware_key, "ORCH_SECRET_KEY": secret_key,
               **{f"callback token {i}": t for i, t in enumerate(tokens)}}
    logs = {p.name: p.read_text(errors="replace") for p in stack.tmp.glob("*.log")}
    sources = {**logs, **{f"answer {i}": a for i, a in enumerate(answers)},
               **{f"row {i}": r for i, r in enumerate(_rows(sessions))}}
    leaks = [f"{name} in {where}: ...{text[max(0, text.find(form) - 150):text.find(form) + 40]!r}"
             for name, secret in secrets.items() for form in _forms(secret)
             for where, text in sources.items() if form in text]
    assert not leaks, "\n".join(leaks[:10])
    # The scan saw the lines that used to leak: httpx's request lines with the encoded callback URL.
    worker_log = "".join(text for name, text in logs.items() if name.startswith("w1"))
    assert "fal_webhook=http%3A%2F%2F" in worker_log and "%3Ftoken%3D***" in worker_log
    assert ('"msg": "HTTP Request: POST' in worker_log) == (log_format == "json")


def test_redaction_covers_encoded_urls_tracebacks_extras_and_url_passwords() -> None:
    import io
    import logging

    from orchestrator.log import JsonFormatter, RedactingFilter, TextFormatter
    from orchestrator.redact import redact_text
    from orchestrator.settings import Settings

    token = "T0ken-abcdefghijklmnop"
    url = f"http://127.0.0.1:8000/webhooks/fal/j/1?token={token}"
    once = quote(url, safe="")
    for text in (url, f"?fal_webhook={once}", f"?outer={quote(once, safe='')}&x=1", f'"webhookURL": "{url}"'):
        assert token not in redact_text(text), text
    assert redact_text(f"?fal_webhook={once}&other=1").endswith("%3Ftoken%3D***&other=1")
    settings = Settings(database_url="postgresql://u:pg%40pw-secret@db/x", broker_url="redis://:redis-pw-secret@r/0")
    assert {"pg@pw-secret", "pg%40pw-secret", "redis-pw-secret"} <= set(settings.secrets())
    for formatter in (JsonFormatter(), TextFormatter("%(message)s")):
        out = io.StringIO()
        handler = logging.StreamHandler(out)
        handler.addFilter(RedactingFilter(("redis-pw-secret",)))
        handler.setFormatter(formatter)
        log = logging.getLogger(f"redaction-test-{id(formatter)}")
        log.addHandler(handler)
        log.propagate = False
        try:
            raise RuntimeError(f"failed calling {url} with redis://:redis-pw-secret@r/0")
        except RuntimeError:
            log.exception("boom %s", once, extra={"detail": {"urls": [url]}})
        log.removeHandler(handler)
        printed = out.getvalue()
        assert "Traceback" in printed and "boom" in printed
        assert token not in printed and "redis-pw-secret" not in printed, printed
