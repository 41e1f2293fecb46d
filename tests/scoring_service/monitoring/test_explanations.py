"""Explanations of logged answers, through the route, with an analyst key.

The module builds a fraud world of its own with the session's generator and pipeline: more
transactions than the session's (enough card-testing episodes for a model to learn the
pattern), aggregated, applied and materialized with the Feast CLI, and a model trained on them.
The app serves it with the prediction log on. A card-testing burst is planted in the online
store: a card known to the store, the same row but for a burst of small payments in the last
24 hours (``card_small_txn_count_24h``). A tiny payment with that card is scored; its
explanation must credit the burst with the rise of its score over the same payment with its
own card, name the small-payment count in the domain's words, and its contributions plus the
expected value must sum to the model's raw score. Answers are found in
memory while the service runs and in the parquet log after it stopped.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from feature_pipelines.fraud.aggregate import aggregate
from feature_pipelines.fraud.generate import generate_transactions
from feature_pipelines.fraud.windows import CATALOGUE as WINDOWS
from feature_pipelines.streaming.replay import stream_tables
from feature_repo import clock
from feature_repo import prediction_log as plog
from feature_repo.layout import open_store
from models.package import read_manifest
from models.train import train
from scoring_service.api.app import create_app
from tests.conftest import TEST_SEED, copy_repo, feast_cli, materialize_end
from tests.fixtures.service import (
    ADMIN_HEADERS,
    ANALYST_HEADERS,
    API_HEADERS,
    as_request,
    settings_for,
)

pytestmark = [pytest.mark.clock, pytest.mark.slow, pytest.mark.timeout(900)]

PLANTED_CARD = "card_planted_burst"
BURST = 12  # small payments in the last 24 hours: a tester's run of card checks
TESTER_AMOUNT = 1.5  # one more of them (the generator's card tests are 0.50 to 3.00)
PLANTED_FEATURES = ("card_small_txn_count_24h", "card_txn_count_24h")
WORLD_ROWS = 60_000  # about 20 card-testing episodes (the session's 20,000 rows hold 7)


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, data_end: datetime
) -> tuple[Path, Path, pd.DataFrame]:
    """(repository, package root, transactions): generated, aggregated, applied, materialized
    and trained as the session's world is, larger."""
    folder = tmp_path_factory.mktemp("explain_world")
    transactions = generate_transactions(n_rows=WORLD_ROWS, seed=TEST_SEED, days=35, end=data_end)
    tables = {**aggregate(transactions, end=data_end), **stream_tables(WINDOWS, transactions)}
    repo = copy_repo(folder / "feature_repo", tables)
    feast_cli(repo, "apply")
    feast_cli(repo, "materialize-incremental", materialize_end(data_end))
    events = folder / "transactions.parquet"
    transactions.to_parquet(events, index=False)
    packages = folder / "packages"
    train(repo_path=repo, events_path=events, output_root=packages, num_boost_round=200)
    return repo, packages, transactions


@pytest.fixture(scope="module")
def private_repo(world: tuple[Path, Path, pd.DataFrame]) -> Path:
    return world[0]


@pytest.fixture(scope="module")
def model_root(world: tuple[Path, Path, pd.DataFrame]) -> Path:
    return world[1]


@pytest.fixture(scope="module")
def recent(world: tuple[Path, Path, pd.DataFrame]) -> pd.DataFrame:
    """Legitimate payments of the last day whose card the online store knows."""
    repo, _, transactions = world
    end = transactions.event_timestamp.max()
    frame = transactions[
        (transactions.event_timestamp > end - pd.Timedelta(days=1)) & (transactions.is_fraud == 0)
    ]
    cards = pd.read_parquet(repo / "data" / "card_features.parquet")
    fresh = cards[cards.event_timestamp > end - pd.Timedelta(days=6)]
    frame = frame[frame.card_id.isin(set(fresh.card_id))]
    assert len(frame) > 20
    return frame


@pytest.fixture(scope="module")
def planted(planted_pair: tuple[dict, dict]) -> dict:
    """The payment with the card-testing burst."""
    return planted_pair[1]


@pytest.fixture(scope="module")
def planted_pair(
    private_repo: Path, recent: pd.DataFrame, service: TestClient
) -> tuple[dict, dict]:
    """An ordinary payment (its IP address and merchant without fraud in 30 days) with a card
    whose online row shows a card-testing burst, and the same payment with its own card.

    The model is trained on a world generated up to the platform clock, so it differs from run
    to run, and in some worlds the burst barely moves a given payment's score: then there is
    no change for an explanation to attribute. So the burst is planted for the eight payments
    the model finds least risky (no other input already pushes their scores up), each with a
    card of its own, and the pair is the payment whose score the burst raises most. The test
    then checks what the explanation attributes that rise to."""
    store = open_store(private_repo)
    candidates = recent.tail(300)
    rates = store.get_online_features(
        features=["ip_features:ip_fraud_rate_30d", "merchant_features:merchant_fraud_rate_30d"],
        entity_rows=candidates[["ip_address", "merchant_id"]].to_dict("records"),
    ).to_dict()
    quiet = candidates[
        [
            not ip and not merchant
            for ip, merchant in zip(
                rates["ip_fraud_rate_30d"], rates["merchant_fraud_rate_30d"], strict=True
            )
        ]
    ]
    assert len(quiet) > 10
    # A tester's payments are tiny: the pattern the generated card-testing episodes teach.
    bodies = [{**as_request(row), "amount": TESTER_AMOUNT} for _, row in quiet.iterrows()]
    scores = score_batch(service, bodies)
    least = sorted(range(len(bodies)), key=lambda i: scores[i])[:8]
    view = store.get_feature_view("card_features")
    names = [f.name for f in view.features]
    now = pd.Timestamp(clock.now())
    probes = []
    for rank, i in enumerate(least):
        body = bodies[i]
        online = store.get_online_features(
            features=[f"card_features:{name}" for name in names],
            entity_rows=[{"card_id": body["card_id"]}],
        ).to_dict()
        row = {name: online[name][0] for name in names}
        assert row["card_small_txn_count_24h"] is not None, "the test card has a row"
        row["card_small_txn_count_24h"] = BURST
        row["card_txn_count_24h"] = (row["card_txn_count_24h"] or 0) + BURST
        card = f"{PLANTED_CARD}_{rank}"
        frame = pd.DataFrame(
            [{"card_id": card, "event_timestamp": now, "created_timestamp": now, **row}]
        )
        store.write_to_online_store("card_features", frame)
        probes.append({**body, "card_id": card, "transaction_id": f"tx_probe_{rank}"})
    raised = score_batch(service, probes)
    best = max(range(len(least)), key=lambda k: raised[k] - scores[least[k]])
    body = bodies[least[best]]
    before = {**body, "transaction_id": "tx_before_burst"}  # the same card without the burst
    return before, {**probes[best], "transaction_id": "tx_planted_burst"}


def score_batch(service: TestClient, bodies: list[dict]) -> list[float]:
    scored = service.post("/v1/transactions/score-batch", json={"transactions": bodies})
    assert scored.status_code == 200, scored.text
    return [r["score"] for r in scored.json()["results"]]


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("prediction_log")


@pytest.fixture(scope="module")
def service(private_repo: Path, model_root: Path, log_dir: Path) -> Iterator[TestClient]:
    settings = settings_for(private_repo, model_root, prediction_log_dir=log_dir)
    with TestClient(create_app(settings), headers=API_HEADERS) as client:
        yield client


def explain(client: TestClient, transaction_id: str, top: int = 5) -> dict:
    response = client.get(
        f"/v1/transactions/{transaction_id}/explanation",
        params={"top": top},
        headers=ANALYST_HEADERS,
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_a_card_testing_burst_is_explained_by_its_small_payments(
    service: TestClient, planted_pair: tuple[dict, dict], model_root: Path
) -> None:
    before_burst, planted = planted_pair
    assert service.post("/v1/transactions/score", json=before_burst).status_code == 200
    answer = service.post("/v1/transactions/score", json=planted)
    assert answer.status_code == 200, answer.text
    features = read_manifest(model_root / "fraud_model" / "v1").features
    explanation = explain(service, "tx_planted_burst", top=len(features))
    assert explanation["transaction_id"] == "tx_planted_burst"
    assert explanation["request_id"] == answer.headers["x-request-id"]
    assert explanation["score"] == pytest.approx(answer.json()["score"], abs=1e-12)
    assert explanation["label"] == answer.json()["label"]
    contributions = explanation["contributions"]
    assert len(contributions) == len(features)
    # Exact: the contributions and the expected value sum to the trees' raw score ...
    total = sum(c["contribution"] for c in contributions) + explanation["expected_value"]
    assert abs(total - explanation["raw_score"]) < 1e-6
    # ... which is the served score's log-odds (the ONNX graph answers in float32).
    score = explanation["score"]
    assert explanation["raw_score"] == pytest.approx(math.log(score / (1 - score)), abs=1e-3)
    # The burst explains the change: against the same payment before it, the contributions
    # moved by exactly the change of the raw score, the inputs the burst planted moved it up,
    # and more than any input it did not plant. Which inputs push a payment up, and how far a
    # burst of small payments does, depends on the model trained on the generated world (in
    # some worlds the trees credit the burst to the card's count of all payments rather than of
    # small ones, or an input's contribution against the expected value stays below zero), so
    # the test compares the two answers and counts the planted inputs together. An unplanted
    # input moves too where the trees join it to the burst: a tiny amount counts for more on a
    # card under test.
    plain = explain(service, "tx_before_burst", top=len(features))
    earlier = {c["feature"]: c["contribution"] for c in plain["contributions"]}
    moved = {c["feature"]: c["contribution"] - earlier[c["feature"]] for c in contributions}
    assert sum(moved.values()) == pytest.approx(
        explanation["raw_score"] - plain["raw_score"], abs=1e-6
    )
    burst = next(c for c in contributions if c["feature"] == "card_small_txn_count_24h")
    assert burst["value"] == BURST
    unplanted = {f: m for f, m in moved.items() if f not in PLANTED_FEATURES}
    by_burst = sum(moved[f] for f in PLANTED_FEATURES)
    assert by_burst > 0, sorted(moved.items(), key=lambda kv: -kv[1])[:5]
    assert by_burst > max(unplanted.values()), sorted(moved.items(), key=lambda kv: -kv[1])[:5]
    assert burst["text"] == f"{BURST} small payments (card testing) with the card in the last 24 h"
    assert explanation["feature_freshness"]["card_id"]["status"] == "present"
    assert "card_testing_pattern" in explanation["reasons"] or explanation["label"] in (
        "not_fraud",
        "uncertain",
    )
    short = explain(service, "tx_planted_burst")
    assert [c["feature"] for c in short["contributions"]] == [
        c["feature"] for c in contributions[:5]
    ]


def test_explanations_need_an_analyst_key_and_a_logged_answer(service: TestClient) -> None:
    path = "/v1/transactions/tx_planted_burst/explanation"
    assert service.get(path, headers={"X-API-Key": ""}).status_code == 401
    assert service.get(path, headers=API_HEADERS).status_code == 403
    assert service.get(path, headers=ADMIN_HEADERS).status_code == 403
    never = service.get("/v1/transactions/tx_never_scored/explanation", headers=ANALYST_HEADERS)
    assert never.status_code == 404
    assert never.json()["code"] == "answer_not_logged"
    bad = service.get("/v1/transactions/not an id/explanation", headers=ANALYST_HEADERS)
    assert bad.status_code == 422
    assert bad.json()["message"].startswith("transaction_id: ")


def test_every_answer_is_logged_and_found_on_disk_after_a_restart(
    private_repo: Path, model_root: Path, recent: pd.DataFrame, tmp_path: Path
) -> None:
    settings = settings_for(private_repo, model_root, prediction_log_dir=tmp_path)
    bodies = [as_request(row) for _, row in recent.tail(4).iterrows()]
    ids = []
    with TestClient(create_app(settings), headers=API_HEADERS) as client:
        for body in bodies:
            response = client.post("/v1/transactions/score", json=body)
            assert response.status_code == 200, response.text
            ids.append(response.headers["x-request-id"])
        renamed = [{**b, "transaction_id": f"{b['transaction_id']}_b"} for b in bodies]
        batch = client.post("/v1/transactions/score-batch", json={"transactions": renamed})
        assert batch.status_code == 200
    # The lifespan's end closed the log: everything answered is in the parquet.
    table = plog.read(tmp_path / "fraud").to_pandas()
    assert set(ids) <= set(table[plog.REQUEST_ID])
    assert (table[plog.REQUEST_ID] == batch.headers["x-request-id"]).sum() == 4
    row = table[table[plog.REQUEST_ID] == ids[0]].iloc[0]
    manifest = read_manifest(model_root / "fraud_model" / "v1")
    assert list(row[plog.FEATURE_NAMES]) == manifest.features
    assert len(row[plog.FEATURES]) == len(manifest.features)
    assert row[plog.DOMAIN] == "fraud" and row[plog.MODEL_VERSION] == "fraud_model/v1"
    # Entity ids are kept as their keyed hash (the log's own key), never in plain text.
    key = plog.pseudonym_key(tmp_path / "fraud")
    assert row[plog.LATENCY_MS] > 0
    assert row["card_id"] == plog.pseudonymize(bodies[0]["card_id"], key) != bodies[0]["card_id"]
    # A new process explains from the parquet log, its in-memory index being empty.
    with TestClient(create_app(settings)) as again:
        explanation = explain(again, bodies[0]["transaction_id"])
    assert explanation["request_id"] == ids[0]
    assert len(explanation["contributions"]) == 5
