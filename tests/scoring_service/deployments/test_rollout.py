"""Rollout: the DeploymentManager validates a deployment completely, swaps it in one assignment,
keeps the live one when a deployment is refused, rolls back without loading, records who changed
what and when, and closes a replaced scorer's batcher only once its calls have finished.

The manager is driven directly on a real event loop, over real deployments (the session's
package and a sealed copy of it, checked against the SQLite feature store) and real scorers.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest
from feast import FeatureStore
from prometheus_client import REGISTRY

from feature_repo import clock
from feature_repo.layout import open_store
from scoring_service.core.errors import DeploymentRefused, NotReady
from scoring_service.deployments.live import LiveDeployment
from scoring_service.deployments.rollout import (
    KEEP_PREVIOUS,
    DeploymentManager,
    describe_changes,
)
from scoring_service.deployments.spec import DeploymentSpec, parse_deployment
from scoring_service.scoring.scorer import Scorer
from scoring_service.stages.features import FeastOnlineReader, FeatureBatch
from scoring_service.stages.mapping import MappedRequests, map_records
from tests.fixtures.service import FRAUD_API, as_request, copy_package

NAME = "fraud_model"
DOMAIN = "fraud_rollout_test"  # the deployment gauge's domain label, this module's own
WAIT_S = 30.0


def deployment(name: str, **changes: Any) -> dict[str, Any]:
    return {
        "name": name,
        "sticky_field": "card_id",
        "salt": "rollout",
        "champion": {"name": "champion", "package": f"{NAME}/v1", "weight": 1.0},
        **changes,
    }


SPLIT = deployment(
    "split",
    champion={"name": "champion", "package": f"{NAME}/v1", "weight": 0.5},
    challengers=[{"name": "twin", "package": f"{NAME}/v1b", "weight": 0.5}],
)


@pytest.fixture(scope="module")
def packages(model_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rollout_packages")
    for version in ("v1", "v1b"):
        copy_package(model_root / NAME / "v1", root / NAME / version)
    return root


@pytest.fixture(scope="module")
def store(sqlite_repo: Path) -> FeatureStore:
    return open_store(sqlite_repo)


@pytest.fixture(scope="module")
def mapped(recent: pd.DataFrame) -> list[Any]:
    return [FRAUD_API.request(**as_request(row)) for _, row in recent.tail(3).iterrows()]


class GatedReader:
    """A Feast reader whose reads wait for ``gate``: holds a call on its scorer in progress."""

    def __init__(self, reader: FeastOnlineReader) -> None:
        self.reader = reader
        self.layout = reader.layout
        self.gate = threading.Event()
        self.entered = threading.Event()

    def read(self, keys: dict[str, list[str | None]]) -> FeatureBatch:
        self.entered.set()
        assert self.gate.wait(WAIT_S), "the test never opened the gate"
        return self.reader.read(keys)

    def ping(self) -> None:
        self.reader.ping()

    def close(self) -> None:
        self.reader.close()


class Rig:
    """A manager over a served-domain-like holder, its loads and builds counted."""

    def __init__(self, packages: Path, store: FeatureStore, file: Path | None = None) -> None:
        self.packages, self.store = packages, store
        self.holder = SimpleNamespace(scorer=None)
        self.loaded: list[str] = []
        self.built: list[Scorer] = []
        self.manager = DeploymentManager(self.holder, self.load, self.build, DOMAIN, file)

    def load(self, spec: DeploymentSpec) -> LiveDeployment:
        self.loaded.append(spec.name)
        return LiveDeployment.load(spec, str(self.packages), self.store)

    def build(self, live: LiveDeployment, reader: Any = None) -> Scorer:
        scorer = Scorer(
            live.champion.members[0].model,
            reader or FeastOnlineReader(self.store, live.layout),
            deployment=live,
        )
        self.built.append(scorer)
        return scorer

    def start(self, data: dict[str, Any], reader: Any = None) -> Scorer:
        live = self.load(parse_deployment(data))
        scorer = self.build(live, reader)
        self.manager.start(live, scorer)
        return scorer

    def live_name(self) -> str:
        assert self.manager.live is not None
        return self.manager.live.spec.name


def deployment_gauge(name: str) -> float | None:
    return REGISTRY.get_sample_value(
        "scoring_deployment_info", {"domain": DOMAIN, "deployment": name}
    )


def test_changes_are_described_in_words() -> None:
    first = parse_deployment(deployment("first"))
    split = parse_deployment(SPLIT)
    assert describe_changes(None, first) == ["champion: fraud_model/v1 at 1"]
    assert describe_changes(first, split) == [
        "added twin: fraud_model/v1b at 0.5",
        "champion: fraud_model/v1 at 1 -> fraud_model/v1 at 0.5",
    ]
    assert describe_changes(split, first) == [
        "champion: fraud_model/v1 at 0.5 -> fraud_model/v1 at 1",
        "removed twin: fraud_model/v1b",
    ]
    assert describe_changes(first, parse_deployment(deployment("again"))) == ["no change"]
    assert describe_changes(first, parse_deployment(deployment("salted", salt="other"))) == [
        "salt changed"
    ]


def test_apply_swaps_and_records_who_when_and_what(
    packages: Path, store: FeatureStore, mapped: list[Any]
) -> None:
    rig = Rig(packages, store)
    first = rig.start(deployment("first"))
    assert rig.holder.scorer is first and rig.live_name() == "first"

    async def main() -> tuple[Any, list]:
        before = clock.now()
        live = await rig.manager.apply(SPLIT, by="key-7f3a")
        after = clock.now()
        answers = await rig.holder.scorer.score(map_records(mapped, live.plan))
        for scorer in rig.built:
            await scorer.aclose()
        return (before, after), answers

    (before, after), answers = asyncio.run(main())
    assert rig.live_name() == "split" and rig.loaded == ["first", "split"]
    new = rig.holder.scorer
    assert new is rig.built[-1] and new is not first and new.deployment is rig.manager.live
    assert {a.variant for a in answers} <= {"champion", "twin"}
    assert [p.spec.name for p in rig.manager.previous] == ["first"]
    assert [(c.action, c.deployment, c.by) for c in rig.manager.history] == [
        ("start", "first", "config"),
        ("apply", "split", "key-7f3a"),
    ]
    change = rig.manager.history[-1]
    assert before <= change.at <= after
    assert change.changes == [
        "added twin: fraud_model/v1b at 0.5",
        "champion: fraud_model/v1 at 1 -> fraud_model/v1 at 0.5",
    ]
    assert change.as_dict() == {
        "at": change.at.isoformat(),
        "action": "apply",
        "deployment": "split",
        "by": "key-7f3a",
        "changes": change.changes,
    }
    assert (deployment_gauge("first"), deployment_gauge("split")) == (0.0, 1.0)
    described = rig.manager.describe()
    assert described["live"]["name"] == "split"
    assert described["packages"] == {f"{NAME}/v1": f"{NAME}/v1", f"{NAME}/v1b": f"{NAME}/v1b"}
    assert described["rollback_to"] == "first"
    assert [h["action"] for h in described["history"]] == ["start", "apply"]


@pytest.mark.parametrize(
    ("data", "fault"),
    [
        (
            deployment("short", champion={"name": "c", "package": f"{NAME}/v1", "weight": 0.4}),
            "sum to 0.4, not 1",
        ),
        (
            deployment("absent", champion={"name": "c", "package": f"{NAME}/v9", "weight": 1}),
            "package fraud_model/v9: no model package at",
        ),
        (deployment("not a field", sticky_field="card"), "sticky_field 'card'"),
    ],
    ids=["invalid", "no-package", "bad-sticky-field"],
)
def test_a_refused_deployment_leaves_the_live_one_serving(
    packages: Path, store: FeatureStore, data: dict[str, Any], fault: str
) -> None:
    rig = Rig(packages, store)
    first = rig.start(deployment("first"))
    rig.load = lambda spec: LiveDeployment.load(  # type: ignore[method-assign]
        spec, str(packages), store, request_fields=list(FRAUD_API.spec.request_fields)
    )
    rig.manager._load = rig.load

    async def main() -> None:
        with pytest.raises(DeploymentRefused, match=fault) as refused:
            await rig.manager.apply(data, by="key-7f3a")
        assert refused.value.status_code == 409 and refused.value.code == "deployment_invalid"

    asyncio.run(main())
    assert rig.holder.scorer is first and rig.live_name() == "first"
    assert rig.manager.previous == []
    assert [c.action for c in rig.manager.history] == ["start"]
    assert len(rig.built) == 1  # no scorer was built for the refused one


def test_rollback_puts_the_previous_one_back_without_loading(
    packages: Path, store: FeatureStore
) -> None:
    rig = Rig(packages, store)
    rig.start(deployment("first"))

    async def main() -> None:
        with pytest.raises(DeploymentRefused, match="no previous deployment to roll back to"):
            await rig.manager.rollback(by="key-1")
        first_live = rig.manager.live
        await rig.manager.apply(SPLIT, by="key-1")
        loads = len(rig.loaded)
        back = await rig.manager.rollback(by="key-2")
        assert back is first_live  # the deployment that was open, not a new load
        assert len(rig.loaded) == loads
        with pytest.raises(DeploymentRefused):
            await rig.manager.rollback(by="key-2")  # the rolled-back one is not kept
        for scorer in rig.built:
            await scorer.aclose()

    asyncio.run(main())
    assert rig.live_name() == "first"
    assert rig.holder.scorer.deployment is rig.manager.live
    assert [(c.action, c.deployment, c.by) for c in rig.manager.history] == [
        ("start", "first", "config"),
        ("apply", "split", "key-1"),
        ("rollback", "first", "key-2"),
    ]
    assert rig.manager.history[-1].changes == [
        "champion: fraud_model/v1 at 0.5 -> fraud_model/v1 at 1",
        "removed twin: fraud_model/v1b",
    ]
    assert (deployment_gauge("first"), deployment_gauge("split")) == (1.0, 0.0)


def test_at_most_keep_previous_deployments_stay_open(packages: Path, store: FeatureStore) -> None:
    rig = Rig(packages, store)
    rig.start(deployment("d0"))

    async def main() -> None:
        for i in range(1, KEEP_PREVIOUS + 3):
            await rig.manager.apply(deployment(f"d{i}"), by="key")
        for scorer in rig.built:
            await scorer.aclose()

    asyncio.run(main())
    assert [p.spec.name for p in rig.manager.previous] == [
        f"d{i}" for i in range(2, KEEP_PREVIOUS + 2)
    ]
    assert rig.live_name() == f"d{KEEP_PREVIOUS + 2}"


def test_a_retired_scorer_closes_after_its_calls_finish(
    packages: Path, store: FeatureStore, mapped: list[Any]
) -> None:
    """A call in progress on the old scorer when the new one goes live finishes on the old
    one; only then is the old scorer's batcher closed. A call that took the old scorer before
    the swap and reaches it after is still answered."""
    rig = Rig(packages, store)
    first_live = rig.load(parse_deployment(deployment("first")))
    gated = GatedReader(FeastOnlineReader(store, first_live.layout))
    old = rig.build(first_live, gated)
    rig.manager.start(first_live, old)
    requests: MappedRequests = map_records(mapped, first_live.plan)

    async def main() -> tuple[list, list, list]:
        call = asyncio.ensure_future(old.score(requests))
        assert await asyncio.to_thread(gated.entered.wait, WAIT_S)
        await rig.manager.apply(deployment("second", salt="new"), by="key-9")
        assert rig.holder.scorer is not old
        (retiring,) = rig.manager._retiring
        await asyncio.sleep(0.05)
        # The old scorer's call holds its batch: the batcher is not closed yet.
        assert not call.done() and not retiring.done()
        assert old.batcher is not None and old.batcher.in_flight == 1
        gated.gate.set()
        answered = await asyncio.wait_for(call, WAIT_S)
        await asyncio.wait_for(retiring, WAIT_S)
        assert old.batcher.in_flight == 0 and not rig.manager._retiring
        batches = old.batcher.batches
        late = await old.score(requests)  # took the old scorer before the swap: answered alone
        assert old.batcher.batches == batches
        current = await rig.holder.scorer.score(requests)
        for scorer in rig.built:
            await scorer.aclose()
        return answered, late, current

    answered, late, current = asyncio.run(main())
    assert [a.score for a in answered] == [a.score for a in late] == [a.score for a in current]
    assert all(a.score is not None for a in answered)


def test_a_swap_before_start_is_not_ready(packages: Path, store: FeatureStore) -> None:
    rig = Rig(packages, store)

    async def main() -> None:
        with pytest.raises(NotReady):
            await rig.manager.apply(deployment("too early"), by="key")

    asyncio.run(main())
    assert rig.holder.scorer is None and rig.manager.history == []


def test_a_deployment_file_reloads_and_a_faulty_one_is_ignored(
    packages: Path, store: FeatureStore, tmp_path: Path
) -> None:
    import yaml

    file = tmp_path / "deployment.yaml"
    rig = Rig(packages, store, file)
    rig.start(deployment("first"))

    async def main() -> tuple:
        file.write_text(yaml.safe_dump(SPLIT))
        reloaded = await rig.manager.reload_file()
        file.write_text("champion: [")
        broken = await rig.manager.reload_file()
        absent = {"name": "c", "package": f"{NAME}/v9", "weight": 1.0}
        file.write_text(yaml.safe_dump(deployment("gone", champion=absent)))
        refused = await rig.manager.reload_file()
        without = await DeploymentManager(
            SimpleNamespace(scorer=None), rig.load, rig.build, DOMAIN
        ).reload_file()
        for scorer in rig.built:
            await scorer.aclose()
        return reloaded, broken, refused, without

    reloaded, broken, refused, without = asyncio.run(main())
    assert reloaded is not None and reloaded.spec.name == "split"
    assert broken is None and refused is None and without is None
    assert rig.live_name() == "split"
    assert [(c.action, c.by) for c in rig.manager.history] == [
        ("start", "config"),
        ("reload", "signal"),
    ]
