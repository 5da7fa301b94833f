"""`orchestrator demo` from the installed package, and `orchestrator up` with a restart."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from orchestrator.netutil import free_port

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv with the project installed from a freshly built wheel (not the source tree)."""
    base = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(base), str(ROOT)],
                   check=True, capture_output=True)
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    wheel = next(base.glob("*.whl"))
    subprocess.run([str(venv / "bin" / "pip"), "install", "--no-deps", "-q", str(wheel)], check=True,
                   capture_output=True)
    return venv / "bin" / "orchestrator"


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith("ORCH_") and k not in ("FAL_KEY", "RUNWARE_API_KEY")}


def test_demo_from_the_installed_package(installed: Path, tmp_path: Path) -> None:
    run = subprocess.run([str(installed), "demo", "--prompts", "4", "--seeds", "3"], cwd=tmp_path, env=_env(),
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout + run.stderr
    out = tmp_path / "orchestrator-demo"
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(lines) == 12 and all(line["status"] == "succeeded" for line in lines)
    assert len(list(out.glob("*.jpg"))) == 12
    with Image.open(out / "contact-sheet.png") as sheet:
        assert sheet.width >= 4 * 100 and sheet.height >= 3 * 100
    assert "succeeded" in run.stdout and "p95" in run.stdout
    assert str(out / "contact-sheet.png") in run.stdout or "contact-sheet.png" in run.stdout
    # the installed package, not this checkout, ran the demo
    assert "site-packages" in subprocess.run([str(installed.parent / "python"), "-c",
                                              "import orchestrator; print(orchestrator.__file__)"],
                                             cwd=tmp_path, capture_output=True, text=True, check=True).stdout


def _start_up(data: Path, port: int) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "up", "--port", str(port),
                             "--data-dir", str(data)], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    seen = ""
    deadline = time.monotonic() + 90
    while "ready;" not in seen and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        seen += line
    match = re.search(r"ORCH_API_KEY=(\S+)", seen)
    assert match, seen
    return proc, match.group(1)


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    return out


def test_up_serves_stops_on_sigint_and_keeps_data(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "data"
    proc, key = _start_up(data, port)
    api = f"http://127.0.0.1:{port}"
    try:
        assert httpx.get(f"{api}/readyz").status_code == 200
        headers = {"Authorization": f"Bearer {key}"}
        batch = httpx.post(f"{api}/v1/batches", headers=headers,
                           json={"items": [{"model": "flux-schnell", "prompt": "a lighthouse"}]}).json()
        deadline = time.monotonic() + 60
        while httpx.get(f"{api}/v1/batches/{batch['id']}", headers=headers).json()["state"] != "succeeded":
            assert time.monotonic() < deadline
            time.sleep(0.3)
    finally:
        out = _stop(proc)
    assert "stopped" in out
    proc, key_again = _start_up(data, port)  # a restart keeps the database and the key
    try:
        assert key_again == key
        listed = httpx.get(f"{api}/v1/batches", headers={"Authorization": f"Bearer {key}"}).json()["data"]
        assert [b["id"] for b in listed] == [batch["id"]] and listed[0]["state"] == "succeeded"
    finally:
        _stop(proc)
