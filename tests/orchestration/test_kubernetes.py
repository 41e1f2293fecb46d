"""The orchestrator's Kubernetes files (infra/orchestration/): valid objects of Kubernetes 1.31
(kubernetes-validate, offline, strict), and consistent with the platform's manifests, the
Dagster instance of `make orchestrate`, the definitions and the image."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from dagster import DagsterInstance

from orchestration.resources import ENV_PREFIX, PlatformResource
from tests.infra.manifests import (
    INFRA,
    Document,
    all_documents,
    config_maps,
    container_env,
    containers,
    load_documents,
    matches,
    pod_template,
)

KUBERNETES_VERSION = "1.31.0"
HERE = INFRA / "orchestration"
KUSTOMIZATION = HERE / "kustomization.yaml"
MANIFESTS = sorted(
    p for p in HERE.glob("*.yaml") if p.name not in ("kustomization.yaml", "dagster.yaml")
)
DOCS = [doc for path in MANIFESTS for doc in load_documents(path)]
PLATFORM = all_documents()  # infra/k8s, example Secrets included


def the(kind: str, name: str, docs: list[Document] = DOCS) -> Document:
    (doc,) = [d for d in docs if d.kind == kind and d.name == name]
    return doc


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.id)
def test_every_document_is_a_valid_object(doc: Document) -> None:
    try:
        kubernetes_validate.validate(doc.body, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{doc.id}: {where}: {exc.message}")


def test_the_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text())
    assert {HERE / name for name in kustomization["resources"]} == set(MANIFESTS)
    assert kustomization["namespace"] == "fraud-scoring"  # the platform's (infra/k8s)
    assert [image["name"] for image in kustomization["images"]] == ["fraud-orchestration"]


def test_references_resolve_in_the_platform() -> None:
    deployment = the("Deployment", "fraud-orchestration")
    template = pod_template(deployment)
    assert template is not None
    everything = PLATFORM + DOCS
    claims = {d.name for d in everything if d.kind == "PersistentVolumeClaim"}
    maps = {d.name for d in everything if d.kind == "ConfigMap"}
    secrets = {
        d.name: d.body.get("stringData", d.body.get("data", {}))
        for d in everything
        if d.kind == "Secret"
    }
    for volume in template["spec"]["volumes"]:
        if "persistentVolumeClaim" in volume:
            assert volume["persistentVolumeClaim"]["claimName"] in claims, volume
        if "configMap" in volume:
            assert volume["configMap"]["name"] in maps, volume
    mounted = {v["name"] for v in template["spec"]["volumes"]}
    for container in containers(template):
        assert container["image"] == "fraud-orchestration:latest"
        for mount in container.get("volumeMounts", []):
            assert mount["name"] in mounted, (container["name"], mount)
        for item in container.get("env", []):
            ref = item.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["key"] in secrets[ref["name"]], ref
    # The UI's Service selects the pod; the store policies select the stores' pods.
    service = the("Service", "fraud-orchestration")
    assert matches(service.body["spec"]["selector"], template["metadata"]["labels"])
    labels = [t["metadata"]["labels"] for t in (pod_template(d) for d in PLATFORM) if t]
    for policy in (d for d in DOCS if d.kind == "NetworkPolicy"):
        selector = policy.body["spec"]["podSelector"]["matchLabels"]
        assert any(matches(selector, lbl) for lbl in [*labels, template["metadata"]["labels"]])


def test_the_code_server_reads_the_platform_as_the_resource_expects() -> None:
    template = pod_template(the("Deployment", "fraud-orchestration"))
    assert template is not None
    maps = config_maps(PLATFORM + DOCS)
    code = next(c for c in containers(template) if c["name"] == "code-server")
    env = container_env(code, maps)
    fields = {f"{ENV_PREFIX}{name.upper()}" for name in PlatformResource.model_fields}
    declared = {k for k in env if k.startswith(ENV_PREFIX)} - {"ORCHESTRATION_SCHEDULES"}
    assert declared <= fields, declared - fields
    platform = PlatformResource.from_env({k: v for k, v in env.items() if v is not None})
    mounts = {m["mountPath"] for m in code["volumeMounts"]}
    # Every path the resource names is on a volume the container mounts.
    for path in (
        platform.path(platform.transactions),
        platform.work,
        platform.path(platform.model_root),
        platform.repo / "data",
    ):
        assert any(str(path).startswith(m) for m in mounts), path
    assert str(platform.store_yaml) in mounts
    assert (
        env["REDIS_CONNECTION_STRING"]
        == f"{maps['fraud-platform-config']['REDIS_NODES']},password=$(REDIS_PASSWORD)"
    )
    assert code["args"][:2] == ["-m", "orchestration.definitions"]


def test_one_instance_config_for_the_laptop_and_the_cluster(tmp_path: Path) -> None:
    config = the("ConfigMap", "fraud-orchestration-config").body["data"]
    assert config["dagster.yaml"] == (HERE / "dagster.yaml").read_text()
    workspace = yaml.safe_load(config["workspace.yaml"])
    (location,) = workspace["load_from"]
    template = pod_template(the("Deployment", "fraud-orchestration"))
    assert template is not None
    code = next(c for c in containers(template) if c["name"] == "code-server")
    assert (
        location["grpc_server"]["port"]
        == code["ports"][0]["containerPort"]
        == int(code["args"][-1])
    )
    # Dagster reads the file: a queued run coordinator, one feature-store job at a time.
    shutil.copy(HERE / "dagster.yaml", tmp_path / "dagster.yaml")
    with DagsterInstance.from_config(str(tmp_path)) as instance:
        limits = instance.get_concurrency_config().run_queue_config.tag_concurrency_limits
    assert limits == [{"key": "platform/feature-store", "limit": 1}]


def test_the_image_installs_from_its_lock() -> None:
    dockerfile = (HERE / "Dockerfile").read_text()
    assert "--require-hashes -r infra/locks/orchestrate.txt" in dockerfile
    for line in re.findall(r"pip install .*", dockerfile):
        assert "--require-hashes" in line or "--no-deps" in line, line
    for package in ("feature_repo", "feature_pipelines", "models", "orchestration"):
        assert f"COPY {package} {package}" in dockerfile
    assert "models/packages" in (HERE / "Dockerfile.dockerignore").read_text().split()
    assert (
        "# lock-extras: orchestrate,train,cpu" in (INFRA / "locks" / "orchestrate.txt").read_text()
    )
