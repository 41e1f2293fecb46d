"""A model family served by a real service process: members loaded on demand within a memory
budget, evicted least recently used, one load for concurrent first requests, a member loaded
into a full budget only once asked for more often than the member it would evict, and a member
that fails its seal refused while the default answers, with the reason: damaged before its
first load, or changed on disk (in place, or replaced) while it was evicted, after a load that
left its files' digests remembered.

The family: a default and members for eight card countries, each a sealed copy of the session's
v1 package under its own version (so every member's graphs have the same size, and a budget of
N members is exact); the member of JP is damaged after sealing. The budget holds two members.
What the service holds is read from its metrics after every call. A member's answer is
explained by that member.
"""

from __future__ import annotations

import math
import os
import threading
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from models.package import package_dir, read_manifest
from scoring_service.core.security import hash_key
from scoring_service.deployments.family import (
    MEMBER_INFREQUENT,
    MEMBER_LOADING,
    MEMBER_REFUSED,
)
from scoring_service.deployments.packages import SETTLED_NS
from tests.fixtures.service import (
    ANALYST_HEADERS,
    ANALYST_KEY,
    API_HEADERS,
    Replica,
    as_request,
    copy_package,
    launch_replica,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

FAMILY = "by-country"
DEFAULT = "fraud_model/fam-default"
SEGMENTS = ("US", "GB", "DE", "FR", "JP", "IT", "ES", "NL")
MEMBERS = {s: f"fraud_model/fam-{s}" for s in SEGMENTS}
BUDGET_MEMBERS = 2
SCORE = "/v1/transactions/score"
POLL_S = 120.0  # a member's load on a busy two-core machine, with margin


@pytest.fixture(scope="module")
def family_root(model_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("family_packages")
    source = model_root / "fraud_model" / "v1"
    for version in ["fam-default", *(f"fam-{s}" for s in SEGMENTS)]:
        copy_package(source, root / "fraud_model" / version)
    # Damaged after sealing: its seal no longer matches its graph.
    graph = root / "fraud_model" / "fam-JP" / "model.onnx"
    graph.write_bytes(graph.read_bytes() + b"\0")
    return root


@pytest.fixture(scope="module")
def member_bytes(family_root: Path) -> int:
    path = package_dir(family_root, "fraud_model", "fam-US")
    return (path / read_manifest(path).graphs["cpu"].file).stat().st_size


@pytest.fixture(scope="module")
def replica(sqlite_repo: Path, family_root: Path, member_bytes: int, tmp_path_factory) -> Replica:
    folder = tmp_path_factory.mktemp("family_service")
    deployment = {
        "name": "one model per card country",
        "sticky_field": "card_id",
        "champion": {"name": "champion", "family": FAMILY, "weight": 1.0},
        "families": {
            FAMILY: {"segment_field": "card_country", "default": DEFAULT, "members": MEMBERS}
        },
    }
    file = folder / "deployment.yaml"
    file.write_text(yaml.safe_dump(deployment, sort_keys=False))
    budget_mb = (BUDGET_MEMBERS + 0.5) * member_bytes / 2**20  # two fit, three do not
    started = launch_replica(
        sqlite_repo,
        sqlite_repo / "feature_store.yaml",
        family_root,
        folder,
        env={"SCORING_ANALYST_KEY_HASHES": hash_key(ANALYST_KEY)},
        deployment=str(file),
        model_version="fam-default",
        prediction_log_dir=str(folder / "log"),
        model_memory_mb=f"{budget_mb:.6f}",
    )
    started.wait_ready()
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def http(replica: Replica):
    with httpx.Client(base_url=replica.url, headers=API_HEADERS, timeout=30.0) as client:
        yield client


@pytest.fixture(scope="module")
def body(recent: pd.DataFrame) -> dict:
    return as_request(recent.iloc[-5])


def family_metrics(http: httpx.Client) -> dict[str, float]:
    """The family's samples: name{label=value} -> value (the family label left out)."""
    out: dict[str, float] = {}
    for metric in text_string_to_metric_families(http.get("/metrics").text):
        for sample in metric.samples:
            if sample.labels.get("family") != FAMILY:
                continue
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()) if k != "family")
            out[f"{sample.name}{{{labels}}}"] = sample.value
    return out


def resident(http: httpx.Client) -> int:
    return int(family_metrics(http).get("scoring_family_resident_members{}", 0))


def loads(http: httpx.Client, outcome: str) -> int:
    return int(family_metrics(http).get(f"scoring_family_loads_total{{outcome={outcome}}}", 0))


def score(http: httpx.Client, body: dict, segment: str) -> dict:
    response = http.post(SCORE, json={**body, "card_country": segment})
    assert response.status_code == 200, response.text
    answer: dict = response.json()
    return answer


def answered_by_member(http: httpx.Client, body: dict, segment: str) -> dict:
    """Score the segment until its member answers (its first calls start the load and get the
    default's answer, saying so); the resident count is checked after every call."""
    deadline = time.monotonic() + POLL_S
    while True:
        answer = score(http, body, segment)
        assert resident(http) <= BUDGET_MEMBERS
        if answer["model_version"] == MEMBERS[segment]:
            assert MEMBER_LOADING not in answer["reasons"]
            return answer
        assert answer["model_version"] == DEFAULT
        # Loading, or not loaded yet: asked for less often than the member it would evict.
        assert {MEMBER_LOADING, MEMBER_INFREQUENT} & set(answer["reasons"]), answer
        assert time.monotonic() < deadline, f"{segment}'s member never answered"
        time.sleep(0.05)


def refused(http: httpx.Client, body: dict, segment: str) -> None:
    """Score the segment until its member is refused (its first calls start the load and get the
    default's answer, saying so); every answer is the default's."""
    deadline = time.monotonic() + POLL_S
    while True:
        answer = score(http, body, segment)
        assert answer["model_version"] == DEFAULT
        if MEMBER_REFUSED in answer["reasons"]:
            return
        assert {MEMBER_LOADING, MEMBER_INFREQUENT} & set(answer["reasons"]), answer
        assert time.monotonic() < deadline, f"{segment}'s damaged member was never refused"
        time.sleep(0.05)


def settled(*files: Path) -> None:
    """Wait until the files' last change is older than the time a digest needs to be kept."""
    newest = max(file.stat().st_ctime_ns for file in files)
    wait = (newest + SETTLED_NS - time.time_ns()) / 1e9
    if wait > 0:
        time.sleep(wait + 0.05)


def test_a_segment_without_a_member_gets_the_default(http: httpx.Client, body: dict) -> None:
    answer = score(http, body, "BR")
    assert answer["model_version"] == DEFAULT
    assert not {MEMBER_LOADING, MEMBER_INFREQUENT, MEMBER_REFUSED} & set(answer["reasons"])


def test_concurrent_first_requests_share_one_load(http: httpx.Client, body: dict) -> None:
    before = loads(http, "loaded")
    answers: list[dict] = []
    gate = threading.Barrier(16)

    def call() -> None:
        with httpx.Client(base_url=str(http.base_url), headers=API_HEADERS, timeout=30) as own:
            gate.wait()
            answers.append(score(own, body, "FR"))

    threads = [threading.Thread(target=call) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(answers) == 16
    assert {a["model_version"] for a in answers} <= {DEFAULT, MEMBERS["FR"]}
    answered_by_member(http, body, "FR")
    assert loads(http, "loaded") == before + 1


def test_within_the_budget_the_least_recently_used_member_is_evicted_and_reloads_identically(
    http: httpx.Client, body: dict
) -> None:
    first = answered_by_member(http, body, "US")
    answered_by_member(http, body, "GB")
    evictions = family_metrics(http).get("scoring_family_evictions_total{}", 0)
    # A micro-batch of both resident members' rows: each row is answered by its own member.
    batch = [
        {**body, "transaction_id": f"tx_family_{i}", "card_country": segment}
        for i, segment in enumerate(["US", "GB", "US", "BR"])
    ]
    response = http.post("/v1/transactions/score-batch", json={"transactions": batch})
    assert response.status_code == 200, response.text
    versions = [r["model_version"] for r in response.json()["results"]]
    assert versions == [MEMBERS["US"], MEMBERS["GB"], MEMBERS["US"], DEFAULT]
    # DE needs room: GB was used after US, so US (least recently used) goes.
    score(http, body, "GB")
    answered_by_member(http, body, "DE")
    assert resident(http) == BUDGET_MEMBERS
    assert family_metrics(http)["scoring_family_evictions_total{}"] > evictions
    again = answered_by_member(http, body, "US")
    assert (again["score"], again["label"], again["model_version"]) == (
        first["score"],
        first["label"],
        first["model_version"],
    )


def test_when_the_budget_is_full_a_member_loads_once_asked_for_more_than_the_one_it_evicts(
    http: httpx.Client, body: dict
) -> None:
    # The budget full of two members each asked for three times more, GB the least recent.
    answered_by_member(http, body, "GB")
    answered_by_member(http, body, "US")
    for segment in ("GB", "GB", "GB", "US", "US", "US"):
        assert score(http, body, segment)["model_version"] == MEMBERS[segment]
    before = loads(http, "loaded")
    infrequent = family_metrics(http).get("scoring_family_requests_total{result=infrequent}", 0)
    # Asked for once, less than GB: NL's member is not loaded, the default answers and says why.
    answer = score(http, body, "NL")
    assert answer["model_version"] == DEFAULT
    assert MEMBER_INFREQUENT in answer["reasons"]
    assert MEMBER_LOADING not in answer["reasons"]
    counts = family_metrics(http)
    assert counts["scoring_family_requests_total{result=infrequent}"] == infrequent + 1
    assert loads(http, "loaded") == before
    # Asked for more often than GB, it loads (once) and evicts GB, the least recently used.
    answered_by_member(http, body, "NL")
    assert loads(http, "loaded") == before + 1
    assert resident(http) == BUDGET_MEMBERS
    assert score(http, body, "US")["model_version"] == MEMBERS["US"]
    assert score(http, body, "GB")["model_version"] == DEFAULT


def test_a_member_failing_its_seal_is_refused_and_the_default_answers_with_the_reason(
    http: httpx.Client, body: dict
) -> None:
    before = loads(http, "refused")
    refused(http, body, "JP")
    assert loads(http, "refused") == before + 1
    # Refused once: later calls do not load it again.
    score(http, body, "JP")
    assert loads(http, "refused") == before + 1


@pytest.mark.parametrize(("segment", "change"), [("IT", "in_place"), ("ES", "replaced")])
def test_a_member_changed_on_disk_while_evicted_is_refused_at_its_next_load(
    http: httpx.Client,
    body: dict,
    replica: Replica,
    family_root: Path,
    segment: str,
    change: str,
) -> None:
    package = package_dir(family_root, "fraud_model", f"fam-{segment}")
    settled(*package.iterdir())  # so that its first load leaves its files' digests remembered
    first = answered_by_member(http, body, segment)
    assert first["model_version"] == MEMBERS[segment]
    # Two members used after it: it is the least recently used, and makes room for the second.
    answered_by_member(http, body, "US")
    answered_by_member(http, body, "GB")
    assert f"evicted member {MEMBERS[segment]}" in replica.logs()
    # The same size, another content: in place (the inode kept) or a new file renamed over it.
    graph = package / "model.onnx"
    payload = bytearray(graph.read_bytes())
    payload[len(payload) // 2] ^= 0xFF
    if change == "in_place":
        with graph.open("r+b") as handle:
            handle.write(payload)
    else:
        (package / "model.onnx.new").write_bytes(bytes(payload))
        os.replace(package / "model.onnx.new", graph)
    before = loads(http, "refused")
    refused(http, body, segment)
    assert loads(http, "refused") == before + 1
    refusal = (
        f"member {MEMBERS[segment]} refused: package {package} was changed after it was sealed"
    )
    assert refusal in replica.logs()


def test_a_members_answer_is_explained_by_that_member(http: httpx.Client, body: dict) -> None:
    answered_by_member(http, body, "GB")
    answer = score(http, {**body, "transaction_id": "tx_family_explained"}, "GB")
    assert answer["model_version"] == MEMBERS["GB"]
    response = http.get(
        "/v1/transactions/tx_family_explained/explanation",
        params={"top": 200},
        headers=ANALYST_HEADERS,
    )
    assert response.status_code == 200, response.text
    explained = response.json()
    assert explained["model_version"] == MEMBERS["GB"]
    assert [p["package"] for p in explained["explained_by"]] == [MEMBERS["GB"]]
    total = explained["expected_value"] + sum(c["contribution"] for c in explained["contributions"])
    assert total == pytest.approx(explained["raw_score"], abs=1e-6)
    assert 1 / (1 + math.exp(-explained["raw_score"])) == pytest.approx(answer["score"], abs=1e-5)
