"""The monitor's files: what ``models.monitor`` found, written as JSON and as one HTML page."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path

from models.monitor import ALL_DAYS, Alert, AlertRules, MonitorResult
from models.reports.monitoring import HTML_FILE, JSON_FILE, render, write

AS_OF = datetime(2026, 3, 10, 6, 0, tzinfo=UTC)


def _group(variant: str, day: str, precision: float, score_psi: float) -> dict:
    labels = {
        "suspicious": {"n": 40, "n_labelled": 30, "precision": precision, "recall": 0.25},
        "highly_suspicious": {"n": 5, "n_labelled": 0, "precision": math.nan, "recall": 0.0},
    }
    return {
        "model_version": "fraud_model/v1",
        "variant": variant,
        "day": day,
        "n_predictions": 400,
        "label_rates": {"not_fraud": 0.9, "suspicious": 0.1},
        "n_labelled": 300,
        "n_pending": 100,
        "positive_rate": 0.02,
        "labels": labels,
        "alert": {"n_labelled": 30, "precision": precision, "recall": 0.25},
        "pr_auc": 0.41,
        "holdout": {
            "positive_rate": 0.02,
            "pr_auc": 0.55,
            "labels": {
                "suspicious": {"precision": 0.6, "recall": 0.3, "rate": 0.05},
                "highly_suspicious": {"precision": 0.9, "recall": 0.1, "rate": 0.01},
            },
        },
        "score_psi": score_psi,
        "features": {
            "amount": {"psi": 0.31, "missing_rate": 0.0, "baseline_missing_rate": 0.0},
            "card_txn_count_24h": {
                "psi": math.nan,
                "missing_rate": 0.1,
                "baseline_missing_rate": math.nan,
            },
        },
    }


def _result() -> MonitorResult:
    groups = [
        _group(variant, day, precision, psi)
        for variant in ("champion", "shadow")
        for day, precision, psi in (("2026-03-08", 0.5, 0.05), ("2026-03-09", 0.2, 0.3))
    ]
    groups += [_group(v, ALL_DAYS, 0.35, 0.1) for v in ("champion", "shadow")]
    alert = Alert("precision_drop", "fraud_model/v1", "champion", "2026-03-09", "suspicious",
                  0.4, 0.2)  # fmt: skip
    return MonitorResult(
        as_of=AS_OF,
        groups=groups,
        alerts=[alert],
        notes=["no package for fraud_model/v0: no holdout figures or baselines"],
    )


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.ids.append(dict(attrs)["id"] or "")


def test_the_page_lists_alerts_notes_and_each_variant_with_its_figures() -> None:
    page = render(_result(), AlertRules())
    assert "<title>Model monitor, labels as of 2026-03-10 06:00 UTC</title>" in page
    assert (
        '<ul class="alerts"><li>fraud_model/v1 [champion] 2026-03-09: precision_drop of '
        "suspicious is 0.4000 (limit 0.2000)</li></ul>"
    ) in page
    assert "<p>no package for fraud_model/v0: no holdout figures or baselines</p>" in page
    assert page.count("<h2>fraud_model/v1 [champion]</h2>") == 1
    assert "<h2>fraud_model/v1 [shadow]</h2>" in page
    assert "<p>Holdout: PR-AUC 0.5500; suspicious precision 0.6000 recall 0.3000, " in page
    # One row per day and the roll-up; a precision without matured labels reads n/a.
    assert page.count("<tr><td>2026-03-08</td>") == 2 and page.count("<tr><td>all</td>") == 2
    assert "<td>n/a</td>" in page
    images = _Images()
    images.feed(page)
    assert images.ids == [
        "fig-fraud-model-v1-champion-performance",
        "fig-fraud-model-v1-champion-drift",
        "fig-fraud-model-v1-shadow-performance",
        "fig-fraud-model-v1-shadow-drift",
    ]


def test_a_quiet_run_says_no_alert_fired() -> None:
    result = _result()
    result.alerts.clear()
    assert "<h2>Alerts</h2>\n<p>None fired.</p>" in render(result, AlertRules())


def test_the_files_hold_the_same_document_with_nan_as_null(tmp_path: Path) -> None:
    result = _result()
    json_path, html_path = write(result, AlertRules(max_feature_psi=None), tmp_path / "out")
    assert (json_path, html_path) == (tmp_path / "out" / JSON_FILE, tmp_path / "out" / HTML_FILE)
    text = json_path.read_text()
    assert "NaN" not in text
    document = json.loads(text)
    assert document["as_of"] == "2026-03-10T06:00:00+00:00"
    assert document["alerts"][0]["message"] == result.alerts[0].message
    first = document["groups"][0]
    assert first["labels"]["highly_suspicious"]["precision"] is None
    assert first["features"]["card_txn_count_24h"]["psi"] is None
    page = html_path.read_text()
    start = page.index('id="monitor-data">') + len('id="monitor-data">')
    assert json.loads(page[start : page.index("</script>", start)]) == document
    assert "&quot;max_feature_psi&quot;:null" in page  # the rules the run used
