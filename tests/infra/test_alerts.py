"""Prometheus rules and the Grafana dashboard: valid for promtool, fired by what the service
exports, and naming only metrics a running service exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from feature_pipelines.fraud.schema import api_body
from feature_repo.layout import ViewSpec
from feature_repo.online import StoreLayout, assemble
from models.package import feature_baseline, score_bins
from scoring_service.api.app import create_app
from scoring_service.monitoring.drift import DriftMonitor, ViewWatch
from tests.scoring_service.conftest import API_HEADERS, settings_for

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "infra" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "infra" / "prometheus" / "alerts.test.yml"
DASHBOARD = ROOT / "infra" / "grafana" / "scoring-dashboard.json"
METRIC = re.compile(r"\bscoring_[a-z0-9_]+\b")
SUFFIXES = ("_bucket", "_count", "_sum", "_created")


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run promtool; fail (not skip) when it is not installed."""
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail(
            "promtool is not installed: `apt-get install prometheus` (Debian) puts it on PATH"
        )
    result = subprocess.run(
        [binary, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


def rule_exprs() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def test_rules_pass_promtool_check() -> None:
    out = promtool("check", "rules", str(RULES))
    assert "SUCCESS" in out.stdout


def test_rules_pass_their_promtool_unit_tests() -> None:
    promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    assert dashboard["templating"]["list"][0]["name"] == "datasource"
    # promtool checks expressions inside rule files: one recording rule per dashboard query,
    # with Grafana's $__rate_interval as a plain range.
    rules = [
        {"record": f"dashboard:query_{i}", "expr": expr.replace("$__rate_interval", "5m")}
        for i, expr in enumerate(dashboard_exprs())
    ]
    assert rules, "the dashboard has no queries"
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    promtool("check", "rules", str(path))


def used_metrics() -> set[str]:
    return {name for expr in [*rule_exprs(), *dashboard_exprs()] for name in METRIC.findall(expr)}


def exported_families(exposition: str) -> dict[str, str]:
    """Metric name -> type, from the # TYPE lines of an exposition."""
    out = {}
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            out[name] = kind
    return out


def covered(name: str, families: dict[str, str]) -> bool:
    if name in families:
        return True
    for suffix in SUFFIXES:
        base = name.removesuffix(suffix)
        if base != name and families.get(base) in ("histogram", "summary"):
            return True
    return False


def test_every_metric_of_the_rules_and_dashboard_is_exported(
    sqlite_repo: Path, model_root: Path, transactions: pd.DataFrame
) -> None:
    used = used_metrics()
    assert {"scoring_store_circuit_open", "scoring_shadow_label_agreement"} <= used
    body = api_body(next(transactions.iloc[[-1]].itertuples()))
    with TestClient(create_app(settings_for(sqlite_repo, model_root)), headers=API_HEADERS) as c:
        assert c.post("/v1/transactions/score", json=body).status_code == 200
        response = c.get("/metrics")
    assert response.status_code == 200
    families = exported_families(response.text)
    help_lines = {
        line.split(" ")[2] for line in response.text.splitlines() if line[:7] == "# HELP "
    }
    missing = sorted(name for name in used if not covered(name, families))
    assert not missing, f"named in the rules or dashboard, not exported: {missing}"
    for name in used:
        base = next((name.removesuffix(s) for s in SUFFIXES if name.endswith(s)), name)
        assert name in help_lines or base in help_lines, f"{name} has no HELP line"


def planted_exposition() -> str:
    """What a service exports after serving traffic with planted drift and staleness: amounts
    tripled; one view refreshed five minutes ago, one stalled twelve hours ago, one never
    materialized. Returns the drift gauges of that traffic only."""
    rng = np.random.default_rng(8)
    n = 2000
    training = {"amount": rng.lognormal(3.5, 1.0, 20_000), "count": rng.poisson(2.0, 20_000)}
    baselines = {name: feature_baseline(values) for name, values in training.items()}
    scores = rng.beta(0.5, 20.0, 20_000)
    reference = score_bins(scores)
    views = {
        "alerts_fresh_view": ViewSpec("k_fresh", 86_400, ["x"]),
        "alerts_stalled_view": ViewSpec("k_stalled", 30 * 86_400, ["y"]),
        "alerts_empty_view": ViewSpec("k_empty", 86_400, ["z"]),
    }
    monitor = DriftMonitor(
        "alerts/v1",
        ["amount", "count"],
        baselines,
        reference,
        [ViewWatch(name, spec.join_key, spec.ttl_seconds) for name, spec in views.items()],
        window_rows=n,
        every_rows=10**9,
        every_s=1e9,
        background=False,
    )
    now = 1_000_000.0  # a fixed clock: ages are exact
    stamps = {
        "alerts_fresh_view": now - 300.0,
        "alerts_stalled_view": now - 12 * 3600.0,
        "alerts_empty_view": float("nan"),
    }
    layout = StoreLayout.from_views(views)
    reads = {name: (list(range(n)), [(stamps[name], [1.0])] * n) for name in views}
    batch = assemble(layout, n, reads, now)
    matrix = np.column_stack(
        [rng.lognormal(3.5, 1.0, n) * 3.0, rng.poisson(2.0, n)]  # amounts tripled
    ).astype(np.float32)
    monitor.observe(matrix, rng.beta(0.5, 20.0, n), batch)
    monitor.refresh()
    return generate_latest().decode()


def test_planted_drift_and_staleness_fire_their_rules(tmp_path: Path) -> None:
    series = []
    for family in text_string_to_metric_families(planted_exposition()):
        for sample in family.samples:
            labels = sample.labels
            ours = labels.get("model_version") == "alerts/v1" or labels.get("view", "").startswith(
                "alerts_"
            )
            # NaN (the ages of a view with no rows) compares false in any rule, as an absent
            # series does; promtool's series notation has no NaN.
            if not ours or sample.value != sample.value:
                continue
            value = repr(float(sample.value))
            text = ", ".join(f'{k}="{v}"' for k, v in sorted({**labels, "instance": "a"}.items()))
            series.append({"series": f"{sample.name}{{{text}}}", "values": f"{value}x40"})
    psi = next(
        float(s["values"].split("x")[0])
        for s in series
        if s["series"].startswith("scoring_feature_psi") and 'feature="amount"' in s["series"]
    )
    assert psi > 0.2

    def alert(name: str, labels: dict, summary: str, description: str) -> dict:
        return {
            "eval_time": "35m",
            "alertname": name,
            "exp_alerts": [
                {
                    "exp_labels": labels,
                    "exp_annotations": {"summary": summary, "description": description},
                }
            ],
        }

    def quiet(name: str) -> dict:
        return {"eval_time": "35m", "alertname": name, "exp_alerts": []}

    tests = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [
                    alert(
                        "FeatureViewStale",
                        {"severity": "page", "view": "alerts_stalled_view"},
                        "Feature view alerts_stalled_view is not being refreshed",
                        "The freshest row of alerts_stalled_view served recently is 12h 0m 0s old.",
                    ),
                    alert(
                        "FeatureViewUnavailable",
                        {"severity": "page", "view": "alerts_empty_view"},
                        "Most reads of feature view alerts_empty_view find nothing usable",
                        "100% of recent reads of alerts_empty_view found no row or a stale one; "
                        "answers turn uncertain.",
                    ),
                    alert(
                        "FeatureDistributionDrift",
                        {"severity": "warn", "model_version": "alerts/v1", "feature": "amount"},
                        "Input amount of alerts/v1 drifted from training",
                        f"PSI {psi:.2f} (> 0.2) against the training baseline in the package.",
                    ),
                    quiet("ScoreDistributionDrift"),
                    quiet("StreamingFeatureViewStale"),
                ],
            }
        ],
    }
    path = tmp_path / "planted.test.yml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    promtool("test", "rules", str(path), cwd=tmp_path)
