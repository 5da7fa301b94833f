"""compose.yaml and the Dockerfile, checked structurally (Docker is not needed to run this).

The deployment must keep matching the code: every ORCH_* variable it sets is a real setting, every
command it runs parses with the real `orchestrator` CLI, and no secret value is committed.

Secrets policy: a variable whose name says it is a credential (PASSWORD, SECRET, KEY, TOKEN), and
the password inside a database URL, must be a `${VAR...}` reference to the host environment.
ORCH_SECRET_KEY is required (`${ORCH_SECRET_KEY:?...}`); provider keys default to empty. Only the
Postgres and MinIO credentials (LOCAL_DEV_CREDENTIALS) may carry an inline default, because those
services are reachable from the compose network (MinIO also from the host's loopback) alone.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import yaml  # PyYAML; not a declared dependency of ours, it arrives with moto[server]

from orchestrator.cli import main
from orchestrator.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
REQUIRED_SERVICES = {"postgres", "redis", "minio", "minio-init", "migrate", "api", "worker", "beat",
                     "sandbox-fal", "sandbox-runware"}
SANDBOXES = {"sandbox-fal", "sandbox-runware"}
LOCAL_DEV_CREDENTIALS = {"POSTGRES_PASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
AWS_VARIABLES = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_REGION"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|KEY|TOKEN")
# One whole-value reference: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?message}, ${VAR?message}.
REFERENCE = re.compile(r"^\$\{(?P<var>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}$")
# The password of a URL with userinfo, read before interpolation so it is the reference itself.
URL_PASSWORD = re.compile(r"^[a-z][a-z0-9+.-]*://[^:/@]*:(?P<password>[^@]*)@")
ANY_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """compose.yaml parsed, with YAML anchors and merge keys resolved."""
    data = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services by name."""
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def _ours(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    # Services built from this repository run the `orchestrator` entry point.
    return {name: svc for name, svc in services.items() if "build" in svc}


def _env(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    # Compose accepts a list of KEY=VALUE as well as a mapping.
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _interpolate(value: str) -> str:
    """The value with an empty host environment: defaults applied, required ones given a stand-in."""
    def one(m: re.Match[str]) -> str:
        op, arg = m.group(2), m.group(3) or ""
        if op in (":-", "-"):
            return arg
        if op in (":?", "?"):
            return f"stand-in-for-{m.group(1).lower()}"
        return ""
    return ANY_REFERENCE.sub(one, value).replace("$$", "$")


def test_required_services_present(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) >= REQUIRED_SERVICES


def test_service_images(services: dict[str, dict[str, Any]]) -> None:
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["redis"]["image"].startswith("redis:7")
    assert "minio/mc" in services["minio-init"]["image"]
    assert set(_ours(services)) == {"migrate", "api", "worker", "beat", *SANDBOXES}
    assert len({svc["image"] for svc in _ours(services).values()}) == 1, "one image for every role"


def test_exactly_one_beat(services: dict[str, dict[str, Any]]) -> None:
    beats = [name for name, svc in _ours(services).items() if svc["command"][0] == "beat"]
    assert beats == ["beat"]
    assert services["beat"].get("deploy", {}).get("replicas", 1) == 1


def test_worker_is_scalable(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    assert worker["command"] == ["worker"]
    assert "container_name" not in worker and "ports" not in worker
    assert worker.get("deploy", {}).get("replicas", 1) == 1, "scale with --scale, not a fixed count"


def test_no_container_names(services: dict[str, dict[str, Any]]) -> None:
    # A fixed name would stop two checkouts (or two projects) running side by side.
    assert [name for name, svc in services.items() if "container_name" in svc] == []


@pytest.mark.parametrize("name", ["postgres", "redis", "minio", "api"])
def test_healthchecks(services: dict[str, dict[str, Any]], name: str) -> None:
    test = services[name]["healthcheck"]["test"]
    assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL")


def test_healthcheck_commands(services: dict[str, dict[str, Any]]) -> None:
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["redis"]["healthcheck"]["test"][1:] == ["redis-cli", "ping"]
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])


def test_sandboxes_only_under_profile(services: dict[str, dict[str, Any]]) -> None:
    profiled = {name for name, svc in services.items() if svc.get("profiles")}
    assert profiled == SANDBOXES
    for name in SANDBOXES:
        assert services[name]["profiles"] == ["sandbox"]
    for name, provider, port in (("sandbox-fal", "fal", 8101), ("sandbox-runware", "runware", 8102)):
        # The sandbox must hand out URLs (results, images) that other containers can resolve.
        assert services[name]["command"] == ["sandbox", provider, "--host", "0.0.0.0", "--port", str(port),
                                             "--public-url", f"http://{name}:{port}"]


def test_no_default_service_depends_on_a_sandbox(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        if name not in SANDBOXES:
            assert not SANDBOXES & set(svc.get("depends_on") or {}), f"{name} would need --profile sandbox"


def test_migrate_runs_first(services: dict[str, dict[str, Any]]) -> None:
    migrate = services["migrate"]
    assert migrate["command"] == ["db", "upgrade"]
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert migrate.get("restart") == "no"
    for name in ("api", "worker", "beat"):
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
        assert deps["minio-init"]["condition"] == "service_completed_successfully", name


def test_api_serves_on_all_interfaces(services: dict[str, dict[str, Any]]) -> None:
    assert services["api"]["command"] == ["api", "--host", "0.0.0.0", "--port", "8000"]


def test_minio_init_creates_the_storage_bucket(services: dict[str, dict[str, Any]]) -> None:
    storage = urlsplit(_env(services["api"])["ORCH_STORAGE_URL"])
    assert storage.scheme == "s3"
    script = " ".join(services["minio-init"]["command"])
    assert re.search(rf"mc mb --ignore-existing \S+/{re.escape(storage.netloc)}\b", script)
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"


def _command_problem(args: list[str]) -> str | None:
    """Why `orchestrator ARGS` does not parse with the real CLI, or None (no callback runs)."""
    command: click.Command = main
    path = ["orchestrator"]
    while isinstance(command, click.Group):
        if not args:
            return f"`{' '.join(path)}` needs a subcommand"
        name, args = args[0], args[1:]
        sub = command.commands.get(name)
        if sub is None:
            return f"`{' '.join(path)}` has no command {name!r} (it has {', '.join(sorted(command.commands))})"
        command, path = sub, [*path, name]
    try:
        with command.make_context(" ".join(path), list(args)):
            return None
    except click.UsageError as exc:
        return f"`{' '.join(path)}`: {exc.format_message()}"


def test_every_command_is_a_real_cli_command(services: dict[str, dict[str, Any]]) -> None:
    problems = {name: _command_problem(list(svc["command"])) for name, svc in _ours(services).items()}
    assert {name: p for name, p in problems.items() if p} == {}


def test_orchestrator_services_share_one_environment(services: dict[str, dict[str, Any]]) -> None:
    envs = [_env(svc) for svc in _ours(services).values()]
    assert all(env == envs[0] for env in envs)
    assert envs[0]["ORCH_LOG_JSON"] == "true"
    assert envs[0]["ORCH_BROKER_URL"] == "redis://redis:6379/0"


def test_every_variable_is_a_setting(services: dict[str, dict[str, Any]]) -> None:
    fields = Settings.model_fields
    aliases = {f.validation_alias: name for name, f in fields.items() if isinstance(f.validation_alias, str)}
    for variable in _env(services["api"]):
        if variable.startswith("ORCH_"):
            assert variable.removeprefix("ORCH_").lower() in fields, f"{variable} is not a setting"
        elif variable.startswith("AWS_"):
            assert variable in AWS_VARIABLES, f"{variable} is not a standard AWS variable boto3 reads"
        else:
            assert variable in aliases, f"{variable} is neither ORCH_* nor a settings alias"


def test_defaults_make_valid_settings(services: dict[str, dict[str, Any]]) -> None:
    # With only the required variables set, the environment must validate as Settings.
    env = {k: _interpolate(v) for k, v in _env(services["api"]).items()}
    fields = Settings.model_fields
    aliases = {f.validation_alias: name for name, f in fields.items() if isinstance(f.validation_alias, str)}
    values = {k.removeprefix("ORCH_").lower(): v for k, v in env.items() if k.startswith("ORCH_")}
    values.update({aliases[k]: v for k, v in env.items() if k in aliases})
    # model_validate reads only `values`, not this process's environment.
    settings = Settings.model_validate(values)
    assert settings.log_json is True
    assert settings.resolved_database_url.startswith("postgresql+psycopg://")
    assert settings.fal_queue_url == "https://queue.fal.run"
    assert settings.runware_api_url == "https://api.runware.ai/v1"
    assert not settings.is_embedded


def _url_password(value: str) -> str | None:
    m = URL_PASSWORD.match(value)
    return m.group("password") if m else None


def _credential_references(services: dict[str, dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(where, variable name, raw value) of every credential-like setting in every service."""
    found = []
    for name, svc in services.items():
        for variable, value in _env(svc).items():
            if SECRET_NAME.search(variable):
                found.append((f"{name}.{variable}", variable, value))
            elif (password := _url_password(value)) is not None:
                found.append((f"{name}.{variable} password", variable, password))
    return found


def test_no_literal_secrets(services: dict[str, dict[str, Any]]) -> None:
    checked = _credential_references(services)
    assert any(variable == "ORCH_SECRET_KEY" for _, variable, _ in checked)
    for where, _variable, value in checked:
        ref = REFERENCE.match(value)
        assert ref, f"{where} must be a ${{VAR}} reference to the host environment, not {value!r}"
        var, op, arg = ref.group("var"), ref.group("op"), ref.group("arg")
        if op in (":-", "-") and arg:
            assert var in LOCAL_DEV_CREDENTIALS, f"{where}: only local dev credentials may have a default"


def test_required_and_optional_secrets(services: dict[str, dict[str, Any]]) -> None:
    env = _env(services["api"])
    assert env["ORCH_SECRET_KEY"].startswith("${ORCH_SECRET_KEY:?")
    assert env["ORCH_PUBLIC_URL"].startswith("${ORCH_PUBLIC_URL:?")
    assert env["FAL_KEY"] == "${FAL_KEY:-}"
    assert env["RUNWARE_API_KEY"] == "${RUNWARE_API_KEY:-}"


def test_dev_credentials_agree(services: dict[str, dict[str, Any]]) -> None:
    # The app must log in with exactly what the postgres and minio containers were given.
    env = _env(services["api"])
    assert _url_password(env["ORCH_DATABASE_URL"]) == _env(services["postgres"])["POSTGRES_PASSWORD"]
    minio = _env(services["minio"])
    assert minio["MINIO_ROOT_USER"] == env["AWS_ACCESS_KEY_ID"]
    assert minio["MINIO_ROOT_PASSWORD"] == env["AWS_SECRET_ACCESS_KEY"]
    assert _env(services["minio-init"]) == minio


def test_only_loopback_or_api_ports(services: dict[str, dict[str, Any]]) -> None:
    # Postgres, Redis and MinIO stay off the host's public interfaces; the API is the way in.
    for name, svc in services.items():
        for port in svc.get("ports") or []:
            if name != "api":
                assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def _dockerfile() -> list[str]:
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_dockerfile() -> None:
    lines = _dockerfile()
    assert lines[0] == "FROM python:3.11-slim"
    entrypoints = [line for line in lines if line.startswith("ENTRYPOINT ")]
    assert len(entrypoints) == 1 and json.loads(entrypoints[0].removeprefix("ENTRYPOINT ")) == ["orchestrator"]
    assert any(line.startswith("RUN pip install .") for line in lines)
    users = [line.removeprefix("USER ").strip() for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
