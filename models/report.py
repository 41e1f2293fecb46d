"""Training report: one self-contained ``report.html`` per model package.

Everything is measured on the holdout split, the rows the model never saw while it was fitted
or while its thresholds were chosen: ROC and PR curves of the model, of the rules baseline and
of the previous version of the same model (when the package root has one); calibration; score
histograms by class; the threshold table; feature importance; metrics per segment. Figures are
PNGs embedded as base64, so the file opens anywhere, offline, and can be attached to a ticket.

``models train`` writes the report into the package (listed with its sha256 among the
artefacts); ``python -m models report --package <dir>`` regenerates it from the package and the
training set and republishes the package atomically.

Why one module of this length: the report is one page whose figures share the holdout arrays, the
colours and the layout; each figure is a short function of its own here.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.calibration import calibration_curve
from sklearn.metrics import precision_recall_curve, roc_curve

from feature_repo import clock
from feature_repo.domain import DomainSpec, SegmentSpec
from models import evaluate
from models.package import (
    MANIFEST_FILE,
    Manifest,
    package_dir,
    read_manifest,
    sha256_bytes,
    write_package,
)

logger = logging.getLogger(__name__)

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
class Comparison:
    """Another scorer of the same holdout rows: the rules baseline, the previous version."""

    name: str
    scores: np.ndarray


@dataclass
class Segment:
    """A way to slice the holdout, usable when the frame has its columns."""

    name: str
    columns: tuple[str, ...]
    groups: Callable[[pd.DataFrame], pd.Series]


def _bands(column: str, edges: list[float]) -> Callable[[pd.DataFrame], pd.Series]:
    labels = [
        f"{lo:g}-{hi:g}" if hi != math.inf else f">= {lo:g}" for lo, hi in itertools.pairwise(edges)
    ]
    return lambda frame: pd.cut(frame[column], bins=edges, right=False, labels=labels)


def _differs(column: str, other: str) -> Callable[[pd.DataFrame], pd.Series]:
    def groups(frame: pd.DataFrame) -> pd.Series:
        differs = frame[column].astype(str) != frame[other].astype(str)
        return pd.Series(
            np.where(differs, f"{column} differs from {other}", f"same {column} and {other}"),
            index=frame.index,
        )

    return groups


def segment(declared: SegmentSpec) -> Segment:
    """A report segment from a domain's declaration: by value, by bins, or same/different."""
    column = declared.field
    if declared.bins is not None:
        return Segment(declared.name, (column,), _bands(column, declared.bins))
    if declared.differs_from is not None:
        other = declared.differs_from
        return Segment(declared.name, (column, other), _differs(column, other))
    return Segment(declared.name, (column,), lambda frame: frame[column].astype(str))


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


# --- numbers --------------------------------------------------------------------------------


def alerting_labels(manifest: Manifest) -> list[tuple[str, float]]:
    """The labels that alert, lowest threshold first: every label with a score threshold."""
    thresholds = manifest.label_thresholds.model_dump(exclude={"rule"})
    return sorted(((name, float(value)) for name, value in thresholds.items()), key=lambda x: x[1])


def threshold_table(manifest: Manifest, y: np.ndarray, scores: np.ndarray) -> list[dict]:
    """Per alerting label: its score band, alert rate, precision and recall on these rows.

    Band figures (the label exactly) match the manifest's ``<label>_precision``; the
    cumulative ones count every row at or above the label's threshold.
    """
    labels = alerting_labels(manifest)
    positives = max(int(y.sum()), 1)
    rows = []
    for i, (name, low) in enumerate(labels):
        high = labels[i + 1][1] if i + 1 < len(labels) else math.inf
        band = (scores >= low) & (scores < high)
        above = scores >= low
        rows.append(
            {
                "label": name,
                "threshold": low,
                "alert_rate": float(band.mean()) if len(band) else 0.0,
                "precision": float(y[band].mean()) if band.any() else math.nan,
                "recall": float(y[band].sum() / positives),
                "alert_rate_at_or_above": float(above.mean()) if len(above) else 0.0,
                "precision_at_or_above": float(y[above].mean()) if above.any() else math.nan,
                "recall_at_or_above": float(y[above].sum() / positives),
            }
        )
    return rows


def segment_table(data: ReportData) -> tuple[list[dict], list[str]]:
    """Metrics per segment group; and the segments the frame lacks columns for."""
    alert_at = alerting_labels(data.manifest)[0][1]
    rows, unavailable = [], []
    for part in data.segments:
        missing = [c for c in part.columns if c not in data.frame.columns]
        if missing:
            unavailable.append(f"{part.name} (no column {', '.join(missing)})")
            continue
        series = part.groups(data.frame)
        if isinstance(series.dtype, pd.CategoricalDtype):  # bands keep their own order
            order = [str(c) for c in series.cat.categories]
        else:
            order = sorted({str(g) for g in series.dropna()})
        groups = series.astype(str).to_numpy()
        for group in order:
            mask = groups == group
            if not mask.any():
                continue
            y, s = data.y_true[mask], data.scores[mask]
            alerted = s >= alert_at
            rows.append(
                {
                    "segment": part.name,
                    "group": str(group),
                    "n_rows": int(mask.sum()),
                    "positive_rate": float(y.mean()),
                    "alert_rate": float(alerted.mean()),
                    "precision": float(y[alerted].mean()) if alerted.any() else math.nan,
                    "recall": float(y[alerted].sum() / y.sum()) if y.sum() else math.nan,
                    **{
                        k: v
                        for k, v in evaluate.ranking_metrics(y, s).items()
                        if k in ("pr_auc", "roc_auc")
                    },
                }
            )
    return rows, unavailable


def summary(data: ReportData) -> dict:
    """The numbers of the report, also embedded in it as JSON."""
    m = data.manifest
    curves = {
        "model": evaluate.ranking_metrics(data.y_true, data.scores),
        **{c.name: evaluate.ranking_metrics(data.y_true, c.scores) for c in data.comparisons},
    }
    segments, unavailable = segment_table(data)
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


# --- figures --------------------------------------------------------------------------------


def png_base64(fig: Figure) -> str:
    """A figure as a base64 PNG, for an ``img`` data URL."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=96, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _named_curves(data: ReportData) -> list[tuple[str, np.ndarray]]:
    return [("model", data.scores), *((c.name, c.scores) for c in data.comparisons)]


def _roc_figure(data: ReportData) -> Figure:
    fig = Figure(figsize=(6.4, 5.2))
    ax = fig.subplots()
    for name, scores in _named_curves(data):
        fpr, tpr, _ = roc_curve(data.y_true, scores)
        auc = evaluate.ranking_metrics(data.y_true, scores)["roc_auc"]
        ax.plot(fpr, tpr, label=f"{name} (ROC-AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, holdout")
    ax.legend(loc="lower right")
    return fig


def _pr_figure(data: ReportData) -> Figure:
    fig = Figure(figsize=(6.4, 5.2))
    ax = fig.subplots()
    for name, scores in _named_curves(data):
        precision, recall, _ = precision_recall_curve(data.y_true, scores)
        ap = evaluate.ranking_metrics(data.y_true, scores)["pr_auc"]
        ax.step(recall, precision, where="post", label=f"{name} (PR-AUC {ap:.3f})")
    for name, threshold in alerting_labels(data.manifest):
        above = data.scores >= threshold
        if above.any():
            ax.scatter(
                [data.y_true[above].sum() / max(data.y_true.sum(), 1)],
                [data.y_true[above].mean()],
                marker="o",
                zorder=3,
                label=f"score >= {name} threshold",
            )
    ax.axhline(data.y_true.mean(), color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall, holdout")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(loc="upper right", fontsize="small")
    return fig


def _calibration_figure(data: ReportData) -> Figure:
    fig = Figure(figsize=(6.4, 5.2))
    ax = fig.subplots()
    observed, predicted = calibration_curve(
        data.y_true, data.scores, n_bins=10, strategy="quantile"
    )
    ax.plot(predicted, observed, marker="o", label="model (holdout deciles of score)")
    top = max(float(np.max(predicted)), float(np.max(observed)), 1e-3)
    ax.plot([0, top], [0, top], color="grey", linestyle=":", linewidth=1, label="perfect")
    ax.set(xlabel="mean predicted score", ylabel="observed positive rate", title="Calibration")
    ax.legend(loc="lower right")  # a rare-event model's curve climbs steeply near the left edge
    return fig


def _histogram_figure(data: ReportData) -> Figure:
    fig = Figure(figsize=(6.4, 5.2))
    ax = fig.subplots()
    # Scores of a rare-event model crowd near zero: bins span the observed range, not [0, 1].
    top = max(
        float(np.max(data.scores, initial=0.0)), *(t for _, t in alerting_labels(data.manifest))
    )
    bins = np.linspace(0.0, min(1.0, top * 1.05) or 1.0, 61).tolist()
    for value, name in ((0, "negative (label 0)"), (1, "positive (label 1)")):
        scores = data.scores[data.y_true == value]
        if scores.size:
            ax.hist(scores, bins=bins, histtype="step", density=True, linewidth=1.5, label=name)
    for name, threshold in alerting_labels(data.manifest):
        ax.axvline(threshold, linestyle="--", linewidth=1, color="black")
        ax.annotate(name, (threshold, 0.98), xycoords=("data", "axes fraction"), rotation=90,
                    va="top", ha="right", fontsize="small")  # fmt: skip
    ax.set_yscale("log")
    ax.set(xlabel="score", ylabel="density (log)", title="Scores by class, holdout")
    ax.legend(loc="upper center")
    return fig


def _importance_figure(data: ReportData) -> Figure:
    ranked = sorted(data.importance.items(), key=lambda kv: kv[1], reverse=True)[:TOP_FEATURES]
    total = sum(data.importance.values()) or 1.0
    fig = Figure(figsize=(7.5, 0.28 * len(ranked) + 1.2))
    ax = fig.subplots()
    names = [name for name, _ in ranked][::-1]
    shares = [gain / total for _, gain in ranked][::-1]
    ax.barh(names, shares)
    ax.set(xlabel="share of total split gain", title="Feature importance (gain)")
    ax.tick_params(axis="y", labelsize="small")
    return fig


def _segments_figure(rows: list[dict]) -> Figure:
    segments = list(dict.fromkeys(r["segment"] for r in rows)) or ["(none)"]
    fig = Figure(figsize=(7.5, 2.6 * len(segments)))
    axes = np.atleast_1d(fig.subplots(len(segments), 1))
    for ax, segment in zip(axes, segments, strict=True):
        part = [r for r in rows if r["segment"] == segment]
        y = np.arange(len(part))
        recall = [0.0 if math.isnan(r["recall"]) else r["recall"] for r in part]
        precision = [0.0 if math.isnan(r["precision"]) else r["precision"] for r in part]
        ax.barh(y - 0.2, recall, height=0.4, label="recall")
        ax.barh(y + 0.2, precision, height=0.4, label="precision")
        ax.set_yticks(y, [f"{r['group']} ({r['n_rows']})" for r in part], fontsize="small")
        ax.set_xlim(0, 1)
        ax.set_title(f"{segment}: at the lowest alerting threshold", fontsize="medium")
        ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    return fig


# --- page -----------------------------------------------------------------------------------


def json_safe(value: object) -> object:
    """NaN (not JSON) as null, numpy scalars as Python numbers, recursively."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4f}"
    return html.escape(str(value))


def _table(rows: list[dict], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_fmt(r.get(c, ''))}</td>" for c in columns) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(fig_id: str, alt: str, fig: Figure, caption: str) -> str:
    return (
        f'<figure><img id="{fig_id}" alt="{html.escape(alt)}" '
        f'src="data:image/png;base64,{png_base64(fig)}"><figcaption>{html.escape(caption)}'
        "</figcaption></figure>"
    )


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
    compared = ", ".join(c.name for c in data.comparisons) or "nothing else"
    hold = m.metrics.get("holdout", {})
    facts = [
        ("model", f"{m.name}/{m.version}"),
        ("feature service", f"{m.feature_service} ({len(m.features)} inputs)"),
        ("trained", m.created_at.isoformat()),
        ("holdout from", str(m.training.get("holdout_from", "?"))),
        ("holdout rows", f"{numbers['holdout_rows']}"),
        ("holdout positive rate", _fmt(numbers["holdout_positive_rate"])),
        ("manifest holdout PR-AUC", _fmt(hold.get("pr_auc", math.nan))),
        ("label thresholds", m.label_thresholds.rule or "-"),
    ]  # fmt: skip
    figures = [
        _figure("fig-roc", "ROC curves", _roc_figure(data), f"Model against {compared}."),
        _figure(
            "fig-pr",
            "Precision-recall curves",
            _pr_figure(data),
            "Dots: the model at each alerting label's threshold; dotted line: positive rate.",
        ),
        _figure(
            "fig-calibration",
            "Calibration plot",
            _calibration_figure(data),
            "Observed positive rate per decile of score against the mean score of the decile.",
        ),
        _figure(
            "fig-score-histogram",
            "Score histograms by class",
            _histogram_figure(data),
            "Dashed lines: label thresholds.",
        ),
        _figure(
            "fig-importance",
            "Feature importance",
            _importance_figure(data),
            f"Top {TOP_FEATURES} inputs by total split gain.",
        ),
        _figure(
            "fig-segments",
            "Metrics per segment",
            _segments_figure(numbers["segments"]),
            "Recall and precision of score >= the lowest alerting threshold; rows in brackets.",
        ),
    ]
    curve_rows = [{"scorer": name, **values} for name, values in numbers["curves"].items()]
    notes = "".join(f'<p class="note">{html.escape(n)}</p>' for n in data.notes)
    lacking = "; ".join(numbers["segments_unavailable"])
    unavailable = (
        f'<p class="note">Segments without data: {html.escape(lacking)}</p>' if lacking else ""
    )
    payload = json.dumps(json_safe(numbers)).replace("</", "<\\/")
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
{_table(curve_rows, ["scorer", "roc_auc", "pr_auc"])}
<div class="grid">{figures[0]}{figures[1]}</div>
<h2>Calibration and score distribution</h2>
<div class="grid">{figures[2]}{figures[3]}</div>
<h2>Thresholds</h2>
{_table(numbers["thresholds"], ["label", "threshold", "alert_rate", "precision", "recall",
        "alert_rate_at_or_above", "precision_at_or_above", "recall_at_or_above"])}
<h2>Feature importance</h2>
{figures[4]}
<h2>Segments</h2>
{unavailable}
{_table(numbers["segments"], ["segment", "group", "n_rows", "positive_rate", "alert_rate",
        "precision", "recall", "pr_auc"])}
{figures[5]}
<p><small>Generated {generated}.</small></p>
<script type="application/json" id="report-data">{payload}</script>
</body></html>
"""  # fmt: skip


# --- inputs ---------------------------------------------------------------------------------


def holdout_rows(frame: pd.DataFrame, manifest: Manifest) -> pd.DataFrame:
    """The manifest's holdout split of a training set: rows from ``holdout_from`` to the end
    of the data range it was trained on."""
    times = pd.to_datetime(frame["event_timestamp"], utc=True)
    start = pd.Timestamp(str(manifest.training["holdout_from"]))
    mask = times >= start
    data_range = manifest.training.get("data_range")
    if isinstance(data_range, list) and len(data_range) == 2:
        mask &= times <= pd.Timestamp(str(data_range[1]))
    return frame[mask].reset_index(drop=True)


def with_segment_columns(
    frame: pd.DataFrame, events: pd.DataFrame | None, spec: DomainSpec
) -> pd.DataFrame:
    """The frame plus the events' own columns it lacks (request fields, evaluation-only
    columns...), joined on the business id."""
    key = spec.business_id
    if events is None or key not in frame.columns:
        return frame
    extra = [c for c in events.columns if c not in frame.columns]
    if not extra:
        return frame
    joined = frame.merge(events[[key, *extra]], on=key, how="left", validate="1:1")
    return joined


def find_previous(root: Path, manifest: Manifest) -> tuple[Path, Manifest] | None:
    """The latest other version of the same model created before this one, if any."""
    best: tuple[Path, Manifest] | None = None
    for candidate in sorted((Path(root) / manifest.name).glob(f"*/{MANIFEST_FILE}")):
        folder = candidate.parent
        if folder.name == manifest.version or folder.name.startswith("."):
            continue
        try:
            other = read_manifest(folder)
        except (ValueError, OSError) as exc:
            logger.warning("skipping %s for the report's comparison: %s", folder, exc)
            continue
        if other.created_at >= manifest.created_at:
            continue
        if best is None or other.created_at > best[1].created_at:
            best = (folder, other)
    return best


def booster_file(manifest: Manifest) -> str | None:
    """The LightGBM model text among a package's artefacts."""
    return next((name for name in manifest.artefacts if name.endswith(".lgb.txt")), None)


def previous_comparison(
    root: Path,
    manifest: Manifest,
    holdout: pd.DataFrame,
    retrieve: Callable[[str, pd.DataFrame], pd.DataFrame] | None = None,
) -> tuple[Comparison | None, str | None]:
    """The previous version's scores on these holdout rows, or a note saying why there are none.

    Its inputs come from the holdout frame when it has them all, else from ``retrieve``
    (feature service, holdout rows) -> a point-in-time frame in the same row order.
    """
    import lightgbm as lgb

    found = find_previous(root, manifest)
    if found is None:
        return None, None
    folder, other = found
    label = f"previous {other.name}/{other.version}"
    booster_name = booster_file(other)
    if booster_name is None or not (folder / booster_name).is_file():
        return None, f"{label} has no LightGBM model file; not compared."
    frame = holdout
    lacking = [f for f in other.features if f not in frame.columns]
    if lacking and retrieve is not None:
        try:
            frame = retrieve(other.feature_service, holdout)
        except Exception as exc:  # a feature service gone from the registry, for one
            return None, f"{label}: its features could not be retrieved ({exc}); not compared."
        lacking = [f for f in other.features if f not in frame.columns]
    if lacking:
        return None, f"{label} reads inputs this training set lacks ({lacking[:3]}...)."
    booster = lgb.Booster(model_file=str(folder / booster_name))
    matrix = frame[other.features].to_numpy(dtype=np.float32, na_value=np.nan)
    scores = np.asarray(booster.predict(matrix.astype(np.float64)), dtype=np.float64)
    return Comparison(label, scores), None


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


def with_report(manifest: Manifest, report_html: str) -> tuple[Manifest, bytes]:
    """The manifest listing the report among its artefacts, and the report's bytes."""
    payload = report_html.encode("utf-8")
    artefacts = {**manifest.artefacts, REPORT_FILE: sha256_bytes(payload)}
    return manifest.model_copy(update={"artefacts": artefacts}), payload


def republish(package: Path, manifest: Manifest, report_html: str) -> Path:
    """Write a new report into a published package: the whole folder is swapped atomically,
    so a loader sees the old package or the new one, each with matching checksums."""
    package = Path(package)
    root = package.parent.parent
    if package_dir(root, manifest.name, manifest.version).resolve() != package.resolve():
        raise ValueError(
            f"{package} is not laid out as <root>/{manifest.name}/{manifest.version}; the "
            "report can only be republished in a package root"
        )
    updated, payload = with_report(manifest, report_html)
    files = {
        path.name: path.read_bytes()
        for path in sorted(package.iterdir())
        if path.is_file() and path.name not in (MANIFEST_FILE, REPORT_FILE)
    }
    files[REPORT_FILE] = payload
    return write_package(root, updated, files)


def retriever(
    store, events: pd.DataFrame, spec: DomainSpec
) -> Callable[[str, pd.DataFrame], pd.DataFrame]:
    """Point-in-time features of another feature service for given holdout rows, in their
    order (to score the previous version when it reads inputs this one does not)."""
    from models.dataset import entity_dataframe, feature_layout, retrieve_training_set

    key = spec.business_id

    def retrieve(feature_service: str, rows: pd.DataFrame) -> pd.DataFrame:
        wanted = events[events[key].isin(rows[key])]
        layout = feature_layout(store, feature_service)
        frame = retrieve_training_set(
            store,
            feature_service,
            entity_dataframe(wanted, spec, request_fields=layout.request_fields),
            spec,
        )
        return rows[[key]].merge(frame, on=key, how="left")

    return retrieve


def regenerate(
    package: Path,
    *,
    training_set: Path | None = None,
    repo: Path | None = None,
    yaml: Path | None = None,
    events: Path | None = None,
    domain: Path | None = None,
) -> Path:
    """Rebuild a package's report from the package and its training set, and republish it.

    The training set is ``training_set`` (``python -m models dataset`` of the package's
    feature service) or, without one, retrieved again through the feature store in ``repo``
    from the events the package was trained on. The holdout is the manifest's. The domain file
    is ``domain``, else the one the package was trained with, else the one in ``repo``.
    """
    import lightgbm as lgb

    from feature_repo.domain import load_domain
    from models.dataset import (
        entity_dataframe,
        feature_layout,
        load_events,
        open_store,
        retrieve_training_set,
    )

    package = Path(package)
    manifest = read_manifest(package)
    recorded = str(manifest.training.get("domain_file", ""))
    domain_path = domain or (Path(recorded) if recorded else repo)
    if domain_path is None:
        raise ValueError("no domain file: pass --domain (the domain's folder) or --repo")
    spec = load_domain(domain_path)
    label = spec.label_column
    events_path = events or Path(str(manifest.training.get("events", "")))
    frame_events = load_events(events_path, spec) if events_path.is_file() else None
    store = open_store(repo, yaml) if repo is not None else None
    if training_set is not None:
        frame = pd.read_parquet(training_set)
    elif store is not None and frame_events is not None:
        layout = feature_layout(store, manifest.feature_service)
        frame = retrieve_training_set(
            store,
            manifest.feature_service,
            entity_dataframe(frame_events, spec, request_fields=layout.request_fields),
            spec,
        )
    else:
        raise ValueError(
            "no training set: pass --training-set (python -m models dataset), or --repo with "
            f"the events the package was trained on ({events_path} is not a file)"
        )
    holdout = with_segment_columns(holdout_rows(frame, manifest), frame_events, spec)
    lacking = [f for f in [*manifest.features, label] if f not in holdout.columns]
    if lacking:
        raise ValueError(
            f"the training set lacks {lacking[:5]}: it was not retrieved through "
            f"{manifest.feature_service}"
        )
    if holdout.empty or holdout[label].nunique() < 2:
        raise ValueError(
            "the training set has no holdout rows of both classes in this package's range"
        )
    name = booster_file(manifest)
    if name is None:
        raise ValueError(f"package {package} has no LightGBM model file to score the holdout")
    data = build(
        manifest,
        holdout,
        lgb.Booster(model_file=str(package / name)),
        spec=spec,
        root=package.parent.parent,
        retrieve=(
            retriever(store, frame_events, spec)
            if store is not None and frame_events is not None
            else None
        ),
    )
    return republish(package, manifest, render(data))
