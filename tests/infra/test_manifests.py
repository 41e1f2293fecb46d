"""The Kubernetes manifests: valid objects of the stated Kubernetes version, and consistent.

Schemas come bundled with kubernetes-validate (no network). Past the schemas, the checks are
the mistakes a schema cannot see: a Service or PDB that selects no pod, an HPA aimed at nothing,
a SCORING_* variable the service does not read, a probe on a route that does not exist, a Secret
key or ConfigMap no manifest provides, a CLI option the pipelines do not take.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.infra.manifests import (
    K8S,
    KUSTOMIZATION,
    ROOT,
    SECRETS_EXAMPLE,
    Document,
    all_documents,
    cli_options,
    config_maps,
    container_env,
    containers,
    deployed_documents,
    expand,
    load_documents,
    long_options,
    manifest_files,
    matches,
    pod_template,
    probe_answers,
    settings_env_names,
    workloads,
)

# The oldest Kubernetes the manifests target (every maintained managed offering runs it or
# later); strict: unknown fields are errors, not silently dropped by the API server.
KUBERNETES_VERSION = "1.31.0"
SQL_YAML = "feature_repo/fraud/feature_store.sql.yaml"
CLUSTER_YAML = "feature_repo/fraud/feature_store.cluster.yaml"

DOCS = all_documents()
DEPLOYED = deployed_documents()


def by_kind(kind: str, docs: list[Document] = DEPLOYED) -> dict[str, Document]:
    return {doc.name: doc for doc in docs if doc.kind == kind}


def the(kind: str, name: str) -> Document:
    return by_kind(kind)[name]


def container_of(doc: Document, name: str) -> dict[str, Any]:
    template = pod_template(doc)
    assert template is not None, doc.id
    return next(c for c in containers(template) if c["name"] == name)


# --- files and schemas ------------------------------------------------------------------------


def test_kustomization_lists_every_manifest_but_the_example_secrets() -> None:
    resources = yaml.safe_load(KUSTOMIZATION.read_text())["resources"]
    assert len(resources) == len(set(resources))
    listed = {K8S / name for name in resources}
    assert listed == set(manifest_files()) - {SECRETS_EXAMPLE}


def test_kustomization_itself() -> None:
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text())
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    namespaces = [doc for doc in DEPLOYED if doc.kind == "Namespace"]
    assert [doc.name for doc in namespaces] == [kustomization["namespace"]]
    images = {
        c["image"].split(":")[0]
        for _, template in workloads(DEPLOYED)
        for c in containers(template)
        if c["image"].startswith("fraud-")
    }
    assert images == {image["name"] for image in kustomization["images"]}


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: doc.id)
def test_valid_against_kubernetes_schema(doc: Document) -> None:
    try:
        kubernetes_validate.validate(doc.body, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{doc.id}: {where}: {exc.message}")


def test_names_are_unique_per_kind() -> None:
    counts = Counter((doc.kind, doc.name) for doc in DOCS)
    assert [key for key, n in counts.items() if n > 1] == []


def test_no_object_sets_its_own_namespace() -> None:
    # The kustomization's namespace applies to all of them; a hard-coded one would escape it.
    assert [doc.id for doc in DOCS if "namespace" in doc.body["metadata"]] == []


# --- cross-references -----------------------------------------------------------------------


def test_workload_selectors_select_their_own_pods() -> None:
    for doc, template in workloads(DEPLOYED):
        if doc.kind in ("Deployment", "StatefulSet"):
            selector = doc.body["spec"]["selector"]["matchLabels"]
            assert matches(selector, template["metadata"]["labels"]), doc.id


def test_every_service_selects_pods_with_its_target_ports() -> None:
    for service in by_kind("Service").values():
        selector = service.body["spec"]["selector"]
        selected = [
            (doc, t) for doc, t in workloads(DEPLOYED) if matches(selector, t["metadata"]["labels"])
        ]
        assert len(selected) == 1, f"{service.id} selects {[d.id for d, _ in selected]}"
        _, template = selected[0]
        ports = {
            port.get("name"): port["containerPort"]
            for c in containers(template)
            for port in c.get("ports", [])
        }
        for port in service.body["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert target in ports or target in ports.values(), f"{service.id}: {target}"


def test_statefulsets_name_their_headless_or_plain_service() -> None:
    services = by_kind("Service")
    for doc in by_kind("StatefulSet").values():
        service = services[doc.body["spec"]["serviceName"]]
        assert matches(
            service.body["spec"]["selector"], doc.body["spec"]["template"]["metadata"]["labels"]
        )


def test_hpa_targets_the_scoring_deployment_with_cpu_requests() -> None:
    for hpa in by_kind("HorizontalPodAutoscaler").values():
        target = hpa.body["spec"]["scaleTargetRef"]
        assert (target["apiVersion"], target["kind"]) == ("apps/v1", "Deployment")
        deployment = the("Deployment", target["name"])
        # A CPU utilization target is a share of the request: every container needs one.
        for container in deployment.body["spec"]["template"]["spec"]["containers"]:
            assert "cpu" in container["resources"]["requests"], deployment.id
        metrics = hpa.body["spec"]["metrics"]
        assert [m["resource"]["name"] for m in metrics if m["type"] == "Resource"] == ["cpu"]
        assert hpa.body["spec"]["minReplicas"] >= 2  # one replica cannot be drained safely
    assert set(by_kind("HorizontalPodAutoscaler")) == {"fraud-scoring"}


def test_pod_disruption_budgets_select_replicated_workloads() -> None:
    for pdb in by_kind("PodDisruptionBudget").values():
        selector = pdb.body["spec"]["selector"]["matchLabels"]
        selected = [
            doc for doc, t in workloads(DEPLOYED) if matches(selector, t["metadata"]["labels"])
        ]
        assert len(selected) == 1, pdb.id
        assert selected[0].kind in ("Deployment", "StatefulSet")
        assert selected[0].body["spec"]["replicas"] > 1


def test_network_policies_name_pods_that_exist() -> None:
    labels = [t["metadata"]["labels"] for _, t in workloads(DEPLOYED)]
    for policy in by_kind("NetworkPolicy").values():
        spec = policy.body["spec"]
        assert any(matches(spec["podSelector"]["matchLabels"], lab) for lab in labels), policy.id
        for rule in spec["ingress"]:
            for peer in rule["from"]:
                selector = peer.get("podSelector", {}).get("matchLabels", {})
                if "app.kubernetes.io/name" in selector:
                    assert any(matches(selector, lab) for lab in labels), (policy.id, selector)
    protected = {
        p.body["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
        for p in by_kind("NetworkPolicy").values()
    }
    assert {"fraud-redis", "fraud-stream-redis", "fraud-registry-db"} <= protected


def test_secret_and_config_references_exist() -> None:
    secrets = {
        doc.name: set(doc.body.get("stringData", {})) | set(doc.body.get("data", {}))
        for doc in load_documents(SECRETS_EXAMPLE)
    }
    maps = config_maps(DEPLOYED)
    claims = set(by_kind("PersistentVolumeClaim"))
    for doc, template in workloads(DEPLOYED):
        for container in containers(template):
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in maps, doc.id
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets.get(ref["name"], set()), (doc.id, ref)
        for volume in template["spec"].get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, doc.id
            if "configMap" in volume:
                assert volume["configMap"]["name"] in maps, doc.id
        mounts = {m["name"] for c in containers(template) for m in c.get("volumeMounts", [])}
        declared = {v["name"] for v in template["spec"].get("volumes", [])}
        claim_templates = {
            t["metadata"]["name"] for t in doc.body["spec"].get("volumeClaimTemplates", [])
        }
        assert mounts <= declared | claim_templates, doc.id


def test_variable_references_resolve() -> None:
    """Every $(VAR) in env, command and args names a variable defined before it."""
    maps = config_maps(DEPLOYED)
    for doc, template in workloads(DEPLOYED):
        for container in containers(template):
            defined: set[str] = set()
            for source in container.get("envFrom", []):
                defined |= set(maps[source["configMapRef"]["name"]])
            for item in container.get("env", []):
                refs = set(re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", item.get("value", "")))
                assert refs <= defined, (doc.id, item["name"], refs - defined)
                defined.add(item["name"])
            for text in [*container.get("command", []), *container.get("args", [])]:
                refs = set(re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", text))
                assert refs <= defined, (doc.id, refs - defined)


# --- the scoring service --------------------------------------------------------------------


def scoring_env() -> dict[str, str | None]:
    return container_env(
        container_of(the("Deployment", "fraud-scoring"), "scoring"), config_maps(DEPLOYED)
    )


def test_scoring_variables_are_settings_fields() -> None:
    fields = settings_env_names()
    names = set(scoring_env())
    for _doc, template in workloads(DEPLOYED):
        for container in containers(template):
            names |= {item["name"] for item in container.get("env", [])}
    for values in config_maps(DEPLOYED).values():
        names |= set(values)
    unknown = sorted(n for n in names if n.startswith("SCORING_") and n not in fields)
    assert unknown == []


def test_scoring_config_is_accepted_by_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from scoring_service.core.settings import Settings

    for name, value in scoring_env().items():
        if name.startswith("SCORING_") and value is not None:
            monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.deadline_ms == 50
    assert str(settings.feature_store_yaml) == CLUSTER_YAML
    assert settings.host == "0.0.0.0"


def test_scoring_reads_the_sql_registry_and_redis_from_the_environment() -> None:
    env = scoring_env()
    assert env["SCORING_FEATURE_STORE_YAML"] == env["FEAST_FS_YAML"]
    assert env["SCORING_FEATURE_REPO"] == env["FEAST_REPO"] == "feature_repo/fraud"
    container = container_of(the("Deployment", "fraud-scoring"), "scoring")
    refs = {i["name"]: i.get("valueFrom", {}) for i in container["env"]}
    assert refs["FEAST_REGISTRY_URL"]["secretKeyRef"]["name"] == "fraud-registry-db"
    assert refs["SCORING_API_KEY_HASHES"]["secretKeyRef"]["name"] == "fraud-scoring-keys"
    # Startup nodes of the cluster, password spliced in from the Secret.
    redis = str(env["REDIS_CONNECTION_STRING"])
    assert redis.startswith("fraud-redis-0.fraud-redis:6379,")
    assert redis.endswith(",password=$(REDIS_PASSWORD)")
    # No file registry: nothing mounted in the repository but the feature_store yaml.
    mounts = [m["mountPath"] for m in container["volumeMounts"]]
    assert [path for path in mounts if path.startswith("/app/feature_repo")] == [
        f"/app/{CLUSTER_YAML}"
    ]


def test_cluster_yaml_is_the_sql_yaml_but_for_the_redis_type() -> None:
    """The mounted feature_store yaml is feature_store.sql.yaml with redis_type redis_cluster:
    same project, SQL registry on ${FEAST_REGISTRY_URL}, ${REDIS_CONNECTION_STRING}."""
    sql = yaml.safe_load((ROOT / SQL_YAML).read_text())
    cluster = yaml.safe_load(config_maps(DEPLOYED)["fraud-feature-store"][Path(CLUSTER_YAML).name])
    assert cluster["online_store"].pop("redis_type") == "redis_cluster"
    assert sql["online_store"].pop("redis_type") == "redis"
    assert cluster == sql
    assert sql["registry"]["registry_type"] == "sql"
    assert sql["registry"]["path"] == "${FEAST_REGISTRY_URL}"
    assert sql["online_store"]["connection_string"] == "${REDIS_CONNECTION_STRING}"


def test_every_feature_store_user_mounts_the_cluster_yaml() -> None:
    for doc, template in workloads(DEPLOYED):
        for container in containers(template):
            env = container_env(container, config_maps(DEPLOYED))
            words = [*container.get("command", []), *container.get("args", [])]
            argv = [expand(arg, env) for arg in words]
            opens_store = "FEAST_REGISTRY_URL" in env
            mounted = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
            if not opens_store:
                assert f"/app/{CLUSTER_YAML}" not in mounted, doc.id
                continue
            mount = mounted[f"/app/{CLUSTER_YAML}"]
            assert mount["subPath"] == Path(CLUSTER_YAML).name, doc.id
            volume = next(v for v in template["spec"]["volumes"] if v["name"] == mount["name"])
            assert volume["configMap"]["name"] == "fraud-feature-store", doc.id
            assert (
                CLUSTER_YAML in argv
                or Path(CLUSTER_YAML).name in argv
                or (env.get("SCORING_FEATURE_STORE_YAML") == CLUSTER_YAML)
            ), doc.id


def test_probes_hit_routes_of_the_service() -> None:
    container = container_of(the("Deployment", "fraud-scoring"), "scoring")
    ports = {p["name"] for p in container["ports"]}
    probes = {kind: container[kind] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert probes["livenessProbe"]["httpGet"]["path"] == "/health/live"
    answers = probe_answers([probe["httpGet"]["path"] for probe in probes.values()])
    assert answers == {"/health/live": 200, "/health/ready": 503}
    for probe in probes.values():
        assert probe["httpGet"]["port"] in ports
    # Start-up measured 10-23 s, 92 s on a loaded machine: the startup probe allows more.
    startup = probes["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120


def test_scoring_drains_gracefully() -> None:
    deployment = the("Deployment", "fraud-scoring")
    spec = deployment.body["spec"]["template"]["spec"]
    container = container_of(deployment, "scoring")
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    # preStop sleep + uvicorn's graceful shutdown (timeout_graceful_shutdown where the service
    # starts uvicorn) fit in the grace period.
    found = [
        int(match)
        for path in (ROOT / "scoring_service").rglob("*.py")
        for match in re.findall(r"timeout_graceful_shutdown=(\d+)", path.read_text())
    ]
    assert found, "the service should bound uvicorn's graceful shutdown"
    graceful = max(found)
    assert int(command[1]) + graceful < spec["terminationGracePeriodSeconds"]
    assert deployment.body["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    anti = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert (
        anti[0]["podAffinityTerm"]["labelSelector"]["matchLabels"]
        == (deployment.body["spec"]["selector"]["matchLabels"])
    )
    assert container["command"] == ["python", "-m", "scoring_service", "serve"]


def test_scoring_resources_follow_the_measurements() -> None:
    resources = container_of(the("Deployment", "fraud-scoring"), "scoring")["resources"]
    # One event loop: one core requested (measured 1.2-2.5 ms CPU per score, one core saturated).
    assert resources["requests"]["cpu"] == "1"
    # Measured peak 337-409 MiB (after 10,000-row batches): request above it, limit well above.
    assert resources["requests"]["memory"] == "512Mi"
    assert resources["limits"]["memory"] == "1Gi"


# --- every pod ------------------------------------------------------------------------------


@pytest.mark.parametrize("doc", [doc for doc, _ in workloads(DEPLOYED)], ids=lambda doc: doc.id)
def test_pods_run_restricted(doc: Document) -> None:
    """Pod Security 'restricted', which namespace.yaml enforces, plus resource bounds."""
    template = pod_template(doc)
    assert template is not None
    pod = template["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod.get("automountServiceAccountToken") is False
    for container in containers(template):
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        assert security.get("privileged", False) is False
        assert {"cpu", "memory"} <= set(container["resources"]["requests"]), doc.id
        assert "memory" in container["resources"]["limits"], doc.id
    for volume in pod.get("volumes", []):
        assert "hostPath" not in volume


# --- stores ---------------------------------------------------------------------------------


def redis_conf() -> dict[str, str]:
    text = config_maps(DEPLOYED)["fraud-redis-config"]["redis.conf"]
    pairs = (line.split(None, 1) for line in text.splitlines() if line and line[0] != "#")
    return {key: value for key, value in pairs if key != "save"}


def test_redis_cluster_shape() -> None:
    statefulset = the("StatefulSet", "fraud-redis")
    assert statefulset.body["spec"]["replicas"] == 6
    conf = redis_conf()
    assert conf["cluster-enabled"] == "yes"
    assert conf["maxmemory-policy"] == "noeviction"
    service = the("Service", statefulset.body["spec"]["serviceName"])
    assert service.body["spec"]["clusterIP"] == "None"
    assert service.body["spec"]["publishNotReadyAddresses"] is True
    # The init Job forms the cluster over exactly the StatefulSet's pods, one replica each.
    job = container_of(the("Job", "fraud-redis-cluster-init"), "create")
    nodes = next(i["value"] for i in job["env"] if i["name"] == "NODES").split()
    pods = [f"fraud-redis-{i}.fraud-redis:6379" for i in range(6)]
    assert nodes == pods
    assert "--cluster-replicas 1" in job["args"][0]
    # Every client starts from the same nodes.
    platform = config_maps(DEPLOYED)["fraud-platform-config"]
    assert platform["REDIS_NODES"].split(",") == pods


def test_postgres_registry() -> None:
    statefulset = the("StatefulSet", "fraud-registry-db")
    container = container_of(statefulset, "postgres")
    refs = {i["name"]: i.get("valueFrom", {}).get("secretKeyRef", {}) for i in container["env"]}
    assert {refs[k].get("name") for k in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB")} == {
        "fraud-registry-db"
    }
    example = next(d for d in load_documents(SECRETS_EXAMPLE) if d.name == "fraud-registry-db")
    url = example.body["stringData"]["registry_url"]
    assert url.startswith("postgresql+psycopg://") and "@fraud-registry-db:5432/" in url


# --- pipelines: commands the CLIs accept ------------------------------------------------------


def pipeline_argv(doc: Document, name: str) -> list[str]:
    container = container_of(doc, name)
    env = container_env(container, config_maps(DEPLOYED))
    return [expand(arg, env) for arg in [*container["command"], *container.get("args", [])]]


@pytest.mark.parametrize(
    ("kind", "name", "container", "command"),
    [
        ("Deployment", "fraud-stream-consumer", "consumer", "stream"),
        ("CronJob", "fraud-materialize", "materialize", "materialize"),
    ],
)
def test_pipeline_commands_are_real(kind: str, name: str, container: str, command: str) -> None:
    from feature_pipelines.cli import app

    argv = pipeline_argv(the(kind, name), container)
    assert argv[:3] == ["python", "-m", "feature_pipelines"]
    found, options = cli_options(app, argv[3:])
    assert found == command
    assert set(long_options(argv[4:])) <= options
    assert argv[argv.index("--yaml") + 1] == CLUSTER_YAML
    assert argv[argv.index("--repo") + 1] == "feature_repo/fraud"


def test_materialization_every_15_minutes_never_overlapping() -> None:
    cron = the("CronJob", "fraud-materialize").body["spec"]
    assert cron["schedule"] == "*/15 * * * *"
    assert cron["concurrencyPolicy"] == "Forbid"
    assert cron["jobTemplate"]["spec"]["activeDeadlineSeconds"] < 15 * 60


def test_feast_apply_uses_the_sql_registry_yaml() -> None:
    container = container_of(the("Job", "fraud-feast-apply"), "apply")
    assert container["command"] == ["feast", "-f", Path(CLUSTER_YAML).name, "apply"]
    assert container["workingDir"] == "/app/feature_repo/fraud"


def test_spark_job_runs_the_shipped_driver_with_its_options() -> None:
    cron = the("CronJob", "fraud-spark-aggregate").body["spec"]
    assert cron["concurrencyPolicy"] == "Forbid"
    argv = pipeline_argv(the("CronJob", "fraud-spark-aggregate"), "spark")
    assert argv[0] == "spark-submit"
    assert argv[argv.index("--master") + 1].startswith("local[")
    script = next(arg for arg in argv if arg.endswith(".py"))
    dockerfile = (ROOT / "infra" / "Dockerfile.pipelines").read_text()
    assert f"COPY infra/spark/aggregate.py {script}" in dockerfile
    driver = (ROOT / "infra" / "spark" / "aggregate.py").read_text()
    for option in long_options(argv[argv.index(script) + 1 :]):
        assert f'"{option}"' in driver, option
