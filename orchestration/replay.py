"""The continuous-training loop replayed over a generated history on a simulated clock.

A history of ``days`` days is generated with a new fraud pattern from ``drift_day``
(``feature_pipelines.fraud.generate``'s ``new_pattern_from_day``). The platform clock
(``feature_repo.clock``) is then placed at each day in turn and the loop runs with no person in
it:

- **Features** are the real assets (``batch_features``, ``feature_definitions``) run once over
  the whole history: hourly snapshots and streaming windows only ever reflect events before
  their own time, so one pass is what the hourly schedule would have built day by day.
- **Answers.** Each day's payments are answered by the deployment of that day (the champion;
  during a canary, the candidate for the cards its weight assigns by a salted hash, sticky as
  the service's assignment), from their point-in-time features through the packages' CPU ONNX
  graphs.
- **Monitoring** at the end of each day: the answers of the last ``monitor_days`` whose labels
  have matured by then; recall and precision of the alerts against the declared floors
  (``TriggerRules``). A floor crossed is a ``trigger`` record and requests a retraining.
- **Retraining** is the real ``retraining_job`` assets (``training_set``, ``candidate_package``,
  ``candidate_evaluation`` with every blocking gate), in process on the placed clock, on a
  trigger (after a cool-down) or every ``retrain_every_days`` days, as the schedule does.
- **Rollout** of a candidate that passed: a day in shadow (agreement of its alerts with the
  answers'), then a day per canary weight judged on its scores against its shadow scores
  (PSI), then promotion. The service-side guardrails (errors, deadline misses, model time,
  request p99) need a live process and are exercised by ``orchestration.rollout`` against one
  (tests/orchestration/test_rollout.py); the replay judges what an offline day can show.

Every run, gate, trigger, rollout step and promotion goes to the decision log as in production.
The report measures what the loop is for: days from the drift to the first trigger and to the
recovered recall, recall at the alert rate before the drift, after it and after the promotion,
and recall on the new pattern under the old and the promoted champion. The figures come from
the reported labels (``is_fraud``) and the generator's truth (``fraud_pattern``), which the loop
itself never reads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from feature_repo import clock
from feature_repo.domain import load_domain
from orchestration.decisions import STARTED_BY_TAG, TRIGGER_TAG, DecisionLog, RunInfo
from orchestration.resources import GateRules, PlatformResource, TriggerRules
from orchestration.rollout import psi

logger = logging.getLogger(__name__)

FEATURE_REPO = Path(__file__).resolve().parent.parent / "feature_repo" / "fraud"
NEW_PATTERN = "account_takeover"
SCORE_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99)
STARTED_BY = "replay (no person)"
#: Who is compared on the new pattern, and the ``Day`` fields their recalls go to.
_COMPARED = {
    "learner": ("learner_new_pattern_recall", "learner_recall_at_rate"),
    "old_champion": ("old_champion_new_pattern_recall", "old_champion_recall_at_rate"),
    "champion": ("champion_new_pattern_recall", "champion_recall_at_rate"),
}


@dataclass
class ReplaySettings:
    """The replayed world and the loop's cadence."""

    days: int = 60
    drift_day: int = 30
    rows: int = 45_000
    seed: int = 7
    first_training_day: int = 21
    feature_service: str = "fraud_model_v2"
    training_rounds: int = 150
    monitor_days: float = 14.0
    retrain_every_days: int = 7
    cooldown_days: int = 3
    canary_weights: tuple[float, ...] = (0.1, 0.5, 1.0)
    step_min_rows: int = 150
    min_agreement: float = 0.9
    max_score_psi: float = 0.25
    salt: str = "replay"
    evaluation_days: float = 5.0
    min_alert_recall: float = 0.55
    min_alert_precision: float | None = None
    min_labelled: int = 30
    recovery_days: int = 7
    learner_restart_after_drift: int = 7  # the day (after the drift) the learner is restarted


@dataclass
class Day:
    """One replayed day: what answered, how well, what the loop did."""

    day: int
    champion: str
    candidate: str | None
    stage: str
    rows: int
    positives: int
    recall: float
    alert_rate: float
    new_pattern_rows: int
    new_pattern_recall: float
    monitored_recall: float | None
    monitored_precision: float | None
    events: list[str] = field(default_factory=list)
    recall_at_rate: float = float("nan")  # at the pre-drift alert rate (set by the report)
    # The online learner beside the batch models: labels it had learned by the end of the day,
    # and (set by the report, at the pre-drift alert rate, on the day's payments) recall on
    # the new pattern and on all reported fraud of the learner, of the first champion (never
    # retrained) and of the day's champion, each ranking the day's payments by its own scores.
    learner_labels_learned: int = 0
    learner_new_pattern_recall: float = float("nan")
    old_champion_new_pattern_recall: float = float("nan")
    champion_new_pattern_recall: float = float("nan")
    learner_recall_at_rate: float = float("nan")
    old_champion_recall_at_rate: float = float("nan")
    champion_recall_at_rate: float = float("nan")


@dataclass
class ReplayReport:
    settings: dict[str, Any]
    days: list[Day]
    alert_rate: float  # the pre-drift champion's: every recall below is at this rate
    first_trigger_day: int | None
    first_promotion_after_drift: int | None
    recovered_day: int | None
    recall_before_drift: float
    recall_after_drift: float
    recall_after_promotion: float | None
    new_pattern_recall_old_champion: float
    new_pattern_recall_promoted: float | None
    new_pattern_measured_from_day: int
    promotions: list[dict[str, Any]]
    stopped: list[dict[str, Any]]
    start: str  # the replayed range's first instant (day 0), ISO 8601
    # The online learner against the batch models from the drift day on: a row per day, and
    # the same figures pooled over those days (``learner_comparison``).
    learner_by_day: list[dict[str, Any]]
    learner_comparison: dict[str, float]
    learner_labels_learned: int
    learner_labels_pending: int
    learner_restart: dict[str, Any]

    @property
    def days_to_detect(self) -> int | None:
        d = self.first_trigger_day
        return None if d is None else d - self.settings["drift_day"]

    @property
    def days_to_recover(self) -> int | None:
        d = self.recovered_day
        return None if d is None else d - self.settings["drift_day"]

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["days_to_detect"] = self.days_to_detect
        out["days_to_recover"] = self.days_to_recover
        return out


class _Package:
    """A published package's graph and alert cutoff, for answering from the feature matrix."""

    def __init__(self, root: Path, name: str, trained_day: int | None = None) -> None:
        from models import export
        from models.package import read_manifest
        from orchestration.evaluation import alert_cutoff

        self.name = name
        self.trained_day = trained_day
        path = root / name
        self.manifest = read_manifest(path)
        graph = (path / self.manifest.graphs["cpu"].file).read_bytes()
        self.session = export.session(graph)
        self.cutoff = alert_cutoff(self.manifest)[1]

    def scores(self, frame: pd.DataFrame) -> np.ndarray:
        from feature_repo.retrieval import feature_matrix
        from models import export

        if frame.empty:
            return np.empty(0)
        return np.asarray(
            export.onnx_probability(self.session, feature_matrix(frame, self.manifest.features))
        )


class _Learning:
    """The online learner beside the batch models, fed what serving would have let it learn.

    Its input is the vector the first champion (its base package) scored: that package's model
    input from the payment's point-in-time features, what serving saw at answer time, logged
    with the answer (answered at the payment's event time). Each answered payment's reported
    label is offered with ``matured_at`` its ``label_available_at`` (a payment never reported
    is 0 from then on); the learner learns at the end of each day what has matured by then.
    """

    NAME = "replay-learner"

    def __init__(self, base: _Package, business_id: str, label: str) -> None:
        from models.package.online import OnlineLearner

        self.features = list(base.manifest.features)
        self.business_id = business_id
        self.label = label
        self.learner = OnlineLearner(self.features, base_package=base.name)
        self.logged: dict[str, Any] = {}  # business id -> LoggedAnswer

    def matrix(self, rows: pd.DataFrame) -> np.ndarray:
        from feature_repo.retrieval import feature_matrix

        return feature_matrix(rows, self.features)

    def answer(self, rows: pd.DataFrame) -> np.ndarray:
        """The learner's scores of the day's payments (as it stood when they came), their
        vectors logged and their labels offered."""
        from models.package.online import LabelEvent, LoggedAnswer

        if rows.empty:
            return np.empty(0)
        x = self.matrix(rows)
        scores = self.learner.predict(x)
        ids = rows[self.business_id].astype(str).tolist()
        answered_at = rows["event_timestamp"].tolist()  # pandas Timestamps: datetimes, to the ns
        matured_at = rows["label_available_at"].tolist()
        labels = rows[self.label].to_numpy(dtype=int)
        for i, business_id in enumerate(ids):
            self.logged[business_id] = LoggedAnswer(x[i].tolist(), self.features, answered_at[i])
        self.learner.offer(
            LabelEvent(business_id, int(labels[i]), matured_at[i])
            for i, business_id in enumerate(ids)
        )
        return scores

    def learn(self, now: datetime) -> int:
        """Learn the labels matured by ``now``; how many."""
        logged = self.logged
        return self.learner.learn_matured(
            lambda ids: {i: logged[i] for i in ids if i in logged}, now=now
        )

    def restart(self, root: Path, rows: pd.DataFrame) -> dict[str, Any]:
        """Snapshot the learner, restore it as a restarted process would, compare the two on
        the day's payments and go on with the restored one; what was found."""
        from models.package.online import OnlineLearner

        x = self.matrix(rows)
        before = self.learner.predict(x)
        path = self.learner.snapshot(root, self.NAME)
        restored = OnlineLearner.restore(root, self.NAME)
        if restored is None:
            raise RuntimeError(f"the learner's snapshot {path} was not found to restore")
        after = restored.predict(x)
        record = {
            "snapshot": str(path),
            "rows": len(x),
            "scores_equal": bool(np.array_equal(before, after)),
            "max_score_difference": float(np.max(np.abs(before - after))) if len(x) else 0.0,
            "labels_learned": [self.learner.labels_learned, restored.labels_learned],
            "labels_pending": [len(self.learner.pending), len(restored.pending)],
        }
        self.learner = restored
        return record


def _sticky(values: pd.Series, salt: str) -> np.ndarray:
    """A number in [0, 1) per value, stable across days (the service's kind of assignment)."""
    out = np.empty(len(values))
    for i, value in enumerate(values.astype(str)):
        digest = hashlib.blake2b(f"{salt}:{value}".encode(), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "big") / 2**64
    return out


def _histogram(scores: np.ndarray) -> dict[float, float]:
    """Cumulative counts at the service's score buckets (what its metrics would show)."""
    bounds = [*SCORE_BUCKETS, float("inf")]
    return {b: float((scores <= b).sum()) for b in bounds}


def _recall(alerts: np.ndarray, y: np.ndarray) -> float:
    return float(alerts[y == 1].mean()) if (y == 1).any() else float("nan")


def _prepare(root: Path, settings: ReplaySettings, end: datetime) -> PlatformResource:
    """The platform's folders under ``root``: the fraud definitions, the generated history."""
    from feature_pipelines.fraud.generate import generate_transactions

    repo = root / "feature_repo" / "fraud"
    repo.mkdir(parents=True, exist_ok=True)
    for item in FEATURE_REPO.iterdir():
        if item.suffix in (".py", ".yaml") or item.name == ".feastignore":
            shutil.copy(item, repo / item.name)
    (root / "data").mkdir(exist_ok=True)
    (root / "models" / "packages").mkdir(parents=True, exist_ok=True)
    frame = generate_transactions(
        settings.rows,
        seed=settings.seed,
        days=settings.days,
        end=end,
        new_pattern_from_day=settings.drift_day,
    )
    frame.to_parquet(root / "data" / "transactions.parquet", index=False)
    return PlatformResource(
        root=str(root),
        champion="",
        feature_service=settings.feature_service,
        training_rounds=settings.training_rounds,
        seed=settings.seed,
        gates=GateRules(evaluation_days=settings.evaluation_days),
        triggers=TriggerRules(
            min_alert_recall=settings.min_alert_recall,
            min_alert_precision=settings.min_alert_precision,
            min_labelled=settings.min_labelled,
        ),
    )


def _materialize(assets: list[Any], platform: PlatformResource, tags: dict[str, str]) -> bool:
    from dagster import DagsterInstance, materialize

    with DagsterInstance.ephemeral() as instance:
        result = materialize(
            assets,
            resources={"platform": platform},
            instance=instance,
            tags=tags,
            raise_on_error=False,
        )
    return bool(result.success)


def replay(root: Path, settings: ReplaySettings | None = None) -> ReplayReport:
    """Run the loop over a generated history under ``root``; the report of what it did."""
    from orchestration.assets import (
        CANDIDATE_RECORD,
        batch_features,
        candidate_evaluation,
        candidate_package,
        feature_definitions,
        training_set,
    )

    settings = settings or ReplaySettings()
    real = clock.now()
    end = datetime(real.year, real.month, real.day, tzinfo=UTC)
    start = end - timedelta(days=settings.days)
    platform = _prepare(root, settings, end)
    spec = load_domain(platform.repo)
    log = DecisionLog(platform.decision_log_path)
    models_root = platform.path(platform.model_root)
    saved = {k: os.environ.get(k) for k in (clock.AT_ENV, clock.OFFSET_ENV)}
    try:
        clock.place(end)
        tags = {TRIGGER_TAG: "replay: the history's features", STARTED_BY_TAG: STARTED_BY}
        if not _materialize([batch_features, feature_definitions], platform, tags):
            raise RuntimeError("the feature assets failed; see the log above")
        frame = _point_in_time_frame(platform, settings.feature_service, spec)
        return _loop(
            settings,
            platform,
            log,
            frame,
            start,
            models_root,
            retrain_assets=[training_set, candidate_package, candidate_evaluation],
            candidate_record=platform.work / CANDIDATE_RECORD,
            business_id=spec.business_id,
            online_root=root / "models" / "online",
        )
    finally:
        # The clock as it was: a process placed at an instant (PLATFORM_CLOCK_AT) stays there.
        clock.place(None)
        for name, value in saved.items():
            if value is not None:
                os.environ[name] = value
        clock.reload()


def _point_in_time_frame(platform: PlatformResource, service: str, spec: Any) -> pd.DataFrame:
    """Every event with its point-in-time features through the FeatureService, and its truth."""
    from models.dataset import entity_dataframe, load_events, retrieve_training_set
    from orchestration.assets import _store  # one way to open the replay's store

    events = load_events(platform.path(platform.transactions), spec)
    store = _store(platform)
    from feature_repo.layout import feature_layout

    layout = feature_layout(store, service)
    entity_df = entity_dataframe(events, spec, request_fields=layout.request_fields)
    frame = retrieve_training_set(store, service, entity_df, spec)
    truth = events.set_index(events[spec.business_id].astype(str))[
        ["fraud_pattern", "card_id", "label_available_at"]
    ]
    keys = frame[spec.business_id].astype(str)
    for column in ("fraud_pattern", "label_available_at"):
        frame[column] = keys.map(truth[column]).to_numpy()
    if "card_id" not in frame.columns:
        frame["card_id"] = keys.map(truth["card_id"]).to_numpy()
    frame["label_available_at"] = pd.to_datetime(frame["label_available_at"], utc=True)
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
    return frame.reset_index(drop=True)


def _loop(
    settings: ReplaySettings,
    platform: PlatformResource,
    log: DecisionLog,
    frame: pd.DataFrame,
    start: datetime,
    models_root: Path,
    *,
    retrain_assets: list[Any],
    candidate_record: Path,
    business_id: str,
    online_root: Path,
) -> ReplayReport:
    label = "is_fraud"
    times = frame["event_timestamp"]
    frame["sticky"] = _sticky(frame["card_id"], settings.salt)
    answered = pd.DataFrame(index=frame.index, columns=["score", "alert"], dtype=float)
    answered_by = pd.Series(index=frame.index, dtype=object)  # the package that answered
    champion: _Package | None = None
    candidate: _Package | None = None
    stages: list[tuple[str, float]] = []
    baseline: dict[float, float] = {}
    held: list[np.ndarray] = []  # a canary step's candidate scores until it has enough
    pending_trigger: str | None = None
    trigger_day: int | None = None  # when the standing retraining request was first made
    last_retrain: int | None = None
    days: list[Day] = []
    promotions: list[dict[str, Any]] = []
    stopped: list[dict[str, Any]] = []
    first_champion: _Package | None = None
    learning: _Learning | None = None
    # Each day's payments as the learner, the first champion and the day's champion score them.
    compared = pd.DataFrame(index=frame.index, columns=list(_COMPARED), dtype=float)
    restart_day = settings.drift_day + settings.learner_restart_after_drift
    restart: dict[str, Any] = {}
    run = RunInfo(run_id="", job="replay", trigger="replay", started_by=STARTED_BY)

    def promote(package: _Package, day: int, why: str) -> None:
        nonlocal champion, pending_trigger, trigger_day
        # A retraining request stands until a candidate trained after it answers: one stopped at
        # a gate, or trained before the trigger, leaves the decay where it was.
        if (
            pending_trigger
            and package.trained_day is not None
            and package.trained_day >= (trigger_day or 0)
        ):
            pending_trigger = None
        previous = champion.name if champion else None
        champion = package
        platform.promotion_record.parent.mkdir(parents=True, exist_ok=True)
        platform.promotion_record.write_text(
            json.dumps({"package": package.name, "previous": previous, "day": day})
        )
        promotions.append(
            {
                "day": day,
                "package": package.name,
                "trained_day": package.trained_day,
                "previous": previous,
            }
        )
        log.record(
            run,
            "promotion",
            "champion",
            passed=True,
            candidate=package.name,
            champion=previous,
            message=f"day {day}: {package.name} promoted to champion ({why})",
        )

    for day in range(settings.first_training_day, settings.days):
        now = start + timedelta(days=day)
        clock.place(now)
        events: list[str] = []
        # --- retraining at the start of the day: bootstrap, trigger (after cool-down), schedule
        reason = None
        if candidate is None and not stages:
            if champion is None:
                reason = "bootstrap: no champion yet"
            elif pending_trigger and (
                last_retrain is None or day - last_retrain >= settings.cooldown_days
            ):
                reason = f"monitor: {pending_trigger}"
            elif last_retrain is not None and day - last_retrain >= settings.retrain_every_days:
                reason = "schedule weekly_retraining (replay cadence)"
        if reason is not None:
            last_retrain = day
            before = candidate_record.stat().st_mtime_ns if candidate_record.exists() else None
            ok = _materialize(
                retrain_assets, platform, {TRIGGER_TAG: reason[:200], STARTED_BY_TAG: STARTED_BY}
            )
            trained = candidate_record.exists() and candidate_record.stat().st_mtime_ns != before
            name = json.loads(candidate_record.read_text())["package"] if trained else "no package"
            ok = ok and trained
            events.append(f"retrain ({reason}): {name} {'passed' if ok else 'stopped at a gate'}")
            if ok:
                package = _Package(models_root, name, trained_day=day)
                if champion is None:
                    promote(package, day, "first champion: nothing to compare or roll out against")
                    first_champion = champion
                    learning = _Learning(package, business_id, label)
                else:
                    candidate = package
                    stages = [("shadow", 0.0)] + [("canary", w) for w in settings.canary_weights]
            else:
                stopped.append({"day": day, "package": name, "reason": reason})
        assert champion is not None and first_champion is not None and learning is not None
        # --- the day's answers
        today = (times >= now) & (times < now + timedelta(days=1))
        rows = frame[today]
        scores = champion.scores(rows)
        compared.loc[rows.index, "champion"] = scores
        compared.loc[rows.index, "old_champion"] = (
            scores if champion is first_champion else first_champion.scores(rows)
        )
        compared.loc[rows.index, "learner"] = learning.answer(rows)
        alerts = scores >= champion.cutoff
        stage, weight = stages[0] if stages and candidate is not None else ("champion", 0.0)
        by = np.full(len(rows), champion.name, dtype=object)
        if candidate is not None and stages:
            mine = candidate.scores(rows)
            mine_alerts = mine >= candidate.cutoff
            if stage == "canary":
                take = rows["sticky"].to_numpy() < weight
                scores = np.where(take, mine, scores)
                alerts = np.where(take, mine_alerts, alerts)
                by = np.where(take, candidate.name, by)
        answered.loc[rows.index, "score"] = scores
        answered.loc[rows.index, "alert"] = alerts.astype(float)
        answered_by.loc[rows.index] = by
        # --- the rollout stage is judged at the end of the day
        if candidate is not None and stages:
            if stage == "shadow":
                agreement = float(
                    (mine_alerts == (champion.scores(rows) >= champion.cutoff)).mean()
                )
                baseline = _histogram(mine)
                passed = agreement >= settings.min_agreement
                log.record(
                    run,
                    "rollout",
                    "shadow",
                    passed=passed,
                    candidate=candidate.name,
                    champion=champion.name,
                    message=f"day {day} shadow: alert agreement {agreement:.3f} "
                    f"(at least {settings.min_agreement:g}) over {len(rows)} payments",
                    metrics={"agreement": agreement, "rows": len(rows)},
                )
            else:
                take = rows["sticky"].to_numpy() < weight
                held.append(mine[take])
                seen = np.concatenate(held)
                if len(seen) < settings.step_min_rows:
                    events.append(f"canary {weight:.0%} held: {len(seen)} answers so far")
                    passed = None
                    drift = None
                else:
                    drift = psi(baseline, _histogram(seen))
                    passed = drift is not None and drift <= settings.max_score_psi
            if passed is not None and stage != "shadow":
                held = []
                log.record(
                    run,
                    "rollout",
                    f"canary {weight:.0%}",
                    passed=passed,
                    candidate=candidate.name,
                    champion=champion.name,
                    message=f"day {day} canary {weight:.0%}: score PSI against its shadow "
                    f"{drift if drift is None else round(drift, 4)} (at most "
                    f"{settings.max_score_psi:g}) over {len(seen)} answers",
                    metrics={"score_psi": drift, "rows": len(seen)},
                )
            if passed is None:
                pass  # the step goes on tomorrow
            elif not passed:
                events.append(f"{stage} {weight:.0%} failed")
                log.record(
                    run,
                    "rollback",
                    "deployment",
                    passed=True,
                    candidate=candidate.name,
                    champion=champion.name,
                    message=f"day {day}: {candidate.name} rolled back at {stage}",
                )
                stopped.append({"day": day, "package": candidate.name, "reason": stage})
                candidate, stages = None, []
            else:
                events.append(f"{stage} {weight:.0%} passed")
                stages = stages[1:]
                if not stages:
                    promote(candidate, day, "shadow and every canary step passed")
                    events.append(f"promoted {candidate.name}")
                    candidate = None
        # --- monitoring at the end of the day, on matured labels only
        end_of_day = now + timedelta(days=1)
        window = frame[
            (times >= end_of_day - timedelta(days=settings.monitor_days))
            & (times < end_of_day)
            & (frame["label_available_at"] <= end_of_day)
            & (answered_by == champion.name)  # per model version, as the service's monitor
        ]
        y = window[label].to_numpy(dtype=int)
        alerted = answered.loc[window.index, "alert"].to_numpy(dtype=float) > 0
        monitored_recall = _recall(alerted, y) if (y == 1).sum() >= 1 else None
        precision = float(y[alerted].mean()) if alerted.any() else None
        found = []
        if (y == 1).sum() >= settings.min_labelled and monitored_recall is not None:
            if monitored_recall < settings.min_alert_recall:
                found.append(
                    f"recall of the alerts {monitored_recall:.3f} < {settings.min_alert_recall}"
                )
            floor = settings.min_alert_precision
            if precision is not None and floor is not None and precision < floor:
                found.append(f"precision of the alerts {precision:.3f} < {floor}")
        log.record(
            run,
            "monitor",
            "model_monitoring",
            passed=not found,
            champion=champion.name,
            message=f"day {day}: {len(found)} trigger(s) on {int((y == 1).sum())} matured "
            "positives" + (f": {found[0]}" if found else ""),
            metrics={"recall": monitored_recall, "precision": precision, "matured": len(y)},
        )
        if found:
            if pending_trigger is None:
                trigger_day = day
            pending_trigger = found[0]
            log.record(
                run,
                "trigger",
                "retraining",
                champion=champion.name,
                message=f"day {day}: retraining requested: {found[0]}",
                evidence={"triggers": found},
            )
            events.append(f"trigger: {found[0]}")
        # --- the online learner learns what has matured by the end of the day
        learning.learn(end_of_day)
        if day == restart_day:
            restart = {"day": day, **learning.restart(online_root, rows)}
            events.append(
                f"learner restarted from {restart['snapshot']}: scores "
                f"{'equal' if restart['scores_equal'] else 'DIFFERENT'} on {len(rows)} payments"
            )
        truth = rows["fraud_pattern"].to_numpy()
        new = truth == NEW_PATTERN
        y_day = rows[label].to_numpy(dtype=int)
        days.append(
            Day(
                day=day,
                champion=champion.name,
                candidate=candidate.name if candidate else None,
                stage=stage if stage != "champion" else "",
                rows=len(rows),
                positives=int(y_day.sum()),
                recall=_recall(alerts, y_day),
                alert_rate=float(alerts.mean()) if len(alerts) else float("nan"),
                new_pattern_rows=int(new.sum()),
                new_pattern_recall=float(alerts[new].mean()) if new.any() else float("nan"),
                monitored_recall=monitored_recall,
                monitored_precision=precision,
                events=events,
                learner_labels_learned=learning.learner.labels_learned,
            )
        )
        logger.info("day %s: %s", day, "; ".join(events) or "-")
    assert first_champion is not None and learning is not None
    report = _report(
        settings, days, frame, answered, promotions, stopped, first_champion, models_root, start
    )
    _compare(report, frame, compared, start)
    report.learner_labels_learned = learning.learner.labels_learned
    report.learner_labels_pending = len(learning.learner.pending)
    report.learner_restart = restart
    return report


def _caught_at_rate(scores: np.ndarray, y: np.ndarray, rate: float) -> tuple[int, int]:
    """(positives among the ``rate`` share of highest scores, positives)."""
    k = math.ceil(rate * len(scores))
    top = np.argsort(-scores, kind="stable")[:k]
    return int(y[top].sum()), int(y.sum())


def _pooled(by_day: dict[int, tuple[int, int]], first: int, last: int) -> float:
    caught = sum(c for d, (c, _) in by_day.items() if first <= d <= last)
    total = sum(p for d, (_, p) in by_day.items() if first <= d <= last)
    return caught / total if total else float("nan")


def _report(
    settings: ReplaySettings,
    days: list[Day],
    frame: pd.DataFrame,
    answered: pd.DataFrame,
    promotions: list[dict[str, Any]],
    stopped: list[dict[str, Any]],
    old: _Package,
    models_root: Path,
    start: datetime,
) -> ReplayReport:
    """Recall at the alert rate: the share of reported fraud among the highest-scored
    ``alert_rate`` of each day's payments, the rate being the pre-drift champion's own (so a
    model that alerts more does not look better for it)."""
    drift = settings.drift_day
    last = settings.days - 1
    times = frame["event_timestamp"]
    day_of = ((times - pd.Timestamp(start)) // pd.Timedelta(days=1)).to_numpy()
    y = frame["is_fraud"].to_numpy(dtype=int)
    scores = answered["score"].to_numpy(dtype=float)
    alerts = answered["alert"].to_numpy(dtype=float)
    pre = (day_of > settings.first_training_day) & (day_of < drift)
    rate = float(np.nanmean(alerts[pre]))
    by_day = {
        d.day: _caught_at_rate(scores[day_of == d.day], y[day_of == d.day], rate) for d in days
    }
    for d in days:
        caught, positives = by_day[d.day]
        d.recall_at_rate = caught / positives if positives else float("nan")
    before = _pooled(by_day, settings.first_training_day + 1, drift - 1)
    triggers = [d.day for d in days if d.day >= drift and any("trigger" in e for e in d.events)]
    first_trigger = triggers[0] if triggers else None
    answering = [p for p in promotions if first_trigger is not None and p["day"] > first_trigger]
    promoted_day = answering[0]["day"] if answering else None
    # Recovered: the first day whose trailing ``recovery_days`` (pooled), all answered after
    # that promotion, reach 80 % of the pre-drift recall.
    recovered = None
    for d in days:
        if promoted_day is None or d.day < promoted_day + settings.recovery_days:
            continue
        if _pooled(by_day, d.day - settings.recovery_days + 1, d.day) >= 0.8 * before:
            recovered = d.day
            break
    after_drift = _pooled(by_day, drift, (promoted_day or last + 1) - 1)
    after_promotion = _pooled(by_day, promoted_day + 1, last) if promoted_day is not None else None
    # The new pattern, under the pre-drift champion and under the last promoted one, on the
    # payments that model never fitted: from the start of its evaluation window on (it trained
    # on matured events before it): the share each ranks among its ``rate`` highest scores.
    last_promotion = promotions[-1] if answering else None
    since = drift
    if last_promotion is not None:
        since = max(drift, math.ceil(last_promotion["trained_day"] - settings.evaluation_days))
    later = frame[day_of >= since]
    new = (later["fraud_pattern"] == NEW_PATTERN).to_numpy()

    def pattern_recall(package: _Package) -> float:
        if not new.any():
            return float("nan")
        caught, total = _caught_at_rate(package.scores(later), new.astype(int), rate)
        return caught / total

    old_recall = pattern_recall(old)
    promoted_recall = None
    if last_promotion is not None:
        promoted_recall = pattern_recall(_Package(models_root, last_promotion["package"]))
    return ReplayReport(
        settings=dict(asdict(settings)),
        days=days,
        alert_rate=rate,
        first_trigger_day=first_trigger,
        first_promotion_after_drift=promoted_day,
        recovered_day=recovered,
        recall_before_drift=before,
        recall_after_drift=after_drift,
        recall_after_promotion=after_promotion,
        new_pattern_recall_old_champion=old_recall,
        new_pattern_recall_promoted=promoted_recall,
        new_pattern_measured_from_day=since,
        promotions=promotions,
        stopped=stopped,
        start=start.isoformat(),
        learner_by_day=[],
        learner_comparison={},
        learner_labels_learned=0,
        learner_labels_pending=0,
        learner_restart={},
    )


def _compare(
    report: ReplayReport, frame: pd.DataFrame, compared: pd.DataFrame, start: datetime
) -> None:
    """The learner, the first champion and the day's champion, each ranking each day's
    payments by its own scores at the pre-drift alert rate (``_caught_at_rate``): recall on the
    new pattern and on all reported fraud, per day and pooled from the drift day on."""
    drift = report.settings["drift_day"]
    day_of = ((frame["event_timestamp"] - pd.Timestamp(start)) // pd.Timedelta(days=1)).to_numpy()
    y = frame["is_fraud"].to_numpy(dtype=int)
    new = (frame["fraud_pattern"] == NEW_PATTERN).to_numpy(dtype=int)
    pooled: dict[str, list[int]] = {}
    for d in report.days:
        mask = day_of == d.day
        row: dict[str, Any] = {
            "day": d.day,
            "champion": d.champion,
            "new_pattern": int(new[mask].sum()),
        }
        for who, (pattern_field, recall_field) in _COMPARED.items():
            scores = compared[who].to_numpy(dtype=float)[mask]
            for truth, name, target in (
                (new, "new_pattern_recall", pattern_field),
                (y, "recall", recall_field),
            ):
                caught, total = _caught_at_rate(scores, truth[mask], report.alert_rate)
                value = caught / total if total else float("nan")
                setattr(d, target, value)
                row[f"{who}_{name}"] = value
                if d.day >= drift:
                    sums = pooled.setdefault(f"{who}_{name}", [0, 0])
                    sums[0] += caught
                    sums[1] += total
        if d.day >= drift:
            report.learner_by_day.append(row)
    report.learner_comparison = {k: c / t if t else float("nan") for k, (c, t) in pooled.items()}
