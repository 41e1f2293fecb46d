"""Many models behind one answer, on real packages and a real feature store: loading checks,
sticky variants over one feature read (pinned by golden values), fallbacks (required views, a
failing session, the store down), ensembles equal to their rule, shadows that never change the
answer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from feature_repo import clock
from feature_repo.layout import open_store
from feature_repo.online import MISSING, PRESENT, STALE
from scoring_service.deployments.family import MEMBER_LOADING
from scoring_service.deployments.live import (
    FALLBACK_FEATURES,
    FALLBACK_MODEL_ERROR,
    FALLBACK_STORE,
    LiveDeployment,
    RollingAgreement,
    ShadowRunner,
)
from scoring_service.deployments.spec import DeploymentInvalid, assign, bucket, parse_deployment
from scoring_service.stages.features import FeastOnlineReader
from scoring_service.stages.mapping import map_records
from tests.fixtures.service import copy_package

NAME = "fraud_model"


@pytest.fixture(scope="module")
def packages(deployment_packages: Path) -> Path:
    """v1, v1b, v2 and rt (tests/fixtures/service.py)."""
    return deployment_packages


@pytest.fixture(scope="module")
def store(sqlite_repo: Path):
    return open_store(sqlite_repo)


def deployment(**changes) -> dict:
    base = {
        "name": "test",
        "sticky_field": "card_id",
        "salt": "s",
        "champion": {"name": "champion", "package": f"{NAME}/v1", "weight": 0.5},
        "challengers": [{"name": "copy", "package": f"{NAME}/v1b", "weight": 0.5}],
        "fallback": [{"name": "request-only", "package": f"{NAME}/rt"}],
    }
    return {**base, **changes}


def live(packages: Path, store, data: dict, **kwargs) -> LiveDeployment:
    return LiveDeployment.load(
        parse_deployment(data), str(packages), store, request_fields=REQUEST_FIELDS, **kwargs
    )


REQUEST_FIELDS = ["transaction_id", "amount", "currency", "ip_address", "card_id", "merchant_id",
                  "card_country", "ip_country", "merchant_country"]  # fmt: skip


def mapped_for(dep: LiveDeployment, frame: pd.DataFrame):
    records = list(frame.itertuples(index=False))
    return map_records(records, dep.plan)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def requests(recent: pd.DataFrame) -> pd.DataFrame:
    return recent.tail(200)


def read(dep: LiveDeployment, store, mapped):
    return FeastOnlineReader(store, dep.layout).read(mapped.keys)


# --- sticky assignment: golden values ----------------------------------------------------------
#
# Which variant a card gets is a promise to the people running an experiment: a card keeps its
# variant across calls, restarts and upgrades of the service, as long as the deployment's salt
# and weights stay. Shares, repeatability and salt dependence (tests/scoring_service/deployments/
# test_spec.py) hold for any hash of salt and value, in any order; these values, computed once
# from blake2b-64 of ``salt \0 value`` and written down, hold only for the one in service. A
# change that fails them moves customers between variants: it needs a new salt, said out loud.

GOLDEN: list[tuple[str, object, tuple[float, ...], float, int]] = [
    # (salt, value, weights, bucket, variant index)
    ("2026-11", "card_0000001", (0.8, 0.15, 0.05), 0.04370074134820137, 0),
    ("2026-11", "card_0000002", (0.8, 0.15, 0.05), 0.3074787777850699, 0),
    ("2026-11", "card_0004242", (0.8, 0.15, 0.05), 0.21460173355868922, 0),
    ("2026-11", "card_0099999", (0.8, 0.15, 0.05), 0.8641342022095818, 1),
    ("2026-11", "card_0123456", (0.8, 0.15, 0.05), 0.8779562301008056, 1),
    ("2026-12", "card_0000001", (0.8, 0.15, 0.05), 0.4107935470672633, 0),
    ("2026-12", "card_0004242", (0.8, 0.15, 0.05), 0.9772488423483635, 2),
    ("test-salt", "card_0000001", (0.5, 0.5), 0.48410760541716974, 0),
    ("test-salt", "card_0000017", (0.5, 0.5), 0.6187839880872894, 1),
    ("test-salt", "card_0000318", (0.5, 0.5), 0.9554490894806995, 1),
    ("test-salt", "card_0007777", (0.5, 0.5), 0.22580604151859832, 0),
    ("other-salt", "card_0000001", (0.5, 0.5), 0.27586983131517495, 0),
    ("s", "card_0000001", (0.5, 0.5), 0.08205879068936926, 0),
    ("s", "card_0000002", (0.9, 0.1), 0.8579101210020345, 0),
    ("s", "card_0031415", (0.9, 0.1), 0.9979991534091883, 1),
    ("s", "card_0271828", (0.25, 0.25, 0.25, 0.25), 0.5110783467241269, 2),
    ("", "card_0000001", (0.25, 0.25, 0.25, 0.25), 0.9835517263767204, 3),
    ("a", "12345", (0.25, 0.25, 0.25, 0.25), 0.6281043340021026, 2),
    ("a", 12345, (0.25, 0.25, 0.25, 0.25), 0.6281043340021026, 2),  # hashed as its text
    ("b", "customer-42", (0.6, 0.3, 0.1), 0.028108703608277805, 0),
    ("b", "ünïcode-kárta", (0.6, 0.3, 0.1), 0.4466603074615115, 0),  # UTF-8
    ("card", "_0000001", (0.5, 0.5), 0.26581106358688805, 0),  # not ("", "card_0000001")
]

# The cards of the test deployment below (salt "s", champion and copy half and half).
GOLDEN_CARDS = {
    "card_0000001": "champion",
    "card_0000002": "copy",
    "card_0000003": "champion",
    "card_0000005": "copy",
    "card_0000008": "copy",
    "card_0000013": "champion",
    "card_0000021": "champion",
    "card_0000034": "champion",
    "card_0000055": "copy",
    "card_0000089": "champion",
}


@pytest.mark.parametrize(
    ("salt", "value", "weights", "expected_bucket", "expected_variant"),
    GOLDEN,
    ids=[f"{salt or 'nosalt'}-{value}" for salt, value, *_ in GOLDEN],
)
def test_the_sticky_hash_is_pinned(
    salt: str,
    value: object,
    weights: tuple[float, ...],
    expected_bucket: float,
    expected_variant: int,
) -> None:
    assert bucket([value], salt).tolist() == [expected_bucket]
    assert assign([value], weights, salt).tolist() == [expected_variant]


def test_a_batch_assigns_as_its_rows_one_by_one() -> None:
    """The golden values of one salt and weights in one call, in reverse order and with a
    missing value among them (which goes to the champion): the same variants."""
    groups: dict[tuple[str, tuple[float, ...]], list[tuple[object, float, int]]] = {}
    for salt, value, weights, expected_bucket, expected_variant in GOLDEN:
        groups.setdefault((salt, weights), []).append((value, expected_bucket, expected_variant))
    for (salt, weights), rows in groups.items():
        values = [value for value, _, _ in reversed(rows)]
        assert bucket(values, salt).tolist() == [b for _, b, _ in reversed(rows)]
        chosen = assign([*values, None], weights, salt).tolist()
        assert chosen == [*(v for _, _, v in reversed(rows)), 0]


def test_a_live_deployment_keeps_each_cards_variant(packages, store, requests) -> None:
    """Through the live deployment: each card answered by its pinned variant, whichever rows
    it comes with."""
    dep = live(packages, store, deployment())
    cards = list(GOLDEN_CARDS)
    frame = requests.head(len(cards)).copy()
    frame["card_id"] = cards
    for rows in (frame, frame.iloc[::-1]):
        mapped = mapped_for(dep, rows)
        answered = dep.answer(read(dep, store, mapped), mapped, len(rows))
        assert answered is not None
        assert dict(zip(rows["card_id"], answered.variants, strict=True)) == GOLDEN_CARDS


# --- one read, many models ----------------------------------------------------------------------


def test_one_read_serves_every_model_and_variants_are_sticky(packages, store, requests) -> None:
    dep = live(packages, store, deployment())
    # The union of the models' views: v1's three batch views; rt reads none.
    assert [v.name for v in dep.layout.views] == [
        v.name for v in dep.models[f"{NAME}/v1"].layout.views
    ]
    mapped = mapped_for(dep, requests)
    batch = read(dep, store, mapped)
    first = dep.answer(batch, mapped, len(requests))
    again = dep.answer(batch, mapped, len(requests))
    assert first.variants == again.variants
    assert set(first.variants) == {"champion", "copy"}
    # v1b is v1 sealed under another version: the same score for every row, whoever answered.
    single = live(
        packages,
        store,
        deployment(
            champion={"name": "champion", "package": f"{NAME}/v1", "weight": 1.0}, challengers=[]
        ),
    )
    alone = single.answer(batch, mapped, len(requests))
    np.testing.assert_allclose(first.scores, alone.scores, atol=0)
    assert first.labels == alone.labels
    assert {v for v in first.model_versions} == {f"{NAME}/v1", f"{NAME}/v1b"}


def test_required_views_missing_fall_back_with_a_reason(packages, store, requests) -> None:
    data = deployment(
        champion={
            "name": "champion",
            "package": f"{NAME}/v1",
            "weight": 1.0,
            "required_views": ["card_features"],
        },
        challengers=[],
    )
    dep = live(packages, store, data)
    unknown = requests.copy()
    unknown["card_id"] = [f"never_seen_{i}" for i in range(len(unknown))]
    mapped = mapped_for(dep, unknown)
    answered = dep.answer(read(dep, store, mapped), mapped, len(unknown))
    assert set(answered.variants) == {"request-only"}
    assert set(answered.model_versions) == {f"{NAME}/rt"}
    assert all(FALLBACK_FEATURES in reasons for reasons in answered.reasons)
    assert not np.isnan(answered.scores).any()


def test_a_failing_session_falls_back(packages, store, requests) -> None:
    dep = live(packages, store, deployment())

    class Broken:
        def predict(self, matrix):
            raise RuntimeError("session failed")

    for variant in dep.variants:
        variant.members[0].model.predictor = Broken()  # type: ignore[assignment]
    mapped = mapped_for(dep, requests)
    answered = dep.answer(read(dep, store, mapped), mapped, len(requests))
    assert set(answered.variants) == {"request-only"}
    assert all(FALLBACK_MODEL_ERROR in reasons for reasons in answered.reasons)


def test_store_down_uses_a_step_that_needs_no_store_then_the_outage_policy(
    packages, store, requests
) -> None:
    dep = live(packages, store, deployment())
    mapped = mapped_for(dep, requests)
    answered = dep.answer(None, mapped, len(requests))
    assert set(answered.variants) == {"request-only"}
    assert all(FALLBACK_STORE in reasons for reasons in answered.reasons)
    no_store_free_step = live(packages, store, deployment(fallback=[]))
    assert no_store_free_step.answer(None, mapped, len(requests)) is None


def test_ensemble_scores_follow_the_rule(packages, store, requests) -> None:
    ensemble = {
        "members": [{"package": f"{NAME}/v1", "weight": 3}, {"package": f"{NAME}/rt"}],
        "rule": "weighted_mean",
        "thresholds": {"suspicious": 0.3, "highly_suspicious": 0.8},
    }
    data = deployment(
        champion={"name": "blend", "ensemble": "blend", "weight": 1.0},
        challengers=[],
        fallback=[],
        ensembles={"blend": ensemble},
    )
    dep = live(packages, store, data)
    mapped = mapped_for(dep, requests)
    batch = read(dep, store, mapped)
    answered = dep.answer(batch, mapped, len(requests))
    rows = np.arange(len(requests))
    v1 = dep.variants[0].members[0].score(batch, mapped, rows)[0]
    rt = dep.variants[0].members[1].score(batch, mapped, rows)[0]
    np.testing.assert_allclose(answered.scores, (3 * v1 + rt) / 4, atol=1e-6)
    assert set(answered.model_versions) == {"ensemble:blend"}
    maximum = live(packages, store, {**data, "ensembles": {"blend": {**ensemble, "rule": "max"}}})
    np.testing.assert_allclose(
        maximum.answer(batch, mapped, len(requests)).scores, np.maximum(v1, rt), atol=1e-6
    )


def test_shadows_never_change_the_answer(packages, store, requests) -> None:
    plain = live(packages, store, deployment())
    shadowed = live(
        packages, store, deployment(shadows=[{"name": "rt-shadow", "package": f"{NAME}/rt"}])
    )
    mapped = mapped_for(plain, requests)
    batch = read(plain, store, mapped)
    without = plain.answer(batch, mapped, len(requests))
    with_shadow = shadowed.answer(batch, mapped, len(requests))
    assert without.labels == with_shadow.labels and without.variants == with_shadow.variants
    np.testing.assert_array_equal(without.scores, with_shadow.scores)
    runner = ShadowRunner(shadowed)
    runner.score(batch, mapped, with_shadow)  # agreement metrics from the same batch
    from scoring_service.core import metrics

    agreement = metrics.SHADOW_LABEL_AGREEMENT.labels("rt-shadow", f"{NAME}/rt")._value.get()
    assert 0.0 <= agreement <= 1.0


@pytest.mark.parametrize(("share", "scored_batches"), [(1.0, 5), (0.0, 0)])
def test_shadow_time_budget(packages, store, requests, share: float, scored_batches: int) -> None:
    """A share of 1 scores every batch whatever it costs (the bucket refills by at least each
    batch's own time); a share of 0 scores none and counts every row as dropped."""
    import asyncio

    from scoring_service.core import metrics

    shadowed = live(
        packages, store, deployment(shadows=[{"name": "rt-shadow", "package": f"{NAME}/rt"}])
    )
    mapped = mapped_for(shadowed, requests)
    batch = read(shadowed, store, mapped)
    answered = shadowed.answer(batch, mapped, len(requests))
    scored = metrics.VARIANT_REQUESTS.labels("rt-shadow", f"{NAME}/rt")
    before_scored, before_dropped = scored._value.get(), metrics.SHADOW_DROPPED._value.get()

    async def run() -> None:
        runner = ShadowRunner(shadowed, time_share=share)
        runner.start()
        for _ in range(5):
            runner.offer(batch, mapped, answered)
        while not runner.queue.empty():
            await asyncio.sleep(0)
        await asyncio.sleep(0)  # the last batch taken off the queue is scored or dropped
        await runner.aclose()

    asyncio.run(run())
    rows = int((~np.isnan(answered.scores)).sum())
    assert scored._value.get() - before_scored == rows * scored_batches
    dropped = metrics.SHADOW_DROPPED._value.get() - before_dropped
    assert dropped == len(answered.labels) * (5 - scored_batches)


@pytest.mark.parametrize(
    ("changes", "fault"),
    [
        (
            {"champion": {"name": "champion", "package": f"{NAME}/v9", "weight": 0.5}},
            "package fraud_model/v9: no model package",
        ),
        ({"sticky_field": "customer"}, "sticky_field 'customer' is not a request field"),
        (
            {
                "champion": {
                    "name": "champion",
                    "package": f"{NAME}/v1",
                    "weight": 1.0,
                    "required_views": ["nope"],
                },
                "challengers": [],
            },
            "required views \\['nope'\\] are read by no model",
        ),
        (
            {
                "ensembles": {
                    "e": {
                        "members": [{"package": f"{NAME}/v1"}, {"package": f"{NAME}/rt"}],
                        "thresholds": {"highly_suspicious": 0.8, "suspicious": 0.3},
                    }
                },
                "shadows": [{"name": "e-shadow", "ensemble": "e"}],
            },
            "thresholds must name the labels",
        ),
    ],
)
def test_faults_found_on_loading_name_themselves(packages, store, changes, fault) -> None:
    with pytest.raises(DeploymentInvalid, match=fault):
        live(packages, store, deployment(**changes))


# --- the same fallbacks against a real redis-server, through the fast reader --------------------


@pytest.fixture(scope="module")
def redis_store(redis_repo: Path):
    return open_store(redis_repo, redis_repo / "feature_store.redis.yaml")


def test_fallbacks_on_a_real_redis(
    packages, redis_store, redis_server, redis_repo, requests, monkeypatch
) -> None:
    """Required views deleted from Redis -> the fallback answers, naming why; the store
    unreachable -> the request-time step answers; without it, the outage policy's turn (None)."""
    import redis

    from scoring_service.core.errors import FeatureStoreUnavailable
    from scoring_service.redis.codec import ViewCodec
    from scoring_service.redis.reader import RedisFeatureReader

    data = deployment(
        champion={"name": "champion", "package": f"{NAME}/v1", "weight": 1.0,
                  "required_views": ["card_features"]},
        challengers=[],
    )  # fmt: skip
    dep = live(packages, redis_store, data)
    reader = RedisFeatureReader.from_store(redis_store, dep.layout)
    try:
        mapped = mapped_for(dep, requests)
        assert set(dep.answer(reader.read(mapped.keys), mapped, len(requests)).variants) == {
            "champion"
        }
        # Delete the card rows of the first 50 requests: those fall back, the rest do not.
        view = next(v for v in dep.layout.views if v.name == "card_features")
        codec = ViewCodec.build(view, redis_store.config.project)
        client = redis.Redis(host="127.0.0.1", port=redis_server.port)
        cards = list(dict.fromkeys(mapped.keys["card_id"][:50]))
        client.delete(*[codec.redis_key(card) for card in cards])
        answered = dep.answer(reader.read(mapped.keys), mapped, len(requests))
        gone = {i for i, card in enumerate(mapped.keys["card_id"]) if card in set(cards)}
        for i, variant in enumerate(answered.variants):
            if i in gone:
                assert variant == "request-only" and FALLBACK_FEATURES in answered.reasons[i]
            else:
                assert variant == "champion"
        # A store whose server does not answer (nothing listens on the port): the shared server
        # keeps its data for the other tests.
        from tests.conftest import free_port

        monkeypatch.setenv("REDIS_CONNECTION_STRING", f"127.0.0.1:{free_port()}")
        dead = RedisFeatureReader.from_store(
            open_store(redis_repo, redis_repo / "feature_store.redis.yaml"), dep.layout
        )
        try:
            with pytest.raises(FeatureStoreUnavailable):
                dead.read(mapped.keys)
        finally:
            dead.close()
        down = dep.answer(None, mapped, len(requests))
        assert set(down.variants) == {"request-only"}
        assert all(FALLBACK_STORE in reasons for reasons in down.reasons)
        no_fallback = live(packages, redis_store, {**data, "fallback": []})
        assert no_fallback.answer(None, mapped, len(requests)) is None
    finally:
        reader.close()


def test_shadow_agreement_is_the_mean_over_the_last_window_rows() -> None:
    """Running sums over a ring buffer equal the plain mean of the newest rows, across wraps."""
    rng = np.random.default_rng(3)
    window = 50
    rolling = RollingAgreement(window)
    agree_all: list[float] = []
    diff_all: list[float] = []
    for size in [7, 30, 1, 49, 120, 3, 50, 0, 13]:
        agree = rng.random(size) < 0.7
        diff = rng.random(size)
        agree_all += agree.astype(float).tolist()
        diff_all += diff.tolist()
        if not size:
            continue
        rate, mean_diff = rolling.add(agree, diff)
        assert rate == pytest.approx(np.mean(agree_all[-window:]), abs=1e-12)
        assert mean_diff == pytest.approx(np.mean(diff_all[-window:]), abs=1e-12)


def test_drift_is_kept_per_answering_package(packages, store, requests) -> None:
    """Each package that answers keeps its own drift window: its inputs and scores over the rows
    it answered; the champion's also the views' freshness over those rows."""
    dep = live(packages, store, deployment())
    mapped = mapped_for(dep, requests)
    batch = read(dep, store, mapped)
    answered = dep.answer(batch, mapped, len(requests))
    assert answered is not None
    for version, variant in ((f"{NAME}/v1", "champion"), (f"{NAME}/v1b", "copy")):
        snap = dep.drift[version].refresh()
        rows = [i for i, v in enumerate(answered.variants) if v == variant]
        assert snap.rows == len(rows) > 0
        assert set(snap.feature_psi) == set(dep.models[version].manifest.feature_baselines)
    champion = dep.drift[f"{NAME}/v1"].refresh()
    assert champion.age_seconds and not dep.drift[f"{NAME}/v1b"].refresh().age_seconds


def test_a_champion_with_shadows_answers_on_the_direct_path(packages, store, requests) -> None:
    """One champion and a shadow: answered as the champion alone answers (no routing), and the
    shadow scores the same rows after the answer."""
    import asyncio

    from scoring_service.core import metrics
    from scoring_service.scoring.scorer import Scorer

    alone = live(packages, store, deployment(challengers=[], fallback=[], champion={
        "name": "champion", "package": f"{NAME}/v1", "weight": 1.0}))  # fmt: skip
    watched = live(packages, store, {**deployment(challengers=[], fallback=[], champion={
        "name": "champion", "package": f"{NAME}/v1", "weight": 1.0}),
        "shadows": [{"name": "rt-watch", "package": f"{NAME}/rt"}]})  # fmt: skip
    shadow_rows = metrics.VARIANT_REQUESTS.labels("rt-watch", f"{NAME}/rt")
    before = shadow_rows._value.get()

    async def answer(dep: LiveDeployment) -> list:
        model = dep.champion.members[0].model
        scorer = Scorer(model, FeastOnlineReader(store, dep.layout), deployment=dep)
        assert not scorer.routed
        scorer.start()
        try:
            rows = await scorer.score_now(map_records(
                list(requests.itertuples(index=False)), scorer.mapping))  # type: ignore[arg-type]  # fmt: skip
            while scorer.shadows is not None and not scorer.shadows.queue.empty():
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.01)
            return rows
        finally:
            await scorer.aclose()

    plain, shadowed = asyncio.run(answer(alone)), asyncio.run(answer(watched))
    assert [(r.score, r.label, r.reasons) for r in plain] == [
        (r.score, r.label, r.reasons) for r in shadowed
    ]
    assert shadow_rows._value.get() - before == len(requests)


def test_streaming_views_missing_or_stale_fall_back_on_a_real_redis(
    packages, redis_store, requests
) -> None:
    """v2 as champion requiring its card's streaming windows: cards whose window row is fresh
    are answered by v2; rows past the view's TTL (stale) or deleted (missing) by the fallback,
    with `variant` and the reason saying so."""
    from scoring_service.redis.reader import RedisFeatureReader

    data = deployment(
        champion={"name": "champion", "package": f"{NAME}/v2", "weight": 1.0,
                  "required_views": ["card_stream_features"]},
        challengers=[],
    )  # fmt: skip
    dep = live(packages, redis_store, data)
    mapped = mapped_for(dep, requests)
    cards = list(dict.fromkeys(mapped.keys["card_id"]))
    fresh, stale, deleted = cards[:8], cards[8:16], cards[16:24]
    view = redis_store.get_feature_view("card_stream_features")
    names = [f.name for f in view.features]
    now = pd.Timestamp(clock.now())
    ttl = pd.Timedelta(view.ttl)

    def rows(ids: list[str], at: pd.Timestamp) -> pd.DataFrame:
        return pd.DataFrame(
            [{"card_id": c, "event_timestamp": at, "created_timestamp": at,
              **dict.fromkeys(names, 1)} for c in ids]
        )  # fmt: skip

    import redis

    from scoring_service.redis.codec import ViewCodec

    layout_view = next(v for v in dep.layout.views if v.name == "card_stream_features")
    codec = ViewCodec.build(layout_view, redis_store.config.project)
    host, port = redis_store.config.online_store.connection_string.split(",")[0].split(":")
    client = redis.Redis(host=host, port=int(port))
    # The server is shared with other tests: the cards' hashes are put back as they were.
    keys = [codec.redis_key(card) for card in fresh + stale + deleted]
    saved = {key: client.hgetall(key) for key in keys}
    try:
        redis_store.write_to_online_store("card_stream_features", rows(fresh, now))
        redis_store.write_to_online_store("card_stream_features", rows(stale, now - 2 * ttl))
        # Deleted: the view's fields of the card's hash (values and `_ts:<view>`) removed.
        for card in deleted:
            client.hdel(codec.redis_key(card), *codec.fields)
        reader = RedisFeatureReader.from_store(redis_store, dep.layout)
        try:
            batch = reader.read(mapped.keys)
        finally:
            reader.close()
    finally:
        for key, fields in saved.items():
            client.delete(key)
            if fields:
                client.hset(key, mapping=fields)
    answered = dep.answer(batch, mapped, len(requests))
    status = batch.view_status["card_stream_features"]
    seen = {"fresh": 0, "stale": 0, "deleted": 0}
    for i, card in enumerate(mapped.keys["card_id"]):
        group = "fresh" if card in fresh else "stale" if card in stale else (
            "deleted" if card in deleted else None)  # fmt: skip
        if status[i] == PRESENT:
            assert answered.variants[i] == "champion"
            assert answered.model_versions[i] == f"{NAME}/v2"
        else:
            assert answered.variants[i] == "request-only"
            assert FALLBACK_FEATURES in answered.reasons[i]
        if group is not None:
            seen[group] += 1
            expected = {"fresh": PRESENT, "stale": STALE, "deleted": MISSING}[group]
            assert status[i] == expected, (group, status[i])
    assert all(seen.values()), seen


# --- a model family segmented by a stored feature -----------------------------------------------

STORED_SEGMENT = "merchant_chargeback_count_30d"


def stored_family(
    members: dict[str, str], feature: str = STORED_SEGMENT, default: str = f"{NAME}/fam-default"
) -> dict:
    return deployment(
        challengers=[],
        fallback=[],
        champion={"name": "champion", "family": "by-chargebacks", "weight": 1.0},
        families={
            "by-chargebacks": {
                "segment_feature": feature,
                "default": default,
                "members": members,
            }
        },
    )


def test_a_family_by_a_stored_feature_routes_each_row_by_the_value_read(
    packages, store, requests, tmp_path
) -> None:
    """A family segmented by the merchant's stored chargeback count: once its members are
    loaded, each row is answered by the member of the value the online store holds for the
    row's merchant, the rows of other values by the default. The members are sealed copies of
    v1 under their own versions, so the answer's package tells who answered."""
    online = store.get_online_features(
        features=[f"merchant_features:{STORED_SEGMENT}"],
        entity_rows=[{"merchant_id": m} for m in requests["merchant_id"]],
    ).to_dict()[STORED_SEGMENT]
    values = [None if v is None else str(int(v)) for v in online]
    counts = pd.Series([v for v in values if v is not None]).value_counts()
    # Members for the two most frequent values; the other values stay with the default.
    top = list(counts.index[:2])
    assert len(counts) > 2, counts
    root = tmp_path / "packages"
    for version in ["fam-default", *(f"fam-{v}" for v in top)]:
        copy_package(packages / NAME / "v1", root / NAME / version)
    dep = live(root, store, stored_family({v: f"{NAME}/fam-{v}" for v in top}))
    family = dep.champion.family
    assert family is not None and family.segment_column is not None
    mapped = mapped_for(dep, requests)
    # First: every row by the default, those with a member saying it loads.
    first = dep.answer(read(dep, store, mapped), mapped, len(requests))
    assert first is not None
    assert set(first.model_versions) == {f"{NAME}/fam-default"}
    assert [MEMBER_LOADING in r for r in first.reasons] == [v in top for v in values]
    family.wait_loads(120)
    second = dep.answer(read(dep, store, mapped), mapped, len(requests))
    assert second is not None
    assert second.model_versions == [
        f"{NAME}/fam-{v}" if v in top else f"{NAME}/fam-default" for v in values
    ]
    # Copies of one model: the same scores whoever answered.
    np.testing.assert_allclose(second.scores, first.scores, rtol=1e-6)


def test_a_family_segment_feature_its_default_does_not_read_is_refused(packages, store) -> None:
    with pytest.raises(DeploymentInvalid, match="'card_rt_txn_count_5m' is not a stored feature"):
        LiveDeployment.load(
            parse_deployment(stored_family({}, "card_rt_txn_count_5m", f"{NAME}/v1")),
            str(packages),
            store,
            request_fields=REQUEST_FIELDS,
        )
