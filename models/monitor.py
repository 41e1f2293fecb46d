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
  ``scoring_service.drift``, from ``models.package``).

It writes ``monitor.json`` and a self-contained ``monitor.html`` and returns the alerts that
fired (``AlertRules``); the CLI exits 1 when there is one, so a scheduler can page on it.

Why one module of this length: performance, drift and freshness all read the same join of the
log with the labels at ``as_of``; each section of the report is a function of its own.
"""

from __future__ import annotations

import html
import json
import logging
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from matplotlib.figure import Figure
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
from models.report import json_safe, png_base64

logger = logging.getLogger(__name__)

ALL_DAYS = "all"
# Domain folders (feature_repo/<domain>/domain.yaml): the log names each answer's domain.
DOMAINS = Path(feature_repo.__file__).resolve().parent
JSON_FILE = "monitor.json"
HTML_FILE = "monitor.html"
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


def alerting_labels(manifest: Manifest | None, spec: DomainSpec | None = None) -> list[str]:
    """Labels that alert, lowest threshold first: those with a threshold in the package
    (without one, the domain's labels above the lowest)."""
    if manifest is None:
        return spec.labels[1:] if spec is not None else []
    thresholds = manifest.label_thresholds.cutoffs
    return sorted(thresholds, key=lambda name: thresholds[name])


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
        labels_of = alerting_labels(manifest, spec)
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


# --- report ---------------------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _performance_figure(days: list[dict]) -> Figure:
    fig = Figure(figsize=(11, 3.8))
    left, right = fig.subplots(1, 2)
    x = [g["day"] for g in days]
    for name in days[0]["labels"]:
        line = left.plot(x, [g["labels"][name]["precision"] for g in days], marker="o")[0]
        reference = days[0]["holdout"].get("labels", {}).get(name, {}).get("precision")
        if reference is not None and not math.isnan(reference):
            left.axhline(reference, linestyle="--", color=line.get_color(), linewidth=1)
        line.set_label(f"{name} precision (dashed: holdout)")
    left.plot(x, [g["alert"]["recall"] for g in days], marker="s", label="recall, any alert")
    left.set_ylim(-0.02, 1.02)
    left.set_title("Precision and recall on matured labels")
    left.legend(fontsize="small")
    right.plot(x, [g["pr_auc"] for g in days], marker="o", label="PR-AUC")
    reference = days[0]["holdout"].get("pr_auc")
    if reference is not None and not math.isnan(reference):
        right.axhline(reference, linestyle="--", linewidth=1, label="holdout PR-AUC")
    right.bar(x, [g["n_labelled"] / max(g["n_predictions"], 1) for g in days], alpha=0.3,
              label="share of answers with a matured label")  # fmt: skip
    right.set_ylim(0, 1.02)
    right.set_title("PR-AUC and label coverage")
    right.legend(fontsize="small")
    for ax in (left, right):
        ax.tick_params(axis="x", labelrotation=45, labelsize="small")
    fig.tight_layout()
    return fig


def _drift_figure(days: list[dict], limit: float | None) -> Figure:
    names = sorted({n for g in days for n in g["features"]})
    fig = Figure(figsize=(11, 3.2 + 0.22 * len(names)))
    top, bottom = fig.subplots(2, 1, height_ratios=[1, max(1, len(names) / 8)])
    x = [g["day"] for g in days]
    top.plot(x, [g["score_psi"] for g in days], marker="o", label="score PSI")
    if limit is not None:
        top.axhline(limit, color="red", linestyle="--", linewidth=1, label="alert")
    top.set_title("Score PSI against the holdout score distribution")
    top.legend(fontsize="small")
    if names:
        grid = np.array(
            [[g["features"].get(n, {}).get("psi", math.nan) for g in days] for n in names]
        )
        top_psi = max(0.25, float(np.nanmax(grid, initial=0.0)))
        image = bottom.imshow(
            np.nan_to_num(grid, nan=0.0), aspect="auto", cmap="Reds", vmin=0.0, vmax=top_psi
        )
        bottom.set_yticks(range(len(names)), names, fontsize="x-small")
        bottom.set_xticks(range(len(x)), x, rotation=45, fontsize="small")
        bottom.set_title("Input PSI against the training baseline")
        fig.colorbar(image, ax=bottom)
    fig.tight_layout()
    return fig


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4f}"
    return html.escape(str(value))


def _img(fig_id: str, alt: str, fig: Figure) -> str:
    return (
        f'<figure><img id="{fig_id}" alt="{html.escape(alt)}" '
        f'src="data:image/png;base64,{png_base64(fig)}"></figure>'
    )


def render(result: MonitorResult, rules: AlertRules) -> str:
    """The monitor report as one self-contained HTML page."""
    sections = []
    pairs = dict.fromkeys((g["model_version"], g["variant"]) for g in result.groups)
    for version, variant in pairs:
        groups = [
            g for g in result.groups if (g["model_version"], g["variant"]) == (version, variant)
        ]
        days = [g for g in groups if g["day"] != ALL_DAYS]
        slug = _slug(f"{version}-{variant}")
        labels = list(groups[0]["labels"])
        head = ["day", "answers", "matured", "pending", "positive rate", "PR-AUC", "score PSI"]
        head += [f"{name} precision" for name in labels] + [f"{name} recall" for name in labels]
        head += ["alert precision", "alert recall"]
        body = []
        for g in groups:
            cells = [g["day"], g["n_predictions"], g["n_labelled"], g["n_pending"],
                     g["positive_rate"], g["pr_auc"], g["score_psi"]]  # fmt: skip
            cells += [g["labels"][n]["precision"] for n in labels]
            cells += [g["labels"][n]["recall"] for n in labels]
            cells += [g["alert"]["precision"], g["alert"]["recall"]]
            body.append("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in cells) + "</tr>")
        hold = groups[0]["holdout"]
        reference = ", ".join(
            f"{n} precision {_fmt(hold['labels'][n]['precision'])} recall "
            f"{_fmt(hold['labels'][n]['recall'])}"
            for n in labels
            if hold.get("labels")
        )
        sections.append(
            f"<h2>{html.escape(version)} [{html.escape(variant)}]</h2>"
            f"<p>Holdout: PR-AUC {_fmt(hold.get('pr_auc', math.nan))}; {reference or 'n/a'}</p>"
            "<table><thead><tr>"
            + "".join(f"<th>{html.escape(h)}</th>" for h in head)
            + "</tr></thead><tbody>"
            + "".join(body)
            + "</tbody></table>"
            + _img(f"fig-{slug}-performance", f"Performance by day, {version}",
                   _performance_figure(days))
            + _img(f"fig-{slug}-drift", f"Drift by day, {version}",
                   _drift_figure(days, rules.max_feature_psi))
        )  # fmt: skip
    alerts = "".join(f"<li>{html.escape(a.message)}</li>" for a in result.alerts)
    notes = "".join(f"<p>{html.escape(n)}</p>" for n in result.notes)
    payload = json.dumps(json_safe(result.to_json())).replace("</", "<\\/")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Model monitor, labels as of {result.as_of:%Y-%m-%d %H:%M} UTC</title>
<style>
body {{ font-family: sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.8em; }} th, td {{ border: 1px solid #ccc;
padding: 0.2em 0.5em; text-align: right; }} th {{ background: #f3f3f3; }} img {{ max-width: 100%; }}
.alerts {{ color: #a00; }}
</style></head><body>
<h1>Model monitor, labels known at {result.as_of.isoformat()}</h1>
<p>Rules: {html.escape(rules.model_dump_json())}</p>
<h2>Alerts</h2>
{f'<ul class="alerts">{alerts}</ul>' if alerts else "<p>None fired.</p>"}
{notes}
{"".join(sections)}
<script type="application/json" id="monitor-data">{payload}</script>
</body></html>
"""  # fmt: skip


def write(result: MonitorResult, rules: AlertRules, out_dir: Path) -> tuple[Path, Path]:
    """``monitor.json`` and ``monitor.html`` in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out_dir / JSON_FILE, out_dir / HTML_FILE
    # NaN is not JSON: null in the file.
    json_path.write_text(json.dumps(json_safe(result.to_json()), indent=2) + "\n")
    html_path.write_text(render(result, rules))
    return json_path, html_path
