"""Training report: one self-contained ``report.html`` per model package.

Everything is measured on the holdout split, the rows the model never saw while it was fitted
or while its thresholds were chosen: ROC and PR curves of the model, of the rules baseline and
of the previous version of the same model (when the package root has one); calibration; score
histograms by class; the threshold table; feature importance; metrics per segment. Figures are
PNGs embedded as base64, so the file opens anywhere, offline, and can be attached to a ticket.

``models train`` writes the report into the package (listed with its sha256 among the
artefacts, ``models.reports.publish.with_report``); ``python -m models report --package <dir>``
regenerates it from the package and the training set (``models.reports.publish.regenerate``).
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from feature_repo import clock
from feature_repo.domain import DomainSpec
from models import evaluate
from models.package import Manifest
from models.reports import figures
from models.reports.html import data_island, figure, fmt, table
from models.reports.inputs import Comparison, previous_comparison
from models.reports.tables import (
    Segment,
    alerting_labels,
    segment,
    segment_table,
    threshold_table,
)

REPORT_FILE = "report.html"
# Figure ids, in page order; the test and any scraper find them by these.
FIGURES = (
    "fig-roc",
    "fig-pr",
    "fig-calibration",
    "fig-score-histogram",
    "fig-importance",
    "fig-segments",
)
TOP_FEATURES = 25


@dataclass
class ReportData:
    """What the report shows, all aligned on the holdout rows."""

    manifest: Manifest
    y_true: np.ndarray
    scores: np.ndarray
    frame: pd.DataFrame  # holdout rows: features plus any segment columns
    importance: dict[str, float]  # feature -> total gain
    # The domain's segments; they apply only where the holdout frame carries their columns (the
    # training set plus the events' own columns joined on the business id).
    segments: list[Segment] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def curves(self) -> list[tuple[str, np.ndarray]]:
        """The model's scores first, then each comparison's."""
        return [("model", self.scores), *((c.name, c.scores) for c in self.comparisons)]


def build(
    manifest: Manifest,
    holdout: pd.DataFrame,
    booster,  # lightgbm.Booster of this package
    *,
    spec: DomainSpec,
    root: Path | None = None,
    retrieve: Callable[[str, pd.DataFrame], pd.DataFrame] | None = None,
) -> ReportData:
    """Everything the report needs from a holdout frame, the package's booster and its domain."""
    matrix = holdout[manifest.features].to_numpy(dtype=np.float32, na_value=np.nan)
    scores = np.asarray(booster.predict(matrix.astype(np.float64)), dtype=np.float64)
    y = holdout[spec.label_column].to_numpy(dtype=np.int32)
    gains = booster.feature_importance(importance_type="gain")
    data = ReportData(
        manifest=manifest,
        y_true=y,
        scores=scores,
        frame=holdout,
        importance={n: float(g) for n, g in zip(booster.feature_name(), gains, strict=True)},
        segments=[segment(s) for s in spec.segments],
    )
    flags = [r for r in spec.reasons if r.baseline]
    usable = spec.reasons_for(list(holdout.columns), baseline=True)
    if flags and usable:
        data.comparisons.append(
            Comparison("rules baseline", evaluate.rules_baseline(holdout, usable))
        )
    if len(usable) < len(flags):
        lacking = sorted({f for r in flags for f in r.features} - set(holdout.columns))
        data.notes.append(f"rules baseline without the flags on absent columns {lacking}.")
    if root is not None:
        previous, note = previous_comparison(root, manifest, holdout, retrieve)
        if previous is not None:
            data.comparisons.append(previous)
        if note:
            data.notes.append(note)
    return data


def summary(data: ReportData) -> dict:
    """The numbers of the report, also embedded in it as JSON."""
    m = data.manifest
    curves = {
        "model": evaluate.ranking_metrics(data.y_true, data.scores),
        **{c.name: evaluate.ranking_metrics(data.y_true, c.scores) for c in data.comparisons},
    }
    alert_at = alerting_labels(m)[0][1]
    segments, unavailable = segment_table(
        data.segments, data.frame, data.y_true, data.scores, alert_at
    )
    return {
        "model": f"{m.name}/{m.version}",
        "feature_service": m.feature_service,
        "holdout_rows": len(data.y_true),
        "holdout_positive_rate": float(data.y_true.mean()) if len(data.y_true) else math.nan,
        "curves": curves,
        "thresholds": threshold_table(m, data.y_true, data.scores),
        "segments": segments,
        "segments_unavailable": unavailable,
        "figures": list(FIGURES),
        "notes": data.notes,
    }


_STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; }
.grid { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; } figcaption { font-size: 0.85em; color: #555; max-width: 620px; }
img { max-width: 100%; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }
th { background: #f3f3f3; } td:first-child, td:nth-child(2) { text-align: left; }
.note { color: #8a5a00; }
"""


def render(data: ReportData) -> str:
    """The report as one HTML string (figures inline)."""
    m = data.manifest
    numbers = summary(data)
    thresholds = alerting_labels(m)
    compared = ", ".join(c.name for c in data.comparisons) or "nothing else"
    hold = m.metrics.get("holdout", {})
    facts = [
        ("model", f"{m.name}/{m.version}"),
        ("feature service", f"{m.feature_service} ({len(m.features)} inputs)"),
        ("trained", m.created_at.isoformat()),
        ("holdout from", str(m.training.get("holdout_from", "?"))),
        ("holdout rows", f"{numbers['holdout_rows']}"),
        ("holdout positive rate", fmt(numbers["holdout_positive_rate"])),
        ("manifest holdout PR-AUC", fmt(hold.get("pr_auc", math.nan))),
        ("label thresholds", m.label_thresholds.rule or "-"),
    ]  # fmt: skip
    shown = [
        figure(
            "fig-roc",
            "ROC curves",
            figures.roc(data.y_true, data.curves),
            f"Model against {compared}.",
        ),
        figure(
            "fig-pr",
            "Precision-recall curves",
            figures.precision_recall(data.y_true, data.curves, thresholds),
            "Dots: the model at each alerting label's threshold; dotted line: positive rate.",
        ),
        figure(
            "fig-calibration",
            "Calibration plot",
            figures.calibration(data.y_true, data.scores),
            "Observed positive rate per decile of score against the mean score of the decile.",
        ),
        figure(
            "fig-score-histogram",
            "Score histograms by class",
            figures.score_histogram(data.y_true, data.scores, thresholds),
            "Dashed lines: label thresholds.",
        ),
        figure(
            "fig-importance",
            "Feature importance",
            figures.importance(data.importance, TOP_FEATURES),
            f"Top {TOP_FEATURES} inputs by total split gain.",
        ),
        figure(
            "fig-segments",
            "Metrics per segment",
            figures.segments(numbers["segments"]),
            "Recall and precision of score >= the lowest alerting threshold; rows in brackets.",
        ),
    ]
    curve_rows = [{"scorer": name, **values} for name, values in numbers["curves"].items()]
    notes = "".join(f'<p class="note">{html.escape(n)}</p>' for n in data.notes)
    lacking = "; ".join(numbers["segments_unavailable"])
    unavailable = (
        f'<p class="note">Segments without data: {html.escape(lacking)}</p>' if lacking else ""
    )
    facts_html = "".join(f"<tr><th>{k}</th><td>{html.escape(v)}</td></tr>" for k, v in facts)
    generated = clock.now().isoformat(timespec="seconds")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Training report {html.escape(m.name)}/{html.escape(m.version)}</title>
<style>{_STYLE}</style></head>
<body>
<h1>Training report: {html.escape(m.name)}/{html.escape(m.version)}</h1>
<table>{facts_html}</table>
{notes}
<h2>Ranking</h2>
{table(curve_rows, ["scorer", "roc_auc", "pr_auc"])}
<div class="grid">{shown[0]}{shown[1]}</div>
<h2>Calibration and score distribution</h2>
<div class="grid">{shown[2]}{shown[3]}</div>
<h2>Thresholds</h2>
{table(numbers["thresholds"], ["label", "threshold", "alert_rate", "precision", "recall",
        "alert_rate_at_or_above", "precision_at_or_above", "recall_at_or_above"])}
<h2>Feature importance</h2>
{shown[4]}
<h2>Segments</h2>
{unavailable}
{table(numbers["segments"], ["segment", "group", "n_rows", "positive_rate", "alert_rate",
        "precision", "recall", "pr_auc"])}
{shown[5]}
<p><small>Generated {generated}.</small></p>
{data_island("report-data", numbers)}
</body></html>
"""  # fmt: skip
