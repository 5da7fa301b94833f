"""The dashboard in a real browser (Chromium via Playwright) against a live API, real workers and
the provider sandboxes. Screenshots of every page land in $ORCH_SCREENSHOT_DIR
(default /tmp/orchestrator-screenshots)."""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.models import Asset, AuditEntry, Batch, Delivery, JobEvent
from orchestrator.sandbox import Faults
from tests.conftest import StackFactory, make_key
from tests.e2e.browser import SCREENSHOTS, browser, shot, sign_in
from tests.stack import wait_for

pytestmark = pytest.mark.slow


def images_loaded(page: Any) -> None:
    """Every grid image decoded with real pixels (polled from Python: the CSP forbids eval in the page)."""
    script = ("() => { const imgs = Array.from(document.querySelectorAll('.tile img'));"
              " return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0); }")
    wait_for(lambda: page.evaluate(script), timeout=60, what="grid images to render")


def test_board_live_progress_picks_export_rerender(make_stack: StackFactory, sessions: sessionmaker[Session]) -> None:
    stack = make_stack(fal_faults=Faults(latency_min=0.8, latency_max=2.0))
    base = stack.api_url
    client_key, admin_key = make_key(sessions, "acme"), make_key(sessions, "ops", "admin")
    api = stack.client(client_key)
    body = {"name": "fox drafts", "items": [{"custom_id": f"fox-{i}", "model": "fal-ai/flux/schnell",
                                             "prompt": f"a red fox in the snow, study {i}", "seed": 40 + i,
                                             "image_size": "square"} for i in range(8)]}
    batch_id = api.post("/v1/batches", json=body).json()["id"]
    print(f"screenshots in {SCREENSHOTS}")
    with browser() as b:
        ctx = b.new_context(viewport={"width": 1280, "height": 900}, color_scheme="light")
        page = ctx.new_page()
        csp_errors: list[str] = []
        page.on("console", lambda m: csp_errors.append(m.text) if "Content Security Policy" in m.text else None)

        # No session: every page sends you to sign-in. A client key is refused with a clear message.
        page.goto(f"{base}/admin/batches/{batch_id}")
        assert "/admin/signin" in page.url
        page.fill("#api_key", client_key)
        page.click("button[type=submit]")
        assert "client key" in page.inner_text("#signin-error")
        page.fill("#api_key", "orch_nothing_here")
        page.click("button[type=submit]")
        assert "unknown or revoked" in page.inner_text("#signin-error")
        shot(page, "01-signin-refused")
        sign_in(page, base, admin_key)
        assert page.context.cookies()[0]["httpOnly"] is True

        # The batch page before any worker runs; then progress updates without a reload.
        resp = page.goto(f"{base}/admin/batches/{batch_id}")
        assert resp is not None and "script-src 'self'" in resp.headers["content-security-policy"]
        assert page.inner_text('[data-count="succeeded"]') == "0"
        page.evaluate("window.__noReload = 1")
        stack.start_worker("w1")
        seen: set[str] = set()

        def done() -> bool:
            # The state first, then the count: an update landing between the two reads then shows
            # in the count read (read the other way round, a batch finishing within one poll of
            # the page was seen as "0" and "succeeded").
            finished = page.inner_text("#batch-state") == "succeeded"
            seen.add(page.inner_text('[data-count="succeeded"]'))
            return finished
        wait_for(done, what="live progress to reach succeeded")
        assert page.evaluate("window.__noReload") == 1, "the page reloaded"
        assert "8" in seen and len(seen) >= 2, seen  # it moved while we watched
        wait_for(lambda: page.locator(".tile").count() == 8, what="tiles appended live")
        images_loaded(page)
        assert page.evaluate("document.querySelector('.tile img').naturalWidth") > 0
        assert page.inner_text("#live-status") or page.get_attribute("#live-status", "data-state") == "live"
        page.reload()
        images_loaded(page)
        page.hover(".tile >> nth=0")
        assert "seed 40" in page.inner_text(".tile >> nth=0")
        shot(page, "02-batch-board")

        # Lightbox with the keyboard.
        page.dblclick(".tile >> nth=0")
        assert page.is_visible("#lightbox")
        first = page.inner_text("#lb-cap")
        page.keyboard.press("ArrowRight")
        assert page.inner_text("#lb-cap") != first and "fox-1" in page.inner_text("#lb-cap")
        shot(page, "03-lightbox", full=False)
        page.keyboard.press("Escape")
        assert not page.is_visible("#lightbox")

        # Select tile 0, shift-click tile 2 (a range of three), pick them with the "s" shortcut.
        page.click(".tile >> nth=0", position={"x": 60, "y": 60})
        page.click(".tile >> nth=2", position={"x": 60, "y": 60}, modifiers=["Shift"])
        assert page.inner_text("#sel-count") == "3 selected"
        page.keyboard.press("s")
        page.wait_for_load_state()
        wait_for(lambda: page.locator(".tile.picked").count() == 3, what="three picks")
        page.click("#show-picks")
        assert page.locator(".tile").count() == 3
        images_loaded(page)
        shot(page, "04-picks-only")
        with page.expect_download() as dl:
            page.click("#export-picks")
        archive = zipfile.ZipFile(io.BytesIO(open(dl.value.path(), "rb").read()))  # noqa: SIM115
        names = archive.namelist()
        assert "manifest.jsonl" in names and "contact-sheet.png" in names
        manifest = [json.loads(x) for x in archive.read("manifest.jsonl").decode().splitlines()]
        assert [m["custom_id"] for m in manifest] == ["fox-0", "fox-1", "fox-2"]
        assert all(m["file"] in names for m in manifest)

        # Re-render the picks on another model: a new batch linked to its parent, same seeds.
        page.click("[data-grid=all]")
        page.fill("input[name=model]", "fal-ai/flux/dev")
        page.click("#rerender")
        page.wait_for_url(f"{base}/admin/batches/*")
        child_id = page.url.rstrip("/").split("/")[-1].split("?")[0]
        assert child_id != batch_id and page.is_visible("#parent-link")
        child = stack.wait_batch(api, child_id)
        assert child["parent_batch_id"] == batch_id and child["state"] == "succeeded", stack.logs()
        seeds = sorted(j["params"]["seed"] for j in api.get(f"/v1/batches/{child_id}/jobs").json()["data"])
        assert seeds == [40, 41, 42]
        wait_for(lambda: page.inner_text("#batch-state") == "succeeded", what="child page to finish live")
        wait_for(lambda: page.locator(".tile").count() == 3, what="the child's tiles")
        images_loaded(page)
        shot(page, "05-rerender-child")

        # CSRF: the same session without the token is refused, and nothing happened.
        refused = page.request.post(f"{base}/admin/batches/{batch_id}/retry", form={"x": "1"})
        assert refused.status == 403 and "CSRF" in refused.text()
        with sessions() as s:
            actions = [a for (a,) in s.execute(sa.select(AuditEntry.action).order_by(AuditEntry.id))]
        assert actions == ["picks_add", "rerender"]

        page.goto(f"{base}/admin/batches")
        assert page.locator("tr[data-batch]").count() == 2
        shot(page, "06-batches")
        page.goto(f"{base}/admin/batches?q=snow%2C+study+3")
        assert page.locator("tr[data-batch]").count() == 1
        page.goto(f"{base}/admin/audit")
        shot(page, "07-audit")

        # A phone, dark theme.
        phone = b.new_context(viewport={"width": 390, "height": 844}, color_scheme="dark", is_mobile=True,
                              storage_state=ctx.storage_state())
        mobile = phone.new_page()
        mobile.goto(f"{base}/admin/batches/{batch_id}")
        images_loaded(mobile)
        width = mobile.evaluate("document.documentElement.scrollWidth")
        assert width <= 400, f"horizontal scroll on a phone: {width}px"
        shot(mobile, "08-phone-dark-board")
        mobile.goto(f"{base}/admin/batches")
        shot(mobile, "09-phone-dark-batches")
        phone.close()

        # JavaScript off: still readable.
        nojs = b.new_context(java_script_enabled=False, storage_state=ctx.storage_state(),
                             viewport={"width": 1280, "height": 900})
        plain = nojs.new_page()
        plain.goto(f"{base}/admin/batches")
        assert plain.locator("tr[data-batch]").count() == 2
        plain.goto(f"{base}/admin/batches/{batch_id}")
        assert plain.locator(".tile").count() == 8
        nojs.close()
        assert not csp_errors, csp_errors


def test_bulk_retry_audit_job_replay_providers_schedules(make_stack: StackFactory,
                                                         sessions: sessionmaker[Session]) -> None:
    # Every fal generation fails with a content-policy 422 until the faults are cleared.
    stack = make_stack(fal_faults=Faults(failure_rate=1.0, failure_status=422))
    base = stack.api_url
    admin_key = make_key(sessions, "ops", "admin")
    api = stack.client(make_key(sessions, "acme"))
    stack.start_worker("w1")
    body = {"name": "mixed", "items": [
        {"custom_id": "fal-a", "model": "fal-ai/flux/schnell", "prompt": "a lighthouse at dusk", "seed": 1},
        {"custom_id": "fal-b", "model": "fal-ai/flux/schnell", "prompt": "a lighthouse at dawn", "seed": 2},
        {"custom_id": "rw-a", "model": "runware:100@1", "prompt": "an owl", "seed": 3, "width": 512, "height": 512}]}
    batch_id = api.post("/v1/batches", json=body).json()["id"]
    batch = stack.wait_batch(api, batch_id)
    assert batch["state"] == "partially_failed", stack.logs()
    api.post("/v1/schedules", json={"name": "nightly catalog", "cron": "0 3 * * *", "timezone": "Europe/Paris",
                                    "template": {"items": [{"model": "flux-schnell", "prompt": "a chair"}]}})
    stack.fal.set_faults(failure_rate=0.0)
    with browser() as b:
        ctx = b.new_context(viewport={"width": 1280, "height": 900})
        page = ctx.new_page()
        sign_in(page, base, admin_key)
        # Live updates: a failing fragment shows "reconnecting", and recovery shows "live" again.
        page.goto(f"{base}/admin/batches")
        state = '() => document.getElementById("live-status").dataset.state'
        wait_for(lambda: page.evaluate(state) == "live", 30, "live status")
        page.route("**/admin/fragments/batches*", lambda route: route.abort())
        wait_for(lambda: page.evaluate(state) == "reconnecting", 30, "reconnecting status")
        assert page.is_visible("#live-status")
        shot(page, "16-reconnecting", full=False)
        page.unroute("**/admin/fragments/batches*")
        wait_for(lambda: page.evaluate(state) == "live", 60, "live status after recovery")
        page.goto(f"{base}/admin/batches?state=partially_failed")
        assert page.locator("tr[data-batch]").count() == 1
        page.check(f'input[name=batch][value="{batch_id}"]')
        page.select_option("select[name=action]", "retry")
        page.click("#bulk button[type=submit]")
        assert "2" in page.inner_text("#preview-count")  # two failed jobs would be retried
        shot(page, "10-bulk-preview")
        page.click("#confirm")
        page.wait_for_url(f"{base}/admin/audit*")
        row = page.locator('tr[data-action="bulk_retry"]')
        assert row.count() == 1 and "key " in row.inner_text()  # the admin key's label (no secret)
        assert row.locator("td.num").inner_text() == "2"
        shot(page, "11-audit-after-bulk")
        batch = stack.wait_batch(api, batch_id)
        assert batch["state"] == "succeeded", stack.logs()
        with sessions() as s:
            entry = s.scalars(sa.select(AuditEntry).where(AuditEntry.action == "bulk_retry")).one()
            assert entry.count == 2 and entry.actor_key_id is not None and entry.detail["batch_ids"] == [batch_id]

        # The job page: timeline, attempts with request ids, deliveries; replay a verified delivery.
        job = next(j for j in api.get(f"/v1/batches/{batch_id}/jobs").json()["data"] if j["custom_id"] == "fal-a")
        page.goto(f"{base}/admin/jobs/{job['id']}")
        timeline = page.inner_text("#timeline")
        assert all(kind in timeline for kind in ("claimed", "failed", "retry_requested", "stored"))
        assert job["provider_request_id"] in page.inner_text("#attempts")
        assert '"prompt": "a lighthouse at dusk"' in page.inner_text("#native")
        assert "token=" not in page.content() or "token=***" in page.content()
        shot(page, "12-job")
        paid_before = stack.submissions_per_job("fal").get(job["id"])
        with sessions() as s:
            delivery = s.scalars(sa.select(Delivery).where(Delivery.job_id == sa.text(f"'{job['id']}'"),
                                                           Delivery.verified.is_(True))
                                 .order_by(Delivery.received_at.desc())).first()
            assert delivery is not None
            assets_before = s.scalar(sa.select(sa.func.count()).select_from(Asset)
                                     .where(Asset.job_id == sa.text(f"'{job['id']}'")))
        page.on("dialog", lambda d: d.accept())
        if not page.is_visible(f'[data-delivery="{delivery.id}"] button.replay'):
            page.click(f'[data-delivery="{delivery.id}"] summary')  # open its <details>
        page.click(f'[data-delivery="{delivery.id}"] button.replay')
        page.wait_for_selector("#replayed")

        def replayed() -> bool:
            with sessions() as s:
                d = s.get(Delivery, delivery.id)
                return d is not None and d.processed_at is not None
        wait_for(replayed, what="the replayed delivery to be reconciled")
        with sessions() as s:
            d = s.get(Delivery, delivery.id)
            assert d is not None and d.outcome and d.outcome.startswith("ignored"), d.outcome if d else None
            assert s.scalar(sa.select(sa.func.count()).select_from(Asset)
                            .where(Asset.job_id == sa.text(f"'{job['id']}'"))) == assets_before
            kinds = [k for (k,) in s.execute(sa.select(JobEvent.kind).where(JobEvent.job_id == sa.text(
                f"'{job['id']}'")))]
            assert "late_result_ignored" in kinds
        assert stack.submissions_per_job("fal").get(job["id"]) == paid_before  # nothing paid twice
        page.reload()
        shot(page, "13-job-after-replay")

        # Providers: figures against the sandboxes' own ledgers.
        page.goto(f"{base}/admin/providers")
        fal = page.locator('[data-provider="fal"]')
        assert fal.locator('[data-field="in_flight"]').inner_text() == "0 / 8"
        fal_accepted = len(stack.submissions("fal"))
        assert fal.locator('[data-field="submitted"]').inner_text() == str(fal_accepted)
        assert fal_accepted == 4  # two failed, then the same two retried
        assert fal.locator('[data-field="finished"]').inner_text() == "2 / 0"
        rw = page.locator('[data-provider="runware"]')
        assert rw.locator('[data-field="submitted"]').inner_text() == str(len(stack.submissions("runware")))
        assert "422" in fal.inner_text() or "content" in fal.inner_text().lower()
        shot(page, "14-providers")

        # Schedules: next fire in the schedule's zone and in UTC; pause.
        page.goto(f"{base}/admin/schedules")
        row = page.locator("tr[data-schedule]")
        assert "CET" in row.inner_text() or "CEST" in row.inner_text()
        assert "03:00" in row.inner_text() and "T02:00:00Z" in row.inner_text()
        shot(page, "15-schedules")
        row.locator("button", has_text="Pause").click()
        assert "paused" in page.locator("tr[data-schedule]").inner_text()
        with sessions() as s:
            assert s.scalar(sa.select(sa.func.count()).select_from(Batch)) == 1
