"""The figures the gates read: matured labels cut at training time, and two packages scored on the
most recent window of them.

Labels are known days after the event (``label_available_at``). At training time ``as_of`` a
label is usable only once it has matured, as everywhere else on the platform (point-in-time).
The evaluation window is the last ``evaluation_days`` of events whose labels had matured at
``as_of``; the candidate trains on the matured events before the window, so the window is new to
it. Both packages are scored the way they serve: features through their own FeatureService
(point-in-time, on-demand views included), then their CPU ONNX graph.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from feast import FeatureStore
from sklearn.metrics import average_precision_score

from feature_repo.domain import DomainSpec
from models import export
from models.dataset import (
    entity_dataframe,
    feature_layout,
    feature_matrix,
    retrieve_training_set,
)
from models.package import Manifest

LABEL_AVAILABLE_AT = "label_available_at"


@dataclass(frozen=True)
class MaturedSplit:
    """Matured labelled events at ``as_of``: what the candidate trains on, what judges it."""

    as_of: datetime
    window_start: datetime
    training: pd.DataFrame
    evaluation: pd.DataFrame
    unmatured: int  # events before as_of whose label was not known yet

    def summary(self) -> dict[str, Any]:
        return {
            "as_of": self.as_of.isoformat(),
            "window_start": self.window_start.isoformat(),
            "training_rows": len(self.training),
            "evaluation_rows": len(self.evaluation),
            "left_out_unmatured_labels": self.unmatured,
        }


def matured_split(
    events: pd.DataFrame, spec: DomainSpec, as_of: datetime, evaluation_days: float
) -> MaturedSplit:
    """Events before ``as_of`` with labels matured by then, split at the evaluation window."""
    if LABEL_AVAILABLE_AT not in events.columns:
        raise ValueError(
            f"the events have no {LABEL_AVAILABLE_AT} column: without it no one can tell which "
            "labels were known at training time"
        )
    times = pd.to_datetime(events[spec.timestamp_field], utc=True)
    available = pd.to_datetime(events[LABEL_AVAILABLE_AT], utc=True)
    stamp = pd.Timestamp(as_of)
    seen = times < stamp
    matured = seen & (available <= stamp)
    start = stamp - pd.Timedelta(timedelta(days=evaluation_days))
    return MaturedSplit(
        as_of=as_of,
        window_start=start.to_pydatetime(),
        training=events[matured & (times < start)].reset_index(drop=True),
        evaluation=events[matured & (times >= start)].reset_index(drop=True),
        unmatured=int((seen & ~matured).sum()),
    )


@dataclass(frozen=True)
class Scored:
    """A package's answers on the window, and what its model time is measured on."""

    frame: pd.DataFrame  # business id, y, score and the segment column when the events have it
    session: Any  # the CPU graph's ONNX Runtime session
    matrix: np.ndarray  # its input rows on the window


def score_package(
    path: Path,
    manifest: Manifest,
    store: FeatureStore,
    events: pd.DataFrame,
    spec: DomainSpec,
    segment_field: str = "",
) -> Scored:
    """(business id, label, score) of each event, as the package would have answered it, and
    how long its CPU graph takes per row in micro-batches as the service sends them."""
    layout = feature_layout(store, manifest.feature_service)
    entity_df = entity_dataframe(events, spec, request_fields=layout.request_fields)
    frame = retrieve_training_set(store, manifest.feature_service, entity_df, spec)
    graph = (Path(path) / manifest.graphs["cpu"].file).read_bytes()
    session = export.session(graph)
    matrix = feature_matrix(frame, manifest.features)
    scores = export.onnx_probability(session, matrix)
    out = pd.DataFrame(
        {
            spec.business_id: frame[spec.business_id].astype(str).to_numpy(),
            "y": frame[spec.label_column].to_numpy(dtype=np.int8),
            "score": scores,
        }
    )
    if segment_field and segment_field in events.columns:
        segments = events.drop_duplicates(spec.business_id).set_index(
            events.drop_duplicates(spec.business_id)[spec.business_id].astype(str)
        )[segment_field]
        out["segment"] = out[spec.business_id].map(segments).astype(str).to_numpy()
    return Scored(out, session, matrix)


def predict_seconds_per_row(
    scored: Sequence[Scored], batch: int = 32, repeats: int = 5, rows: int = 2048
) -> list[float]:
    """Model time per row of each package over up to ``rows`` window rows in batches of
    ``batch``: each batch's fastest of ``repeats`` runs, summed. The packages run each batch
    back to back (in alternating order), so a busy spell of the machine slows them alike, and
    one batch's stall only counts if it recurs in every repeat of that very batch."""
    samples = [one.matrix[:rows] for one in scored]
    names = [one.session.get_inputs()[0].name for one in scored]
    starts = [range(0, len(sample), batch) for sample in samples]
    best = [np.full(len(s), np.inf) for s in starts]
    for one, sample, name in zip(scored, samples, names, strict=True):  # warm-up
        if len(sample):
            one.session.run(None, {name: sample[:batch]})
    order = list(range(len(scored)))
    for _ in range(repeats):
        for k in range(max((len(s) for s in starts), default=0)):
            for i in order:
                if k >= len(starts[i]):
                    continue
                j = starts[i][k]
                chunk = samples[i][j : j + batch]
                started = time.perf_counter()
                scored[i].session.run(None, {names[i]: chunk})
                best[i][k] = min(best[i][k], time.perf_counter() - started)
        order.reverse()
    return [
        float(b.sum()) / len(sample) if len(sample) else math.nan
        for b, sample in zip(best, samples, strict=True)
    ]


def segment_recalls(
    rows: pd.DataFrame, cutoff_candidate: float, cutoff_champion: float, min_positives: int
) -> list[dict[str, Any]]:
    """Per segment with at least ``min_positives`` positives: both recalls at their cutoffs."""
    table = []
    for segment, part in rows.groupby("segment", sort=True):
        positives = int(part["y"].sum())
        if positives < min_positives:
            continue
        fraud = part[part["y"] == 1]
        table.append(
            {
                "segment": str(segment),
                "rows": len(part),
                "positives": positives,
                "candidate_recall": float((fraud["score"] >= cutoff_candidate).mean()),
                "champion_recall": float((fraud["score_champion"] >= cutoff_champion).mean()),
            }
        )
    return table


def pr_auc(y: np.ndarray, scores: np.ndarray) -> float:
    """Average precision; NaN with a single class."""
    return float(average_precision_score(y, scores)) if 0 < y.sum() < len(y) else math.nan


def recall_at_count(y: np.ndarray, scores: np.ndarray, count: int) -> float:
    """Recall of the ``count`` highest scores (ties broken by order, stable)."""
    positives = int(y.sum())
    if positives == 0:
        return math.nan
    top = np.argsort(-scores, kind="stable")[:count]
    return float(y[top].sum() / positives)


def calibration_error(y: np.ndarray, scores: np.ndarray, bins: int) -> tuple[float, list[dict]]:
    """Expected calibration error over equal-width score bins, and the bins themselves."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, scores, side="right") - 1, 0, bins - 1)
    total = len(y)
    error = 0.0
    table = []
    for b in range(bins):
        mask = index == b
        n = int(mask.sum())
        if n == 0:
            continue
        mean_score, rate = float(scores[mask].mean()), float(y[mask].mean())
        error += n / total * abs(mean_score - rate)
        table.append(
            {
                "bin": f"[{edges[b]:.1f}, {edges[b + 1]:.1f})",
                "n": n,
                "mean_score": mean_score,
                "positive_rate": rate,
            }
        )
    return (float(error) if total else math.nan), table


def alert_cutoff(manifest: Manifest) -> tuple[str, float]:
    """The lowest alerting label of a package and its score threshold."""
    label, value = next(iter(manifest.label_thresholds.cutoffs.items()))
    return label, float(value)


def figures(
    candidate_scored: Scored,
    champion_scored: Scored | None,
    champion_manifest: Manifest | None,
    business_id: str,
    bins: int,
    min_segment_positives: int = 20,
) -> dict[str, Any]:
    """Everything the evaluation gates read, on the rows both packages scored."""
    candidate = candidate_scored.frame
    champion = champion_scored.frame if champion_scored is not None else None
    rows = candidate
    if champion is not None:
        rows = candidate.merge(
            champion[[business_id, "score"]],
            on=business_id,
            suffixes=("", "_champion"),
            validate="1:1",
        )
    y = rows["y"].to_numpy(dtype=np.int8)
    scores = rows["score"].to_numpy(dtype=np.float64)
    ece, table = calibration_error(y, scores, bins)
    out: dict[str, Any] = {
        "n_rows": len(rows),
        "n_positives": int(y.sum()),
        "positive_rate": float(y.mean()) if len(y) else math.nan,
        "candidate_pr_auc": pr_auc(y, scores),
        "candidate_calibration_error": ece,
        "calibration_bins": table,
    }
    timed = predict_seconds_per_row(
        [candidate_scored] if champion_scored is None else [candidate_scored, champion_scored]
    )
    out["candidate_predict_us_per_row"] = timed[0] * 1e6
    if champion is None or champion_manifest is None or champion_scored is None:
        return out
    champion_scores = rows["score_champion"].to_numpy(dtype=np.float64)
    label, cutoff = alert_cutoff(champion_manifest)
    alerts = int((champion_scores >= cutoff).sum())
    out.update(
        {
            "champion_pr_auc": pr_auc(y, champion_scores),
            "champion_alert_label": label,
            "champion_alert_threshold": cutoff,
            "champion_alerts": alerts,
            "champion_alert_rate": alerts / len(rows) if len(rows) else math.nan,
            "champion_recall_at_alert_rate": recall_at_count(y, champion_scores, alerts),
            "candidate_recall_at_alert_rate": recall_at_count(y, scores, alerts),
            "champion_calibration_error": calibration_error(y, champion_scores, bins)[0],
            "champion_predict_us_per_row": timed[1] * 1e6,
        }
    )
    if "segment" in rows.columns and alerts > 0:
        # The candidate's cutoff giving the champion's number of alerts on the window.
        ranked = np.sort(scores)[::-1]
        cutoff_candidate = float(ranked[min(alerts, len(ranked)) - 1])
        out["segments"] = segment_recalls(rows, cutoff_candidate, cutoff, min_segment_positives)
    return out
