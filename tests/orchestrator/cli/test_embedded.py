"""`orchestrator demo` from the installed package, and `orchestrator up` with a restart."""

from __future__ import annotations

import json
import os
import re
import signal
import site
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from orchestrator.netutil import free_port

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv with the project installed from a freshly built wheel (not the source tree)."""
    base = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(base), str(ROOT)],
                   check=True, capture_output=True, env=_installed_env())
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    see_these_packages(venv / "bin" / "python")
    wheel = next(base.glob("*.whl"))
    # --ignore-installed: the running interpreter may hold an (editable) install of the same version,
    # which pip would otherwise call "already installed" and skip, leaving no `orchestrator` script.
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--ignore-installed", "-q",
                    str(wheel)], check=True, capture_output=True, env=_installed_env())
    return venv / "bin" / "orchestrator"


def see_these_packages(python: Path) -> None:
    """Let a new venv import the dependencies this interpreter has, wherever they are installed.

    `venv --system-site-packages` would hand it the *base* interpreter's packages, which are not
    this interpreter's when the tests run inside a virtualenv (the README's first command leads
    there). A .pth line per site directory works the same from a venv and from the system Python;
    the venv's own site-packages still comes first, so the wheel installed there wins.
    """
    dirs = [d for d in [*site.getsitepackages(), site.getusersitepackages()] if Path(d).is_dir()]
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    (Path(purelib) / "_tests_outer_site.pth").write_text("\n".join(dirs) + "\n")


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith("ORCH_") and k not in ("FAL_KEY", "RUNWARE_API_KEY")}


def _installed_env() -> dict[str, str]:
    # No PYTHONPATH: a checkout on it would shadow the installed package this test is about.
    return {k: v for k, v in _env().items() if k != "PYTHONPATH"}


def test_demo_from_the_installed_package(installed: Path, tmp_path: Path) -> None:
    run = subprocess.run([str(installed), "demo", "--prompts", "4", "--seeds", "3"], cwd=tmp_path, env=_installed_env(),
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout + run.stderr
    out = tmp_path / "orchestrator-demo"
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(lines) == 12 and all(line["status"] == "succeeded" for line in lines)
    assert len(list(out.glob("*.jpg"))) == 12
    with Image.open(out / "contact-sheet.png") as sheet:
        assert sheet.width >= 4 * 100 and sheet.height >= 3 * 100
    assert "succeeded" in run.stdout and "p95" in run.stdout
    # every job carries a cost, and both providers show a non-zero one (fal priced, Runware reported)
    assert all(line["cost"] and line["cost_source"] for line in lines)
    costs = dict(re.findall(r"^(fal|runware)\s+\d+\s+\d+\s+([0-9.]+)", run.stdout, re.MULTILINE))
    assert set(costs) == {"fal", "runware"} and all(float(c) > 0 for c in costs.values()), run.stdout
    assert str(out / "contact-sheet.png") in run.stdout or "contact-sheet.png" in run.stdout
    # the installed package, not this checkout, ran the demo
    probe = "import orchestrator; print(orchestrator.__file__)"
    where = subprocess.run([str(installed.parent / "python"), "-c", probe], cwd=tmp_path, capture_output=True,
                           text=True, check=True, env=_installed_env()).stdout
    assert where.startswith(str(installed.parent.parent)) and "site-packages" in where, where


def _start_up(data: Path, ports: tuple[int, ...]) -> tuple[subprocess.Popen[str], str, str]:
    args = ["up", "--port", str(ports[0]), "--fal-port", str(ports[1]), "--runware-port", str(ports[2])]
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *args, "--data-dir", str(data)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    seen = ""
    # Wait for the line that says it is ready (or for the process to end), however long a loaded machine takes.
    deadline = time.monotonic() + 240
    while "ready;" not in seen and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        seen += line
    match = re.search(r"ORCH_API_KEY=(\S+)", seen)
    assert match, seen
    return proc, match.group(1), seen


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out
    return out


def _free_ports(n: int) -> tuple[int, ...]:
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(free_port())
    return tuple(ports)


def test_up_serves_stops_on_sigint_and_keeps_data(tmp_path: Path) -> None:
    ports = _free_ports(3)
    data = tmp_path / "data"
    proc, key, banner = _start_up(data, ports)
    api = f"http://127.0.0.1:{ports[0]}"
    try:
        # Every address it serves is printed, on exactly the ports asked for.
        for url in (api, f"{api}/v1/openapi.json", f"{api}/metrics", f"http://127.0.0.1:{ports[1]}",
                    f"http://127.0.0.1:{ports[2]}/v1", f"export ORCH_API_URL={api}", f"{api}/admin/"):
            assert url in banner, banner
        assert httpx.get(f"{api}/readyz", timeout=30).status_code == 200
        # The printed key signs in to the dashboard (it is an admin key).
        with httpx.Client(base_url=api, timeout=30) as browser:
            token = re.search(r'name="csrf_token" value="([^"]+)"', browser.get("/admin/signin").text)
            assert token is not None
            signed_in = browser.post("/admin/signin", data={"api_key": key, "csrf_token": token.group(1)})
            assert signed_in.status_code == 302 and signed_in.headers["location"].endswith("/admin/batches")
        headers = {"Authorization": f"Bearer {key}"}
        batch = httpx.post(f"{api}/v1/batches", headers=headers, timeout=30,
                           json={"items": [{"model": "flux-schnell", "prompt": "a lighthouse"}]}).json()
        deadline = time.monotonic() + 180
        while httpx.get(f"{api}/v1/batches/{batch['id']}", headers=headers, timeout=30).json()["state"] != "succeeded":
            assert time.monotonic() < deadline
            time.sleep(0.3)
    finally:
        out = _stop(proc)
    assert "stopped" in out
    # A restart keeps the database, the key and the very same ports (connections of the first run
    # may still sit in TIME_WAIT; that must not move the API elsewhere).
    proc, key_again, banner = _start_up(data, ports)
    try:
        assert key_again == key and f"export ORCH_API_URL={api}" in banner
        listed = httpx.get(f"{api}/v1/batches", headers={"Authorization": f"Bearer {key}"}, timeout=30).json()["data"]
        assert [b["id"] for b in listed] == [batch["id"]] and listed[0]["state"] == "succeeded"
    finally:
        _stop(proc)


@pytest.mark.parametrize(("option", "env", "index", "how"), [
    ("--port", "ORCH_API_PORT", 0, "option"), ("--port", "ORCH_API_PORT", 0, "env"),
    ("--fal-port", "ORCH_FAL_PORT", 1, "option"), ("--runware-port", "ORCH_RUNWARE_PORT", 2, "env")])
def test_up_refuses_a_taken_port_by_name(tmp_path: Path, option: str, env: str, index: int, how: str) -> None:
    ports = list(_free_ports(3))
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        ports[index] = squatter.getsockname()[1]
        names = ("--port", "--fal-port", "--runware-port")
        args = [a for i, name in enumerate(names) if i != index for a in (name, str(ports[i]))]
        extra = {env: str(ports[index])} if how == "env" else {}
        if how == "option":
            args += [option, str(ports[index])]
        run = subprocess.run([sys.executable, "-m", "orchestrator.cli", "up", *args, "--data-dir", str(tmp_path)],
                             env={**_env(), **extra}, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stdout + run.stderr
    assert f"port {ports[index]} on 127.0.0.1 is already in use ({option} / {env})" in run.stderr
    assert "Traceback" not in run.stderr and "ready;" not in run.stdout


def test_up_refuses_one_port_for_two_servers(tmp_path: Path) -> None:
    port = str(free_port())
    run = subprocess.run([sys.executable, "-m", "orchestrator.cli", "up", "--port", port, "--fal-port", port,
                          "--data-dir", str(tmp_path)], env=_env(), capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and f"--port and --fal-port are both {port}" in run.stderr, run.stderr
