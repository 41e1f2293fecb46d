"""infra/docker-compose.yml, checked without a container engine: its structure, the files it
names, and the settings and CLI options it passes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.infra.manifests import COMPOSE, cli_options, long_options, settings_env_names

# Compose's own interpolation, resolved as in a shell with the variables unset: ${X:-d} -> d,
# ${X:?msg} -> a sample value (compose would refuse to start), ${X} -> "".
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?([-?])([^}]*))?\}")
SAMPLE_HASH = "0" * 64
LONG_RUNNING = {"redis", "postgres", "scoring", "stream-consumer"}
ONE_SHOT = {"generate": "data", "aggregate": "data", "apply": "apply", "materialize": "materialize"}


def interpolate(value: str) -> str:
    def one(match: re.Match[str]) -> str:
        kind, default = match.group(2), match.group(3) or ""
        if kind == "?":
            return SAMPLE_HASH
        return default if kind == "-" else ""

    return INTERPOLATION.sub(one, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def argv(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return command.split() if isinstance(command, str) else list(command)


def test_services_and_profiles(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) >= LONG_RUNNING
    for name in LONG_RUNNING:
        assert "profiles" not in services[name], name  # `docker compose up` starts them
    for name, profile in ONE_SHOT.items():
        assert profile in services[name]["profiles"], name
    # Every service is either started by `up` or a one-shot job behind a profile.
    assert set(services) - LONG_RUNNING == {
        name for name, service in services.items() if service.get("profiles")
    }


def test_builds_name_dockerfiles_and_targets_that_exist(
    services: dict[str, dict[str, Any]],
) -> None:
    built = 0
    for name, service in services.items():
        build = service.get("build")
        if build is None:
            continue
        built += 1
        context = (COMPOSE.parent / build["context"]).resolve()
        dockerfile = context / build["dockerfile"]
        assert dockerfile.is_file(), (name, dockerfile)
        stages = re.findall(r"^FROM \S+ AS (\S+)$", dockerfile.read_text(), flags=re.MULTILINE)
        assert len(stages) >= 2, f"{dockerfile} is meant to be multi-stage"
        if "target" in build:
            assert build["target"] in stages, name
        assert (context / "pyproject.toml").is_file()
    assert built >= 3


def test_mounted_host_files_exist(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./") and Path(source).suffix:
                assert (COMPOSE.parent / source).is_file(), (name, source)


def test_dependencies_are_healthy_services(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services, (name, dependency)
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], dependency


def test_scoring_environment_is_settings(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from scoring_service.core.settings import Settings

    fields = settings_env_names()
    env = {k: interpolate(str(v)) for k, v in services["scoring"]["environment"].items()}
    for service in services.values():
        for key in service.get("environment", {}):
            if key.startswith("SCORING_"):
                assert key in fields, key
    for key, value in env.items():
        if key.startswith("SCORING_"):
            monkeypatch.setenv(key, value)
    settings = Settings()
    assert str(settings.feature_store_yaml) == "feature_repo/fraud/feature_store.sql.yaml"
    assert settings.api_key_hashes == (SAMPLE_HASH,)
    # The Feast yaml's own variables are set for the service and for every pipeline job.
    for name in ("scoring", "stream-consumer", *ONE_SHOT):
        environment = services[name]["environment"]
        assert {"REDIS_CONNECTION_STRING", "FEAST_REGISTRY_URL"} <= set(environment), name
    assert env["FEAST_REGISTRY_URL"].startswith("postgresql+psycopg://")


def test_registry_url_matches_the_postgres_service(services: dict[str, dict[str, Any]]) -> None:
    postgres = services["postgres"]["environment"]
    url = services["scoring"]["environment"]["FEAST_REGISTRY_URL"]
    user, password, db = (postgres[f"POSTGRES_{k}"] for k in ("USER", "PASSWORD", "DB"))
    assert url == f"postgresql+psycopg://{user}:{password}@postgres:5432/{db}"


@pytest.mark.parametrize("name", ["stream-consumer", "generate", "aggregate", "materialize"])
def test_pipeline_commands_are_real(services: dict[str, dict[str, Any]], name: str) -> None:
    from feature_pipelines.cli import app

    command = argv(services[name])
    assert command[:3] == ["python", "-m", "feature_pipelines"]
    found, options = cli_options(app, command[3:])
    assert found == command[3]
    assert set(long_options(command[4:])) <= options


def test_apply_runs_the_plain_feast_cli_in_the_repository(
    services: dict[str, dict[str, Any]],
) -> None:
    apply = services["apply"]
    assert argv(apply) == ["feast", "-f", "feature_store.sql.yaml", "apply"]
    assert apply["working_dir"] == "/app/feature_repo/fraud"
