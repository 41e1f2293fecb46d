"""Where the platform's files are and the rules its decisions follow: one Dagster resource.

The embedded default is this repository's layout on one machine (SQLite online store, parquet
offline store, packages under ``models/packages``); every path is relative to ``root`` (the
process's working directory when empty). ``PlatformResource.from_env`` reads each field from
``ORCHESTRATION_<FIELD>`` (``ORCHESTRATION_CHAMPION=fraud_model/v2``, ...), which is how the
Kubernetes deployment (infra/orchestration/) points the same definitions at its volumes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from dagster import Config, ConfigurableResource
from pydantic import Field

ENV_PREFIX = "ORCHESTRATION_"


class GateRules(Config):
    """The gates a candidate must pass, as declared numbers (docs/continuous-training.md)."""

    evaluation_days: float = Field(
        default=14.0,
        gt=0,
        description="Evaluation window: events of the last N days whose labels had matured at "
        "training time; the candidate trains on matured events before it.",
    )
    pr_auc_tolerance: float = Field(
        default=0.02, ge=0, description="Candidate PR-AUC may be this far below the champion's."
    )
    max_recall_drop: float = Field(
        default=0.0,
        ge=0,
        description="Candidate recall at the champion's alert rate may be this far below the "
        "champion's recall (0: not lower).",
    )
    max_calibration_error: float = Field(
        default=0.05, ge=0, description="Expected calibration error of the candidate, at most."
    )
    calibration_bins: int = Field(default=10, ge=2, description="Equal-width bins of the ECE.")
    min_window_rows: int = Field(default=200, ge=1, description="Matured rows the window needs.")
    min_window_positives: int = Field(
        default=10, ge=1, description="Matured positives the window needs."
    )
    segment_field: str = Field(
        default="merchant_category",
        description="Event column whose values are the segments no candidate may do worse in.",
    )
    min_segment_positives: int = Field(
        default=20, ge=1, description="Matured positives a segment needs to be compared."
    )
    max_segment_recall_drop: float = Field(
        default=0.1,
        ge=0,
        description="In a segment, candidate recall at the champion's alert count may be this "
        "far below the champion's.",
    )
    max_predict_us_per_row: float = Field(
        default=200.0, gt=0, description="Candidate model time per row (CPU graph), at most."
    )
    max_predict_time_ratio: float = Field(
        default=3.0, gt=0, description="Candidate model time per row / the champion's, at most."
    )


class TriggerRules(Config):
    """What monitoring must report for retraining to start (the sensor ``retrain_on_decay``)."""

    min_alert_precision: float | None = Field(
        default=0.3,
        description="Precision of the alerting labels on matured labels below this (all days).",
    )
    min_alert_recall: float | None = Field(
        default=0.5,
        description="Recall of the alerting labels on matured labels below this (all days).",
    )
    min_labelled: int = Field(
        default=30, ge=1, description="Matured labels a floor needs before it can fire."
    )
    max_precision_drop: float | None = Field(
        default=0.2, description="A label's precision this far below its holdout (per day)."
    )
    max_score_psi: float | None = Field(default=0.2, description="Score PSI above this (per day).")
    max_feature_psi: float | None = Field(
        default=0.2, description="An input's PSI above this (per day)."
    )
    max_view_age_hours: float | None = Field(
        default=3.0,
        description="A feature view whose online rows were last materialized longer ago is stale.",
    )


class RolloutRules(Config):
    """How a candidate that passed the gates reaches live traffic (orchestration.rollout)."""

    canary_weights: list[float] = Field(
        default=[0.05, 0.25, 0.5, 1.0],
        description="The candidate's traffic share at each canary step, rising.",
    )
    shadow_min_rows: int = Field(
        default=500, ge=1, description="Rows the candidate scores in shadow before it is judged."
    )
    step_min_rows: int = Field(
        default=200,
        ge=1,
        description="Rows the candidate answers in a canary step before it is judged.",
    )
    max_hold_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="A stage that does not see its rows in this time stops the rollout.",
    )
    poll_seconds: float = Field(default=5.0, gt=0, description="Between reads of the metrics.")
    min_agreement: float = Field(
        default=0.9, ge=0, le=1, description="Shadow label agreement with the answers, at least."
    )
    max_error_rate: float = Field(
        default=0.01, ge=0, description="Service errors per scoring request in a step, at most."
    )
    max_deadline_miss_rate: float = Field(
        default=0.01, ge=0, description="Feature reads past their deadline per request, at most."
    )
    max_model_time_ratio: float = Field(
        default=4.0,
        gt=0,
        description="Candidate's median model time per call / the champion's (measured alone "
        "in the shadow stage), at most.",
    )
    model_time_floor_ms: float = Field(
        default=1.0, ge=0, description="Median model time always allowed, whatever the ratio."
    )
    max_request_p99_ms: float = Field(
        default=50.0, gt=0, description="p99 of the domain's scoring requests in a step, at most."
    )
    max_score_psi: float = Field(
        default=0.25, ge=0, description="PSI of a step's candidate scores against its shadow's."
    )


class PlatformResource(ConfigurableResource):
    """The platform's paths, the champion, training settings and the declared rules."""

    root: str = Field(default="", description="Base of relative paths (default: working dir).")
    domain: str = Field(
        default="feature_repo/fraud",
        description="Domain folder: its domain.yaml and its Feast repository.",
    )
    feature_store_yaml: str = Field(
        default="", description="Alternative feature_store.yaml (default: the repository's)."
    )
    transactions: str = Field(
        default="data/transactions.parquet",
        description="Raw labelled events (and their label_available_at).",
    )
    model_root: str = Field(default="models/packages", description="Root of model packages.")
    champion: str = Field(
        default="fraud_model/v1",
        description="The package answering now, name/version under model_root; empty: none yet.",
    )
    feature_service: str = Field(
        default="", description="Candidate's FeatureService (default: the champion's)."
    )
    work_dir: str = Field(
        default="data/orchestration", description="Training sets, evaluations, the decision log."
    )
    prediction_log: str = Field(
        default="data/prediction_log/fraud",
        description="The service's prediction log of the domain "
        "(SCORING_PREDICTION_LOG_DIR/<domain>).",
    )
    monitor_dir: str = Field(default="data/monitor", description="monitor.json and monitor.html.")
    batch_scores_dir: str = Field(
        default="data/batch_scores/fraud",
        description="Nightly scores, one table per day: date=YYYY-MM-DD/scores.parquet.",
    )
    batch_scoring_days: float = Field(
        default=1.0, gt=0, description="Nightly scoring covers the objects of the last N days."
    )
    training_rounds: int = Field(default=400, ge=1, description="Maximum boosting rounds.")
    seed: int = Field(default=7, description="Training seed.")
    service_url: str = Field(
        default="",
        description="The live scoring service (one process) the rollout drives through its "
        "admin API; empty: a candidate that passes stops at 'ready for rollout'.",
    )
    admin_key_env: str = Field(
        default="ORCHESTRATION_ADMIN_KEY",
        description="Variable holding the service's admin API key (never stored in config).",
    )
    gates: GateRules = Field(default_factory=GateRules)
    triggers: TriggerRules = Field(default_factory=TriggerRules)
    rollout: RolloutRules = Field(default_factory=RolloutRules)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PlatformResource:
        """Defaults, each overridden by ``ORCHESTRATION_<FIELD>`` when set."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for name, field in cls.model_fields.items():
            raw = env.get(f"{ENV_PREFIX}{name.upper()}")
            if raw is None or field.annotation in (GateRules, TriggerRules, RolloutRules):
                continue
            values[name] = (
                int(raw)
                if field.annotation is int
                else float(raw)
                if field.annotation is float
                else raw
            )
        return cls(**values)  # type: ignore[arg-type]

    def path(self, value: str) -> Path:
        """A configured path, relative ones under ``root``."""
        path = Path(value)
        return path if path.is_absolute() else Path(self.root or os.getcwd()) / path

    @property
    def repo(self) -> Path:
        return self.path(self.domain)

    @property
    def store_yaml(self) -> Path | None:
        return self.path(self.feature_store_yaml) if self.feature_store_yaml else None

    @property
    def work(self) -> Path:
        return self.path(self.work_dir)

    @property
    def decision_log_path(self) -> Path:
        return self.work / "decisions.jsonl"

    @property
    def promotion_record(self) -> Path:
        """Written by a rollout that promoted its candidate: the champion from then on."""
        return self.work / "champion.json"

    @property
    def live_champion(self) -> str:
        """The champion now: the last promoted candidate, else the configured ``champion``."""
        if self.promotion_record.is_file():
            import json

            promoted = json.loads(self.promotion_record.read_text()).get("package")
            if isinstance(promoted, str) and promoted:
                return promoted
        return self.champion

    @property
    def champion_path(self) -> Path | None:
        """The champion's package folder, None when there is none yet."""
        champion = self.live_champion
        return self.path(self.model_root) / champion if champion else None
