"""The scorer: one feature read, then the direct path (one package) or the live deployment's
decision per row; micro-batched calls answer what calls alone answer.

Real parts throughout: the session's feature store (SQLite through Feast's SDK, Redis through
the fast reader) and its model package (ONNX Runtime).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from feast import FeatureStore

from feature_repo.layout import open_store
from feature_repo.transforms import model_input
from scoring_service.core.errors import NotReady
from scoring_service.core.settings import StoreConnection
from scoring_service.deployments.live import LiveDeployment
from scoring_service.deployments.packages import LoadedModel, load_package
from scoring_service.deployments.spec import parse_deployment, single_model
from scoring_service.redis.reader import RedisFeatureReader
from scoring_service.scoring.scorer import Scorer, merge_mapped
from scoring_service.stages.features import STATUS_NAMES, FeastOnlineReader
from scoring_service.stages.mapping import map_records
from tests.fixtures.service import FRAUD_API, as_request, copy_package

Transaction = FRAUD_API.request
NAME = "fraud_model"


@pytest.fixture(scope="module")
def sqlite_store(sqlite_repo: Path) -> FeatureStore:
    return open_store(sqlite_repo)


@pytest.fixture(scope="module")
def model(sqlite_store: FeatureStore, model_root: Path) -> LoadedModel:
    return load_package(model_root / NAME / "v1", sqlite_store)


@pytest.fixture(scope="module")
def twins(model_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """v1 and v1b: the session's package and the same trees sealed as another version."""
    root = tmp_path_factory.mktemp("scorer_packages")
    for version in ("v1", "v1b"):
        copy_package(model_root / NAME / "v1", root / NAME / version)
    return root


def transactions_of(recent: pd.DataFrame, n: int) -> list:
    return [Transaction(**as_request(row)) for _, row in recent.tail(n).iterrows()]


def test_batched_scores_equal_scores_alone(redis_repo: Path, model_root: Path, recent) -> None:
    """Through the real scorer: concurrent calls are batched, and every answer is the one the
    same transaction gets when scored on its own."""
    store = FeatureStore(
        repo_path=str(redis_repo), fs_yaml_file=redis_repo / "feature_store.redis.yaml"
    )
    model = load_package(model_root / "fraud_model" / "v1", store)
    transactions = [Transaction(**as_request(row)) for _, row in recent.tail(40).iterrows()]
    mapped = [map_records([t], model.manifest) for t in transactions]

    async def main() -> tuple[list, list, int]:
        # Timeouts for a loaded machine: this test is about batching, not about deadlines.
        connection = replace(StoreConnection.defaults(), timeout_s=30.0, connect_timeout_s=30.0)
        reader = RedisFeatureReader.from_store(store, model.layout, connection)
        scorer = Scorer(model, reader, batch_max_rows=16, batch_max_wait_s=0.05)
        try:
            batched = await asyncio.gather(*(scorer.score(m) for m in mapped))
            alone = [await scorer.score_now(m) for m in mapped]
            return batched, alone, scorer.batcher.batches if scorer.batcher else 0
        finally:
            await scorer.aclose()
            reader.close()

    batched, alone, batches = asyncio.run(main())
    assert batches < len(mapped)  # they were gathered
    for (one,), (single,) in zip(batched, alone, strict=True):
        assert one.score == single.score
        assert one.label == single.label and one.reasons == single.reasons
        assert {k: v.status for k, v in one.freshness.items()} == {
            k: v.status for k, v in single.freshness.items()
        }


def test_a_retired_scorer_answers_late_calls_a_stopping_one_refuses(
    redis_repo: Path, model_root: Path, recent
) -> None:
    """After a deployment swap the old scorer's batcher is closed; a call that took the old
    scorer before the swap but reaches it after is answered (alone), not refused. A scorer
    closed because the service stops refuses such a call with not_ready."""
    store = FeatureStore(
        repo_path=str(redis_repo), fs_yaml_file=redis_repo / "feature_store.redis.yaml"
    )
    model = load_package(model_root / "fraud_model" / "v1", store)
    (row,) = [as_request(r) for _, r in recent.tail(1).iterrows()]
    mapped = map_records([Transaction(**row)], model.manifest)

    async def main() -> tuple[list, Exception | None]:
        connection = replace(StoreConnection.defaults(), timeout_s=30.0, connect_timeout_s=30.0)
        reader = RedisFeatureReader.from_store(store, model.layout, connection)
        retired = Scorer(model, reader, batch_max_rows=16, batch_max_wait_s=0.05)
        stopped = Scorer(model, reader, batch_max_rows=16, batch_max_wait_s=0.05)
        try:
            await retired.retire()
            await stopped.aclose()
            late = await retired.score(mapped)
            try:
                await stopped.score(mapped)
            except Exception as exc:  # the refusal is the result
                return late, exc
            return late, None
        finally:
            reader.close()

    late, refusal = asyncio.run(main())
    assert len(late) == 1 and late[0].score is not None
    assert isinstance(refusal, NotReady)


def test_merge_keeps_request_order(redis_repo: Path, model_root: Path, recent) -> None:
    store = FeatureStore(
        repo_path=str(redis_repo), fs_yaml_file=redis_repo / "feature_store.redis.yaml"
    )
    manifest = load_package(model_root / "fraud_model" / "v1", store).manifest
    rows = [Transaction(**as_request(row)) for _, row in recent.tail(3).iterrows()]
    merged = merge_mapped([map_records([r], manifest) for r in rows])
    whole = map_records(rows, manifest)
    assert merged.keys == whole.keys
    assert (merged.request_values == whole.request_values).all()


def test_the_direct_path_answers_what_the_model_and_the_label_policy_give(
    sqlite_store: FeatureStore, model: LoadedModel, recent: pd.DataFrame
) -> None:
    """Each answer is the package's prediction on the row the store gave, labelled by its
    policy: computed here step by step from the same read and compared value for value."""
    mapped = map_records(transactions_of(recent, 30), model.manifest)
    mapped.keys["card_id"][0] = "card_never_seen_by_the_scorer"  # one unknown entity too
    reader = FeastOnlineReader(sqlite_store, model.layout)
    scored = Scorer(model, reader).score_sync(mapped)

    batch = reader.read(mapped.keys)
    matrix = model_input(batch.values, None, mapped.request_values)
    expected = model.predictor.predict(matrix)
    keys = [view.join_key for view in model.layout.views]
    assert len(scored) == 30
    for i, answer in enumerate(scored):
        statuses = {key: int(batch.status[key][i]) for key in keys}
        assert answer.score == expected[i]
        assert (answer.label, answer.reasons) == model.policy.decide(
            expected[i], matrix[i], statuses
        )
        assert {k: f.status for k, f in answer.freshness.items()} == {
            k: STATUS_NAMES[v] for k, v in statuses.items()
        }
        np.testing.assert_array_equal(answer.inputs, matrix[i])
        assert (answer.variant, answer.model_version) == ("champion", f"{NAME}/v1")
    assert scored[0].freshness["card_id"].status == "missing"
    assert "unknown_card_id" in scored[0].reasons


def test_columns_answer_what_rows_answer(
    sqlite_store: FeatureStore, model: LoadedModel, recent: pd.DataFrame
) -> None:
    """score-batch's column path gives every request the answer the row path gives it."""
    mapped = map_records(transactions_of(recent, 25), model.manifest)
    scorer = Scorer(model, FeastOnlineReader(sqlite_store, model.layout))

    async def main() -> tuple:
        try:
            return await scorer.score_columns(mapped), await scorer.score_now(mapped)
        finally:
            await scorer.aclose()

    columns, rows = asyncio.run(main())
    assert len(columns) == 25 and columns.default_version == f"{NAME}/v1"
    assert columns.scores == [r.score for r in rows]
    assert columns.labels == [r.label for r in rows]
    assert columns.reasons == [r.reasons for r in rows]
    for i, row in enumerate(rows):
        assert {k: STATUS_NAMES[v[i]] for k, v in columns.status.items()} == {
            k: f.status for k, f in row.freshness.items()
        }
    assert [r.score for r in columns.rows()] == [r.score for r in rows]


def test_large_calls_and_an_unbatched_scorer_go_alone(
    sqlite_store: FeatureStore, model: LoadedModel, recent: pd.DataFrame
) -> None:
    """A call of batch_max_rows or more never joins a micro-batch; without micro-batching no
    call does; both answer what the batched path answers."""
    transactions = transactions_of(recent, 6)
    whole = map_records(transactions, model.manifest)
    one = map_records(transactions[:1], model.manifest)
    batched = Scorer(model, FeastOnlineReader(sqlite_store, model.layout), batch_max_rows=4)
    alone = Scorer(model, FeastOnlineReader(sqlite_store, model.layout), micro_batching=False)
    assert alone.batcher is None

    async def main() -> tuple:
        try:
            large = await batched.score(whole)
            assert batched.batcher is not None and batched.batcher.batches == 0
            small = await batched.score(one)
            assert batched.batcher.batches == 1
            return large, small, await alone.score(whole)
        finally:
            await batched.aclose()
            await alone.aclose()

    large, small, unbatched = asyncio.run(main())
    assert [r.score for r in large] == [r.score for r in unbatched]
    assert small[0].score == large[0].score


def test_one_package_takes_the_direct_path_and_a_split_is_routed(
    sqlite_store: FeatureStore, twins: Path, recent: pd.DataFrame
) -> None:
    """A deployment of one package answers on the direct path under the package's version; a
    champion and a challenger are routed per row under the deployment's name, each row by the
    variant its card is assigned to."""
    alone = LiveDeployment.load(single_model(f"{NAME}/v1", "card_id"), str(twins), sqlite_store)
    split = LiveDeployment.load(
        parse_deployment(
            {
                "name": "half and half",
                "sticky_field": "card_id",
                "salt": "scorer",
                "champion": {"name": "champion", "package": f"{NAME}/v1", "weight": 0.5},
                "challengers": [{"name": "twin", "package": f"{NAME}/v1b", "weight": 0.5}],
            }
        ),
        str(twins),
        sqlite_store,
    )
    transactions = transactions_of(recent, 60)
    direct = Scorer(
        alone.champion.members[0].model,
        FeastOnlineReader(sqlite_store, alone.layout),
        deployment=alone,
    )
    routed = Scorer(
        split.champion.members[0].model,
        FeastOnlineReader(sqlite_store, split.layout),
        deployment=split,
    )
    assert not direct.routed and direct.version_label == f"{NAME}/v1"
    assert routed.routed and routed.version_label == "half and half"
    assert routed.mapping is split.plan

    one = direct.score_sync(map_records(transactions, direct.mapping))
    both = routed.score_sync(map_records(transactions, routed.mapping))
    assert {r.model_version for r in one} == {f"{NAME}/v1"}
    assert {r.variant for r in both} == {"champion", "twin"}
    for answer in both:
        expected = {"champion": f"{NAME}/v1", "twin": f"{NAME}/v1b"}[answer.variant]
        assert answer.model_version == expected
    # The same trees: whichever variant answers, the score is the direct path's.
    assert [r.score for r in both] == pytest.approx([r.score for r in one], abs=1e-7)
    # The card decides: the same cards go to the same variants again.
    again = routed.score_sync(map_records(transactions, routed.mapping))
    assert [r.variant for r in again] == [r.variant for r in both]


def test_a_stopped_scorer_refuses_new_calls(
    sqlite_store: FeatureStore, model: LoadedModel, recent: pd.DataFrame
) -> None:
    mapped = map_records(transactions_of(recent, 1), model.manifest)
    scorer = Scorer(model, FeastOnlineReader(sqlite_store, model.layout))

    async def main() -> None:
        await scorer.aclose()
        with pytest.raises(NotReady, match="stopping"):
            await scorer.score(mapped)

    asyncio.run(main())
