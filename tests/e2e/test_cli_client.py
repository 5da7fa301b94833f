"""The client CLI against a real running API, worker and provider sandboxes on loopback."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from PIL import Image
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.cli import main
from orchestrator.sandbox import Faults
from tests.conftest import REDIS_URL, make_key
from tests.stack import Stack, start_stack

pytestmark = [pytest.mark.slow, pytest.mark.committed]  # a stack or an API process reads the data
FAILING_MODEL = "fal-ai/flux/dev"  # the sandbox rejects every request for it (content policy)
SLOW_MODEL = "runware:101@1"  # the sandbox takes 30 s per image: time enough to cancel
CELL_W, CELL_H, PAD, HEADER = 256 + 16, 256 + 16 + 30, 8, 32  # orchestrator.contact_sheet layout


@pytest.fixture(scope="module")
def stack(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One stack for the module: the tests only talk to it over HTTP, as a user would."""
    fal = Faults(models={FAILING_MODEL: {"failure_rate": 1.0, "failure_status": 422}})
    runware = Faults(models={SLOW_MODEL: {"latency_min": 30.0, "latency_max": 30.0}})
    s = start_stack(pg_url, REDIS_URL, tmp_path_factory.mktemp("cli"), fal_faults=fal, runware_faults=runware)
    s.start_worker("w1")
    s.start_beat()
    yield s
    s.stop()


@pytest.fixture
def key(stack: Stack, sessions: sessionmaker[Session]) -> str:
    return make_key(sessions, "acme")


def cli(stack: Stack, key: str | None, *args: str, code: int = 0) -> Result:
    """Run `orchestrator ARGS` and check the exit code, that no traceback and no key leaked."""
    env = {"ORCH_API_URL": stack.api_url, "ORCH_API_KEY": key or ""}
    result = CliRunner().invoke(main, list(args), env=env)
    assert result.exit_code == code, f"{args}: exit {result.exit_code}\n{result.output}\n{stack.logs()}"
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    assert not key or key not in result.output
    return result


def batch_id(result: Result) -> str:
    match = re.search(r"batch ([0-9a-f-]{36}) (?:already )?submitted", result.output)
    assert match, result.output
    return match[1]


def write_jsonl(path: Path, items: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


def test_txt_matrix_watch_and_download(stack: Stack, key: str, tmp_path: Path) -> None:
    prompts = tmp_path / "board.txt"
    prompts.write_text("# mood board\na red fox in snow\n\na lighthouse at dusk\n")
    result = cli(stack, key, "submit", str(prompts), "--seeds", "1,2", "--sizes", "square,768x512",
                 "--name", "board", "--watch", "--interval", "0.2")
    assert "8 job(s)" in result.output
    assert re.search(r"\[#{30}\] 8/8 100%", result.output)  # the last progress line
    assert "succeeded: succeeded 8" in result.output
    bid = batch_id(result)

    out = tmp_path / "download"
    result = cli(stack, key, "results", bid, "--download", str(out))
    assert "8 job(s) (succeeded 8), 8 image(s)" in result.output
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(lines) == 8
    for line in lines:
        image = line["images"][0]
        assert "url" not in image  # presigned links expire; the local manifest names files
        assert image["file"] == f"{line['position']}-{line['custom_id']}-0.{image['file'].rsplit('.', 1)[1]}"
        data = (out / image["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == image["sha256"]
        with Image.open(out / image["file"]) as img:
            assert img.size == (image["width"], image["height"])
    assert {(i["width"], i["height"]) for line in lines for i in line["images"]} == {(512, 512), (768, 512)}
    with Image.open(out / "contact-sheet.png") as sheet:  # 8 cells: 3 columns x 3 rows
        assert sheet.format == "PNG"
        assert sheet.size == (3 * CELL_W + PAD, HEADER + 3 * CELL_H + PAD)
    assert f"contact sheet: {out / 'contact-sheet.png'}" in result.output


def test_jsonl_and_csv_then_status(stack: Stack, key: str, tmp_path: Path) -> None:
    items = write_jsonl(tmp_path / "items.jsonl", [
        {"custom_id": "fox", "prompt": "a fox"},
        {"custom_id": "owl", "prompt": "an owl", "model": "runware:100@1", "width": 512, "height": 384}])
    jsonl = cli(stack, key, "submit", str(items), "--name", "lines", "--lane", "bulk", "--watch", "--interval", "0.2")
    assert "2 job(s), lane bulk" in jsonl.output

    rows = tmp_path / "catalog.csv"
    rows.write_text("sku,name,colour\nA1,teapot,red\nB2,mug,blue\nC3,kettle,green\n")
    args = ["submit", str(rows), "--template", "Studio photo of a {colour} {name}", "--id-field", "sku",
            "--sizes", "square", "--idempotency-key", "nightly-2026-01-01"]
    catalog = cli(stack, key, *args, "--watch", "--interval", "0.2")
    assert "3 job(s)" in catalog.output and "succeeded 3" in catalog.output
    again = cli(stack, key, *args)  # the nightly job ran twice: same batch, nothing billed again
    assert "already submitted" in again.output and batch_id(again) == batch_id(catalog)

    listing = cli(stack, key, "results", batch_id(catalog), "--jsonl").output
    manifest = [json.loads(line) for line in listing.splitlines()]
    assert [m["custom_id"] for m in manifest] == ["A1", "B2", "C3"]
    assert manifest[1]["prompt"] == "Studio photo of a blue mug"

    one = cli(stack, key, "status", batch_id(jsonl)).output
    assert re.search(r"state:\s+succeeded", one) and re.search(r"name:\s+lines", one)
    table = cli(stack, key, "status").output
    assert batch_id(jsonl) in table and batch_id(catalog) in table and "3/3" in table
    # Times are printed as the API sends them: RFC 3339 in UTC, offset included (not a bare local-looking time).
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00"
    assert re.search(rf"created:\s+{stamp}", one) and re.search(rf"completed:\s+{stamp}", one)
    assert len(re.findall(stamp, table)) >= 2


def test_partial_failure_exits_1_then_retry(stack: Stack, key: str, tmp_path: Path) -> None:
    items = write_jsonl(tmp_path / "mixed.jsonl", [
        {"custom_id": "ok-1", "prompt": "a calm lake"},
        {"custom_id": "bad", "prompt": "a forbidden thing", "model": FAILING_MODEL},
        {"custom_id": "ok-2", "prompt": "a quiet forest"}])
    result = cli(stack, key, "submit", str(items), "--watch", "--interval", "0.2", code=1)
    assert "partially_failed" in result.output
    bid = batch_id(result)

    summary = cli(stack, key, "results", bid, "--download", str(tmp_path / "out")).output
    assert "failed #1 bad:" in summary
    assert sorted(p.name for p in (tmp_path / "out").glob("*-ok-*")) == ["0-ok-1-0.jpg", "2-ok-2-0.jpg"]
    with Image.open(tmp_path / "out" / "contact-sheet.png") as sheet:  # 2 images + 1 placeholder
        assert sheet.size == (2 * CELL_W + PAD, HEADER + 2 * CELL_H + PAD)

    retried = cli(stack, key, "retry", bid, "--watch", "--interval", "0.2", code=1)
    assert "re-queued 1 failed job(s)" in retried.output and "partially_failed" in retried.output


def test_cancel(stack: Stack, key: str, tmp_path: Path) -> None:
    prompts = tmp_path / "slow.txt"
    prompts.write_text("a slow river\n")
    bid = batch_id(cli(stack, key, "submit", str(prompts), "--model", SLOW_MODEL, "--variants", "3"))
    result = cli(stack, key, "cancel", bid)
    assert "cancelled 3 unfinished job(s); batch is cancelled" in result.output
    assert re.search(r"state:\s+cancelled", cli(stack, key, "status", bid).output)
    assert "no failed jobs to retry" in cli(stack, key, "retry", bid).output


def test_invalid_items_are_listed(stack: Stack, key: str, tmp_path: Path) -> None:
    items = write_jsonl(tmp_path / "bad.jsonl", [
        {"custom_id": "fine", "prompt": "ok"},
        {"custom_id": "typo", "prompt": "x", "model": "flux-shnell"},
        {"custom_id": "huge", "prompt": "x", "steps": 9999}])
    out = cli(stack, key, "submit", str(items), code=2).output
    assert "The batch has invalid items (HTTP 422)" in out
    assert "position 1 (custom_id 'typo'), field 'model': unknown model 'flux-shnell'" in out
    assert "position 2 (custom_id 'huge'), field 'steps'" in out

    many = write_jsonl(tmp_path / "many.jsonl", [{"custom_id": f"n{i}", "prompt": "y", "colour": 1} for i in range(26)])
    out = cli(stack, key, "submit", str(many), code=2).output
    assert out.count("  - position") == 20 and "... and 6 more" in out


def test_csv_and_size_mistakes_are_explained_once(stack: Stack, key: str, tmp_path: Path) -> None:
    rows = tmp_path / "products.csv"
    rows.write_text("sku,color,product\nA1,red,mug\nB2,blue,teapot\nC3,green,lamp\n")
    out = cli(stack, key, "submit", str(rows), "--template", "Photo of a {colour} {product}", code=2).output
    assert ("the template uses {colour} but products.csv has no such column; "
            "products.csv has the columns sku, color, product") in out
    out = cli(stack, key, "submit", str(rows), "--template", "Photo of a {color} {product}", "--id-field", "SKU",
              code=2).output
    assert out.count("--id-field 'SKU' is not a column in the header of products.csv") == 1  # once, not per row
    assert "sku, color, product" in out
    prompts = tmp_path / "p.txt"
    prompts.write_text("a fox\n")
    out = cli(stack, key, "submit", str(prompts), "--sizes", "square,huge", code=2).output
    assert "unknown size 'huge'" in out and "768x512" in out and "landscape_16_9" in out
    usage = cli(stack, None, "submit", "--help").output
    assert "WIDTHxHEIGHT" in usage and "square_hd" in usage


def test_schedule_batches_are_marked_and_filtered(stack: Stack, key: str) -> None:
    import httpx

    api = httpx.Client(base_url=stack.api_url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    body = {"name": "cli-nightly", "cron": "0 2 * * *", "template": {"items": [{"model": "flux-schnell",
                                                                               "prompt": "a mug"}]}}
    sid = api.post("/v1/schedules", json=body).json()["id"]
    bid = api.post(f"/v1/schedules/{sid}/run").json()["id"]
    assert re.search(rf"schedule:\s+{sid}", cli(stack, key, "status", bid).output)
    table = cli(stack, key, "status", "--schedule", sid).output
    assert bid in table and len(re.findall(r"[0-9a-f]{8}-[0-9a-f-]{27}", table)) == 1


def test_terminal_gets_rich_progress_and_live_tables(stack: Stack, key: str, tmp_path: Path) -> None:
    import io

    from rich.console import Console

    from orchestrator.cli import api_client, progress, watch

    api = api_client.Api(stack.api_url, key)
    items = [{"custom_id": f"t{i}", "model": "flux-schnell", "prompt": f"a fox {i}"} for i in range(6)]
    bid = api.json("POST", "/v1/batches", json={"items": items})["id"]

    def terminal() -> tuple[Console, io.StringIO]:
        buf = io.StringIO()
        return Console(file=buf, force_terminal=True, color_system="standard", width=160), buf

    out, buf = terminal()
    final = progress.watch_batch(lambda: watch.poll(api, bid, 0.2), 0.2, out)
    text = buf.getvalue()
    assert final["state"] == "succeeded"
    assert "\x1b[" in text and "6/6" in text and "jobs/s" in text and "ETA" in text
    assert "\x1b[32msucceeded 6" in text  # the state's colour (green)

    out, buf = terminal()
    progress.watch_batches(lambda: api.json("GET", "/v1/batches", params={"limit": 3})["data"], 0.2, out)
    assert "STATE" in buf.getvalue() and bid in buf.getvalue() and "\x1b[" in buf.getvalue()
    out, buf = terminal()
    progress.show_batches([api.json("GET", f"/v1/batches/{bid}")], out)
    assert "\x1b[32msucceeded" in buf.getvalue()

    # Piped (CliRunner is not a terminal): today's plain lines, no escape codes.
    watched = cli(stack, key, "status", bid, "--watch", "--interval", "0.2").output
    assert re.search(r"\[#{30}\] 6/6 100%", watched) and re.search(r"state:\s+succeeded", watched)
    listing = cli(stack, key, "status", "--watch", "--limit", "2", "--interval", "0.2").output
    assert listing.startswith("ID ") and "\x1b[" not in listing + watched


def test_auth_connection_and_usage_errors(stack: Stack, key: str, tmp_path: Path) -> None:
    bogus = "orch_notarealkey_0123456789"
    out = cli(stack, bogus, "status", code=2).output
    assert "Unauthorized (HTTP 401)" in out and "ORCH_API_KEY" in out
    assert "Unauthorized" in cli(stack, None, "status", code=2).output

    unreachable = CliRunner().invoke(main, ["status", "--api-url", "http://127.0.0.1:9"], env={"ORCH_API_KEY": key})
    assert unreachable.exit_code == 2 and "Traceback" not in unreachable.output
    assert "could not reach the API at http://127.0.0.1:9" in unreachable.output

    assert "does not exist" in cli(stack, key, "submit", str(tmp_path / "missing.txt"), code=2).output
    assert "Not found (HTTP 404)" in cli(stack, key, "status", "0" * 8 + "-0000-0000-0000-" + "0" * 12, code=2).output
    rows = tmp_path / "rows.csv"
    rows.write_text("name\nteapot\n")
    assert "needs --template" in cli(stack, key, "submit", str(rows), code=2).output
    (tmp_path / "prompts.md").write_text("a fox\n")
    assert "use a .txt" in cli(stack, key, "submit", str(tmp_path / "prompts.md"), code=2).output
    (tmp_path / "p.txt").write_text("a fox\n")
    assert "not both" in cli(stack, key, "submit", str(tmp_path / "p.txt"), "--seeds", "1", "--variants", "2",
                             code=2).output
    assert "integers" in cli(stack, key, "submit", str(tmp_path / "p.txt"), "--seeds", "1,x", code=2).output


def test_watch_rides_out_a_short_outage_then_gives_up(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from orchestrator.cli import api_client, watch

    monkeypatch.setattr(watch, "WATCH_GRACE_SECONDS", 0.3)
    with pytest.raises(api_client.Transient, match=re.escape("could not reach the API at http://127.0.0.1:9")):
        watch.follow(api_client.Api("http://127.0.0.1:9", None), "b", interval=0.1)
    assert "retrying: could not reach" in capsys.readouterr().err
