"""The monitor's report: ``monitor.json`` and a self-contained ``monitor.html``.

``models.monitor`` computes the figures per model version, variant and day, and the alerts;
this module writes them down. Per version and variant the page shows a table of every day (and
the roll-up), the package's holdout figures, and two figures: performance and drift by day.
"""

from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path

from models.monitor import ALL_DAYS, AlertRules, MonitorResult
from models.reports import figures
from models.reports.html import data_island, figure, fmt, json_safe

JSON_FILE = "monitor.json"
HTML_FILE = "monitor.html"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _section(version: str, variant: str, groups: list[dict], rules: AlertRules) -> str:
    """One model version and variant: the table of its days, and its two figures."""
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
        body.append("<tr>" + "".join(f"<td>{fmt(c)}</td>" for c in cells) + "</tr>")
    hold = groups[0]["holdout"]
    reference = ", ".join(
        f"{n} precision {fmt(hold['labels'][n]['precision'])} recall "
        f"{fmt(hold['labels'][n]['recall'])}"
        for n in labels
        if hold.get("labels")
    )
    return (
        f"<h2>{html.escape(version)} [{html.escape(variant)}]</h2>"
        f"<p>Holdout: PR-AUC {fmt(hold.get('pr_auc', math.nan))}; {reference or 'n/a'}</p>"
        "<table><thead><tr>"
        + "".join(f"<th>{html.escape(h)}</th>" for h in head)
        + "</tr></thead><tbody>"
        + "".join(body)
        + "</tbody></table>"
        + figure(f"fig-{slug}-performance", f"Performance by day, {version}",
                 figures.daily_performance(days))
        + figure(f"fig-{slug}-drift", f"Drift by day, {version}",
                 figures.daily_drift(days, rules.max_feature_psi))
    )  # fmt: skip


def render(result: MonitorResult, rules: AlertRules) -> str:
    """The monitor report as one self-contained HTML page."""
    sections = []
    pairs = dict.fromkeys((g["model_version"], g["variant"]) for g in result.groups)
    for version, variant in pairs:
        groups = [
            g for g in result.groups if (g["model_version"], g["variant"]) == (version, variant)
        ]
        sections.append(_section(version, variant, groups, rules))
    alerts = "".join(f"<li>{html.escape(a.message)}</li>" for a in result.alerts)
    notes = "".join(f"<p>{html.escape(n)}</p>" for n in result.notes)
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
{data_island("monitor-data", result.to_json())}
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
