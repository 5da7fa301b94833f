"""The provider webhook URL: built once, read one way (the receiver's route, a recorded URL)."""

from __future__ import annotations

import uuid

import pytest

from orchestrator import webhook_urls
from orchestrator.webhook_urls import WebhookTarget

JOB = uuid.UUID("0b6b8a8e-56a4-4c1c-9d0e-2d8f0f6c2a11")


def test_a_built_url_reads_back_with_its_token() -> None:
    url = webhook_urls.webhook_url("https://orch.example/", "runware", JOB, 3, "secret")
    token = webhook_urls.attempt_token("secret", JOB, 3)
    assert url == f"https://orch.example/webhooks/runware/{JOB}/3?token={token}"
    found = webhook_urls.parse(url)
    assert found == WebhookTarget("runware", JOB, 3)
    assert webhook_urls.token_matches("secret", found, token)
    assert not webhook_urls.token_matches("secret", WebhookTarget("runware", JOB, 4), token)
    assert not webhook_urls.token_matches("", found, token) and not webhook_urls.token_matches("secret", found, None)


def test_a_public_url_with_a_path_keeps_working() -> None:
    url = webhook_urls.webhook_url("https://host/orch", "fal", JOB, 1, "s")
    assert webhook_urls.parse(url) == WebhookTarget("fal", JOB, 1)


@pytest.mark.parametrize("url", [None, "", "https://orch.example/v1/batches", f"/webhooks/fal/{JOB}",
                                 f"/webhooks/fal/{JOB}/1/extra", "/webhooks/fal/not-a-uuid/1",
                                 f"/webhooks/fal/{JOB}/0", f"/webhooks/fal/{JOB}/{2**31}", f"/webhooks/fal/{JOB}/x"])
def test_anything_else_is_not_a_webhook_url(url: str | None) -> None:
    assert webhook_urls.parse(url) is None


def test_target_reads_the_routes_parts() -> None:
    assert webhook_urls.target("fal", str(JOB), "2") == WebhookTarget("fal", JOB, 2)
    assert webhook_urls.target("fal", "nope", "2") is None
