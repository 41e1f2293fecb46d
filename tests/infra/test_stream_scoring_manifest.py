"""The stream scorer's manifest (infra/k8s/stream-scoring.yaml) runs a real command of the
service's CLI with options it accepts, in the serving image, reachable by the stores it reads.
(Schemas, restricted pods, references and selectors: tests/infra/test_manifests.py, which checks
every manifest the kustomization lists.)"""

from __future__ import annotations

from tests.infra.manifests import (
    K8S,
    cli_options,
    config_maps,
    container_env,
    containers,
    deployed_documents,
    expand,
    load_documents,
    long_options,
    pod_template,
)

DOCS = load_documents(K8S / "stream-scoring.yaml")
DEPLOYMENT = next(d for d in DOCS if d.kind == "Deployment")


def _container() -> dict:
    template = pod_template(DEPLOYMENT)
    assert template is not None
    (container,) = containers(template)
    return container


def test_the_command_and_its_options_are_the_clis() -> None:
    from scoring_service.cli import app

    container = _container()
    env = container_env(container, config_maps(deployed_documents()))
    argv = [expand(arg, env) for arg in [*container["command"], *container["args"]]]
    assert argv[:3] == ["python", "-m", "scoring_service"]
    found, options = cli_options(app, argv[3:])
    assert found == "stream-score"
    assert set(long_options(argv[4:])) <= options
    # Each pod is its own member of the group: a restart resumes its own pending entries.
    assert argv[argv.index("--consumer") + 1] == "$(POD_NAME)"
    assert container["image"].startswith("fraud-scoring")  # the serving image: no --windows
    assert "--windows" not in argv


def test_the_metrics_port_is_the_scraped_one() -> None:
    args = _container()["args"]
    port = args[args.index("--metrics-port") + 1]
    annotations = DEPLOYMENT.body["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == port
    assert {"containerPort": int(port), "name": "metrics", "protocol": "TCP"} in _container()[
        "ports"
    ]


def test_network_policies_let_it_reach_the_stores_it_reads() -> None:
    policies = {
        d.body["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"]: d
        for d in DOCS
        if d.kind == "NetworkPolicy"
    }
    assert set(policies) == {"fraud-stream-redis", "fraud-redis", "fraud-registry-db"}
    for policy in policies.values():
        (rule,) = policy.body["spec"]["ingress"]
        assert rule["from"] == [
            {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "fraud-stream-scoring"}}}
        ]
