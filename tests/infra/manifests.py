"""Reading the deployment files the way their tools do: YAML documents, pod specs, env vars."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer.main
import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
K8S = INFRA / "k8s"
KUSTOMIZATION = K8S / "kustomization.yaml"
SECRETS_EXAMPLE = K8S / "secrets.example.yaml"
COMPOSE = INFRA / "docker-compose.yml"

# kubelet's $(VAR) references in env values, command and args (a shell's $(cmd ...) is not one).
VAR_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job", "CronJob")


@dataclass(frozen=True)
class Document:
    """One Kubernetes object of a manifest file."""

    path: Path
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.body["kind"])

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    @property
    def id(self) -> str:
        return f"{self.path.name}:{self.kind}/{self.name}"


def load_documents(path: Path) -> list[Document]:
    """Every non-empty YAML document of a file."""
    with path.open() as handle:
        return [Document(path, body) for body in yaml.safe_load_all(handle) if body]


def manifest_files() -> list[Path]:
    """Every Kubernetes manifest under infra/k8s (the kustomization itself aside)."""
    return sorted(p for p in K8S.glob("*.yaml") if p != KUSTOMIZATION)


def all_documents() -> list[Document]:
    """Every object of every manifest, the example Secrets included."""
    return [doc for path in manifest_files() for doc in load_documents(path)]


def deployed_documents() -> list[Document]:
    """The objects `kubectl apply -k infra/k8s` creates."""
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text())
    return [doc for name in kustomization["resources"] for doc in load_documents(K8S / name)]


def pod_template(doc: Document) -> dict[str, Any] | None:
    """The pod template of a workload (CronJob: its job's), None for other kinds."""
    spec = doc.body.get("spec", {})
    if doc.kind == "CronJob":
        return spec["jobTemplate"]["spec"]["template"]
    if doc.kind in WORKLOAD_KINDS:
        return spec["template"]
    return None


def workloads(docs: list[Document]) -> Iterator[tuple[Document, dict[str, Any]]]:
    """(workload, its pod template) for every workload."""
    for doc in docs:
        template = pod_template(doc)
        if template is not None:
            yield doc, template


def containers(template: dict[str, Any]) -> list[dict[str, Any]]:
    """Init containers and containers of a pod template."""
    spec = template["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """Whether a matchLabels selector selects these labels."""
    return all(labels.get(key) == value for key, value in selector.items())


def config_maps(docs: list[Document]) -> dict[str, dict[str, str]]:
    """ConfigMap name -> its data."""
    return {doc.name: doc.body.get("data", {}) for doc in docs if doc.kind == "ConfigMap"}


def container_env(
    container: dict[str, Any], maps: dict[str, dict[str, str]]
) -> dict[str, str | None]:
    """The container's environment as kubelet builds it: envFrom ConfigMaps first, then env in
    order with $(VAR) expanded against what is defined before it. Values from Secrets or the
    downward API are None (not known here)."""
    env: dict[str, str | None] = {}
    for source in container.get("envFrom", []):
        env.update(maps[source["configMapRef"]["name"]])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = expand(item["value"], env)
        else:
            env[item["name"]] = None
    return env


def expand(text: str, env: dict[str, str | None]) -> str:
    """kubelet's expansion of $(VAR) (unknown or unresolved references stay as they are)."""

    def one(match: re.Match[str]) -> str:
        value = env.get(match.group(1))
        return match.group(0) if value is None else value

    return VAR_REFERENCE.sub(one, text)


def cli_options(app: typer.Typer, argv: list[str]) -> tuple[str, set[str]]:
    """(command name, long options it accepts) of the typer command ``argv`` starts with."""
    group = typer.main.get_command(app)
    command = group.commands[argv[0]]  # type: ignore[attr-defined]
    options = {opt for param in command.params for opt in getattr(param, "opts", [])}
    options |= {opt for param in command.params for opt in getattr(param, "secondary_opts", [])}
    return command.name, options


def long_options(argv: list[str]) -> list[str]:
    """The --options of an argument list."""
    return [arg.split("=", 1)[0] for arg in argv if arg.startswith("--")]


def settings_env_names() -> set[str]:
    """SCORING_<FIELD> of every field of the service's Settings."""
    from scoring_service.core.settings import Settings

    prefix = str(Settings.model_config.get("env_prefix", ""))
    return {f"{prefix}{name}".upper() for name in Settings.model_fields}


def probe_answers(paths: list[str]) -> dict[str, int]:
    """Status of GET on each path of the scoring service, built but not started (no lifespan:
    no store, no model). A path without a route answers 404; a probe route answers (ready says
    503 until a model is loaded)."""
    from fastapi.testclient import TestClient

    from scoring_service.api.app import create_app
    from scoring_service.core.settings import Settings

    client = TestClient(create_app(Settings()))  # not entered: the lifespan does not run
    return {path: client.get(path).status_code for path in paths}
