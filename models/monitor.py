"""Delayed-label performance and drift from the prediction log: ``python -m models monitor``.

A label is known days after the answer (a chargeback, the end of a dispute window, a default:
``label_available_at``). The monitor joins the prediction log (``feature_repo.prediction_log``)
with the labels known at ``as_of`` (a simulated clock in tests and backfills, now otherwise):
a label whose ``label_available_at`` is later than ``as_of`` is not used, and its prediction
counts as pending. Per model version, variant and UTC day of the answer it reports:

- label rates (share of each business label among the answers);
- for each alerting label (every label with a score threshold in the package): precision and
  recall among matured labels, next to the package's holdout figures, which use the same
  definitions (``models.evaluate.label_counts``: a label's band, recall over all positives);
  precision and recall of "any alerting label"; PR-AUC of the score;
- drift: score PSI against the package's baseline score distribution, and each input's PSI and
  missing rate against its training baseline (the binning and PSI of the service's
  ``scoring_service.monitoring.drift``, from ``models.package``).

It returns the figures and the alerts that fired (``AlertRules``);
``models.reports.monitoring`` writes them to ``monitor.json`` and a self-contained
``monitor.html``, and the CLI exits 1 when an alert fired, so a scheduler can page on it.

Why one module of this length: performance, drift and the alert rules all read the same join of
the log with the labels at ``as_of``; each is a function of its own, and the page is elsewhere.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field
from sklearn.metrics import average_precision_score

import feature_repo
from feature_repo import prediction_log as plog
from feature_repo.domain import DomainSpec, load_domain
from models.package import (
    Manifest,
    bin_counts,
    package_dir,
    psi,
    read_manifest,
    score_reference,
)
from models.reports import alerting_labels

logger = logging.getLogger(__name__)

ALL_DAYS = "all"
# Domain folders (feature_repo/<domain>/domain.yaml): the log names each answer's domain.
DOMAINS = Path(feature_repo.__file__).resolve().parent
_LOG_COLUMNS = [
    plog.BUSINESS_ID,
    plog.TS,
    plog.MODEL_VERSION,
    plog.VARIANT,
    plog.SCORE,
    plog.LABEL,
    plog.FEATURES,
    plog.FEATURE_NAMES,
    plog.DOMAIN,
]


class AlertRules(BaseModel):
    """Declared alerts; ``None`` switches a rule off. Read from YAML with the same keys."""

    model_config = ConfigDict(extra="forbid")

    max_precision_drop: float | None = Field(
        default=0.2, description="A label's precision this far below its holdout precision."
    )
    max_recall_drop: float | None = Field(
        default=None, description="A label's recall this far below its holdout recall."
    )
    max_score_psi: float | None = Field(default=0.2, description="Score PSI above this.")
    max_feature_psi: float | None = Field(default=0.2, description="An input's PSI above this.")
    max_missing_rate_increase: float | None = Field(
        default=None, description="An input's missing rate this far above its training rate."
    )
    min_labelled: int = Field(
        default=30, ge=1, description="Matured labels a label needs before its precision alerts."
    )
    min_rows: int = Field(default=200, ge=1, description="Answers a day needs before PSI alerts.")

    @classmethod
    def from_yaml(cls, path: Path) -> AlertRules:
        """Rules from a YAML mapping of the fields above."""
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path} must hold a mapping of alert rules")
        return cls.model_validate(loaded)


@dataclass
class Alert:
    """A rule that fired."""

    rule: str
    model_version: str
    variant: str
    day: str
    subject: str
    value: float
    limit: float

    @property
    def message(self) -> str:
        """One line a person can act on."""
        return (
            f"{self.model_version} [{self.variant}] {self.day}: {self.rule} of {self.subject} "
            f"is {self.value:.4f} (limit {self.limit:.4f})"
        )


@dataclass
class MonitorResult:
    """What one monitor run found."""

    as_of: datetime
    groups: list[dict]
    alerts: list[Alert] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        """The JSON document written to ``monitor.json``."""
        return {
            "as_of": self.as_of.isoformat(),
            "groups": self.groups,
            "alerts": [{**vars(a), "message": a.message} for a in self.alerts],
            "notes": self.notes,
        }


# --- inputs ---------------------------------------------------------------------------------


def load_log(root: Path, as_of: datetime) -> pd.DataFrame:
    """The answers given up to ``as_of``."""
    frame = plog.read(root, columns=_LOG_COLUMNS).to_pandas()
    frame[plog.TS] = pd.to_datetime(frame[plog.TS], utc=True)
    return frame[frame[plog.TS] <= pd.Timestamp(as_of)].reset_index(drop=True)


def matured_labels(
    labels: pd.DataFrame,
    as_of: datetime,
    *,
    id_column: str,
    label_column: str,
    available_column: str,
) -> pd.DataFrame:
    """Labels known at ``as_of``, one per business id: (business_id, y)."""
    available = pd.to_datetime(labels[available_column], utc=True)
    known = labels[available <= pd.Timestamp(as_of)]
    out = pd.DataFrame(
        {
            plog.BUSINESS_ID: known[id_column].astype(str).to_numpy(),
            "y": known[label_column].astype(np.int8).to_numpy(),
        }
    )
    if out[plog.BUSINESS_ID].duplicated().any():
        raise ValueError(f"labels hold several rows for one {id_column}; keep one per id")
    return out


def log_domain(log: pd.DataFrame, domains: Path) -> DomainSpec | None:
    """The domain of the log's answers (None for an empty log); ValueError for several."""
    names = sorted(log[plog.DOMAIN].unique()) if plog.DOMAIN in log else []
    if len(names) > 1:
        raise ValueError(f"the log holds answers of several domains {names}; monitor one")
    return load_domain(Path(domains) / names[0]) if names else None


def join(log: pd.DataFrame, matured: pd.DataFrame) -> pd.DataFrame:
    """The log with ``y`` (1 positive, 0 negative, NaN pending) and its UTC ``day``."""
    out = log.merge(matured, on=plog.BUSINESS_ID, how="left", validate="m:1")
    out["day"] = out[plog.TS].dt.strftime("%Y-%m-%d")
    return out


def load_manifests(model_root: Path | None, versions: Iterable[str]) -> dict[str, Manifest]:
    """Manifest of each logged ``name/version`` found under the package root."""
    out: dict[str, Manifest] = {}
    if model_root is None:
        return out
    for label in versions:
        name, _, version = label.rpartition("/")
        path = package_dir(model_root, name, version)
        try:
            out[label] = read_manifest(path)
        except (OSError, ValueError) as exc:
            logger.warning("no usable package for %s at %s: %s", label, path, exc)
    return out


# --- numbers --------------------------------------------------------------------------------


def _rate(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else math.nan


def performance(group: pd.DataFrame, labels: list[str]) -> dict:
    """Label rates, and precision / recall / PR-AUC on the matured rows of one group."""
    n = len(group)
    counts = group[plog.LABEL].value_counts()
    known = group[group["y"].notna()]
    y = known["y"].to_numpy(dtype=np.int8)
    positives = int(y.sum())
    per_label = {}
    for name in labels:
        mask = (known[plog.LABEL] == name).to_numpy()
        per_label[name] = {
            "n": int(counts.get(name, 0)),
            "n_labelled": int(mask.sum()),
            "precision": _rate(y[mask].sum(), mask.sum()),
            "recall": _rate(y[mask].sum(), positives),
        }
    alerted = known[plog.LABEL].isin(labels).to_numpy()
    scored = known[plog.SCORE].notna().to_numpy()
    pr_auc = math.nan
    if scored.any() and 0 < y[scored].sum() < scored.sum():
        pr_auc = float(average_precision_score(y[scored], known[plog.SCORE].to_numpy()[scored]))
    return {
        "n_predictions": n,
        "label_rates": {str(k): _rate(v, n) for k, v in counts.items()},
        "n_labelled": len(known),
        "n_pending": n - len(known),
        "positive_rate": _rate(positives, len(known)),
        "labels": per_label,
        "alert": {
            "n_labelled": int(alerted.sum()),
            "precision": _rate(y[alerted].sum(), alerted.sum()),
            "recall": _rate(y[alerted].sum(), positives),
        },
        "pr_auc": pr_auc,
    }


def holdout_reference(manifest: Manifest | None, labels: list[str]) -> dict:
    """The package's holdout figures in the monitor's terms."""
    if manifest is None:
        return {}
    hold = manifest.metrics.get("holdout", {})

    def number(key: str) -> float:
        value = hold.get(key)
        return float(value) if isinstance(value, int | float) else math.nan

    return {
        "positive_rate": number("positive_rate"),
        "pr_auc": number("pr_auc"),
        "labels": {
            name: {
                "precision": number(f"{name}_precision"),
                "recall": number(f"{name}_recall"),
                "rate": number(f"{name}_share"),
            }
            for name in labels
        },
    }


def feature_matrix(group: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """The logged input vectors of a group as a float32 matrix, and their names."""
    names_column = group[plog.FEATURE_NAMES].dropna()
    if names_column.empty:
        return np.empty((len(group), 0), dtype=np.float32), []
    names = [str(n) for n in names_column.iloc[0]]
    if names_column.map(tuple).nunique() > 1:
        raise ValueError("rows of one model version log different feature lists")
    width = len(names)
    rows = [
        np.full(width, np.nan, dtype=np.float32) if v is None else np.asarray(v, np.float32)
        for v in group[plog.FEATURES]
    ]
    return (np.vstack(rows) if rows else np.empty((0, width), np.float32)), names


def drift(group: pd.DataFrame, manifest: Manifest | None) -> dict:
    """Score PSI and each input's PSI and missing rate against the package's baselines."""
    out: dict = {"score_psi": math.nan, "features": {}}
    if manifest is None:
        return out
    reference = score_reference(manifest)
    scores = group[plog.SCORE].to_numpy(dtype=np.float64, na_value=np.nan)
    if reference is not None and len(scores):
        out["score_psi"] = psi(reference.proportions, bin_counts(scores, reference.edges))
    matrix, names = feature_matrix(group)
    for j, name in enumerate(names):
        baseline = manifest.feature_baselines.get(name)
        column = matrix[:, j]
        missing = float(np.isnan(column).mean()) if len(column) else math.nan
        out["features"][name] = {
            "psi": psi(baseline.proportions, bin_counts(column, baseline.edges))
            if baseline is not None
            else math.nan,
            "missing_rate": missing,
            "baseline_missing_rate": baseline.missing_rate if baseline is not None else math.nan,
        }
    return out


def check(group: dict, rules: AlertRules) -> list[Alert]:
    """The declared rules that fire on one group."""
    fired: list[Alert] = []
    where = (group["model_version"], group["variant"], group["day"])

    def fire(rule: str, subject: str, value: float, limit: float) -> None:
        fired.append(Alert(rule, *where, subject, float(value), float(limit)))

    holdout = group.get("holdout", {}).get("labels", {})
    for name, figures in group["labels"].items():
        reference = holdout.get(name, {})
        if figures["n_labelled"] < rules.min_labelled:
            continue
        for metric, limit in (
            ("precision", rules.max_precision_drop),
            ("recall", rules.max_recall_drop),
        ):
            expected, seen = reference.get(metric, math.nan), figures[metric]
            known = not (math.isnan(expected) or math.isnan(seen))
            if limit is not None and known and expected - seen > limit:
                fire(f"{metric}_drop", name, expected - seen, limit)
    if group["n_predictions"] >= rules.min_rows:
        score_psi = group["score_psi"]
        if rules.max_score_psi is not None and score_psi > rules.max_score_psi:
            fire("score_psi", "score", score_psi, rules.max_score_psi)
        for name, figures in group["features"].items():
            if rules.max_feature_psi is not None and figures["psi"] > rules.max_feature_psi:
                fire("feature_psi", name, figures["psi"], rules.max_feature_psi)
            limit = rules.max_missing_rate_increase
            increase = figures["missing_rate"] - figures["baseline_missing_rate"]
            if limit is not None and increase > limit:
                fire("missing_rate_increase", name, increase, limit)
    return fired


def monitor(
    log_root: Path,
    labels: pd.DataFrame,
    as_of: datetime,
    *,
    model_root: Path | None = None,
    rules: AlertRules | None = None,
    id_column: str | None = None,
    label_column: str | None = None,
    available_column: str = "label_available_at",
    domains: Path = DOMAINS,
) -> MonitorResult:
    """Join the log with the labels matured at ``as_of``; figures per version, variant, day.

    ``id_column`` and ``label_column`` of the labels default to the business id and the label
    column of the log's domain (``<domains>/<domain>/domain.yaml``).
    """
    rules = rules or AlertRules()
    as_of = as_of if as_of.tzinfo else as_of.replace(tzinfo=UTC)
    log = load_log(log_root, as_of)
    try:
        spec = log_domain(log, domains)
    except ValueError:  # several domains, or no domain file: fine when the columns are named
        if id_column is None or label_column is None:
            raise
        spec = None
    if id_column is None or label_column is None:
        if spec is None:
            raise ValueError("the log is empty: name the labels' id and label columns")
        id_column = id_column or spec.business_id
        label_column = label_column or spec.label_column
    matured = matured_labels(
        labels,
        as_of,
        id_column=id_column,
        label_column=label_column,
        available_column=available_column,
    )
    frame = join(log, matured)
    versions = sorted(frame[plog.MODEL_VERSION].unique())
    manifests = load_manifests(model_root, versions)
    result = MonitorResult(as_of=as_of, groups=[])
    for version in versions:
        if version not in manifests:
            result.notes.append(f"no package for {version}: no holdout figures or baselines")
    keys = [plog.MODEL_VERSION, plog.VARIANT]
    for (version, variant), part in frame.groupby(keys, sort=True):
        manifest = manifests.get(str(version))
        labels_of = [name for name, _ in alerting_labels(manifest, spec)]
        days = [(day, rows) for day, rows in part.groupby("day", sort=True)]
        for day, rows in [*days, (ALL_DAYS, part)]:
            group = {
                "model_version": str(version),
                "variant": str(variant),
                "day": str(day),
                **performance(rows, labels_of),
                "holdout": holdout_reference(manifest, labels_of),
                **drift(rows, manifest),
            }
            result.groups.append(group)
            if day != ALL_DAYS:  # alerts are per day; the roll-up is for reading
                result.alerts.extend(check(group, rules))
    return result
