"""The gates a candidate package must pass, as Dagster asset checks with their evidence.

Package gates run on ``candidate_package`` (its own records: ONNX parity, features equal to the
live FeatureService, the seal and, when ``MODEL_SIGNING_KEY`` is set, the signature); quality
gates run on ``candidate_evaluation`` (the most recent window of matured labels: PR-AUC against
the champion's, recall at the champion's alert rate, calibration error). Every gate is blocking:
a failed one stops the run there, so nothing downstream of a stopped candidate ever runs. Each
result is appended to the decision log with its figures and evidence, and the same evidence is
the check's metadata in the UI.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, MetadataValue

from feature_repo.layout import FeatureLayout
from models.package import SIGNING_KEY_ENV, Manifest, PackageIntegrityError, verify_package
from orchestration.decisions import Decision, DecisionLog, RunInfo, json_safe
from orchestration.resources import GateRules

ONNX_PARITY = "onnx_parity"
FEATURES_MATCH_LIVE = "features_match_live"
PACKAGE_SEALED = "package_sealed"
PR_AUC = "pr_auc_vs_champion"
RECALL_AT_ALERT_RATE = "recall_at_champion_alert_rate"
CALIBRATION = "calibration_error"
SEGMENTS = "no_segment_worse"
PREDICT_TIME = "predict_time_per_row"

DESCRIPTIONS = {
    ONNX_PARITY: "The package's own parity record: ONNX graphs vs LightGBM within its tolerance.",
    FEATURES_MATCH_LIVE: "The package's views, join keys and features equal the live "
    "FeatureService's, in order.",
    PACKAGE_SEALED: "The package's files match its seal (and its signature when "
    "MODEL_SIGNING_KEY is set).",
    PR_AUC: "On the most recent window of matured labels, candidate PR-AUC >= champion PR-AUC "
    "minus the declared tolerance.",
    RECALL_AT_ALERT_RATE: "Candidate recall at the champion's alert rate not lower than the "
    "champion's (less the declared tolerance).",
    CALIBRATION: "Expected calibration error of the candidate on the window within the bound.",
    SEGMENTS: "In every segment with enough positives, candidate recall at the champion's "
    "alert count not below the champion's by more than the segment tolerance.",
    PREDICT_TIME: "Candidate model time per row (CPU graph, micro-batches) within the budget "
    "and within a ratio of the champion's.",
}
PACKAGE_GATES = (ONNX_PARITY, FEATURES_MATCH_LIVE, PACKAGE_SEALED)
EVALUATION_GATES = (PR_AUC, RECALL_AT_ALERT_RATE, CALIBRATION, SEGMENTS, PREDICT_TIME)


@dataclass
class Gate:
    """One gate's outcome."""

    name: str
    passed: bool
    message: str
    metrics: dict[str, Any] = field(default_factory=dict)
    evidence: dict[str, Any] = field(default_factory=dict)


def specs(asset: str, names: Sequence[str]) -> list[AssetCheckSpec]:
    """Blocking check specs of these gates on ``asset``."""
    return [
        AssetCheckSpec(name, asset=asset, blocking=True, description=DESCRIPTIONS[name])
        for name in names
    ]


# --- package gates --------------------------------------------------------------------------


def parity_gate(manifest: Manifest) -> Gate:
    """The package's recorded parity of each graph against LightGBM, within its tolerance."""
    record = manifest.training
    tolerance = _number(record.get("parity_tolerance"))
    diffs = {"cpu": _number(record.get("parity_cpu")), "gpu": _number(record.get("parity_gpu"))}
    known = not math.isnan(tolerance) and not any(math.isnan(v) for v in diffs.values())
    passed = known and all(v <= tolerance for v in diffs.values())
    message = (
        f"max |ONNX - LightGBM| cpu {diffs['cpu']:.2e}, gpu graph {diffs['gpu']:.2e} "
        f"(tolerance {tolerance:.0e})"
        if known
        else "the package records no parity check"
    )
    return Gate(
        ONNX_PARITY,
        passed,
        message,
        metrics={"parity_cpu": diffs["cpu"], "parity_gpu": diffs["gpu"]},
        evidence={"parity_tolerance": tolerance, "recorded_in": "manifest.json training"},
    )


def features_gate(manifest: Manifest, live: FeatureLayout) -> Gate:
    """The package's feature layout is the live FeatureService's."""
    problems = []
    packaged = {v: (i.join_key, i.features) for v, i in manifest.feature_views.items()}
    current = {v: (s.join_key, s.features) for v, s in live.views.items()}
    for view in sorted(set(packaged) | set(current)):
        if view not in current:
            problems.append(f"view {view} is not in the live service")
        elif view not in packaged:
            problems.append(f"the live service adds view {view}")
        elif packaged[view] != current[view]:
            problems.append(f"{view}: package {packaged[view]}, live {current[view]}")
    if list(packaged) != list(current) and not problems:
        problems.append(f"views in another order: package {list(packaged)}, live {list(current)}")
    if manifest.on_demand_features != live.on_demand_features:
        problems.append(
            f"on-demand features: package {manifest.on_demand_features}, "
            f"live {live.on_demand_features}"
        )
    passed = not problems
    return Gate(
        FEATURES_MATCH_LIVE,
        passed,
        f"features equal the live FeatureService {manifest.feature_service}"
        if passed
        else "; ".join(problems),
        metrics={"n_features": len(manifest.features)},
        evidence={
            "feature_service": manifest.feature_service,
            "package_views": list(packaged),
            "live_views": list(current),
            "problems": problems,
        },
    )


def seal_gate(path: Path) -> Gate:
    """The package verifies against its seal, and its signature when a key is set."""
    signing = bool(os.environ.get(SIGNING_KEY_ENV))
    try:
        digest = verify_package(path)
    except (PackageIntegrityError, OSError, ValueError) as exc:
        return Gate(
            PACKAGE_SEALED,
            False,
            str(exc),
            evidence={"package": str(path), "signature_required": signing},
        )
    return Gate(
        PACKAGE_SEALED,
        True,
        "sealed and signed" if signing else "sealed (no MODEL_SIGNING_KEY: not signed)",
        evidence={"package": str(path), "digest": digest, "signature_required": signing},
    )


# --- quality gates on the window of matured labels -----------------------------------------


def _window_problem(figures: dict[str, Any], rules: GateRules) -> str | None:
    if figures["n_rows"] < rules.min_window_rows:
        return f"the window holds {figures['n_rows']} matured rows (< {rules.min_window_rows})"
    if figures["n_positives"] < rules.min_window_positives:
        return (
            f"the window holds {figures['n_positives']} matured positives "
            f"(< {rules.min_window_positives})"
        )
    return None


def _window_evidence(figures: dict[str, Any], window: dict[str, Any]) -> dict[str, Any]:
    keys = ("n_rows", "n_positives", "positive_rate")
    return {**window, **{k: figures[k] for k in keys}}


def pr_auc_gate(figures: dict[str, Any], rules: GateRules, window: dict[str, Any]) -> Gate:
    """Candidate PR-AUC not below the champion's minus the tolerance."""
    evidence = {**_window_evidence(figures, window), "tolerance": rules.pr_auc_tolerance}
    candidate = figures["candidate_pr_auc"]
    metrics = {"candidate_pr_auc": candidate}
    problem = _window_problem(figures, rules)
    if problem:
        return Gate(PR_AUC, False, problem, metrics, evidence)
    if "champion_pr_auc" not in figures:
        return Gate(PR_AUC, True, "no champion yet: nothing to compare with", metrics, evidence)
    champion = figures["champion_pr_auc"]
    metrics["champion_pr_auc"] = champion
    floor = champion - rules.pr_auc_tolerance
    passed = not math.isnan(candidate) and candidate >= floor
    return Gate(
        PR_AUC,
        passed,
        f"candidate PR-AUC {candidate:.4f} {'>=' if passed else '<'} champion {champion:.4f} "
        f"- tolerance {rules.pr_auc_tolerance:g} = {floor:.4f}",
        metrics,
        evidence,
    )


def recall_gate(figures: dict[str, Any], rules: GateRules, window: dict[str, Any]) -> Gate:
    """Candidate recall at the champion's alert rate not lower than the champion's."""
    evidence = {**_window_evidence(figures, window), "max_recall_drop": rules.max_recall_drop}
    problem = _window_problem(figures, rules)
    if problem:
        return Gate(RECALL_AT_ALERT_RATE, False, problem, {}, evidence)
    if "champion_recall_at_alert_rate" not in figures:
        return Gate(RECALL_AT_ALERT_RATE, True, "no champion yet: nothing to compare with")
    champion, candidate = (
        figures["champion_recall_at_alert_rate"],
        figures["candidate_recall_at_alert_rate"],
    )
    evidence.update(
        {
            k: figures[k]
            for k in (
                "champion_alert_label",
                "champion_alert_threshold",
                "champion_alerts",
                "champion_alert_rate",
            )
        }
    )
    floor = champion - rules.max_recall_drop
    passed = not math.isnan(candidate) and candidate >= floor
    return Gate(
        RECALL_AT_ALERT_RATE,
        passed,
        f"at the champion's alert rate {figures['champion_alert_rate']:.4f} "
        f"({figures['champion_alerts']} alerts) candidate recall {candidate:.4f} "
        f"{'>=' if passed else '<'} champion {champion:.4f} - {rules.max_recall_drop:g}",
        {"candidate_recall": candidate, "champion_recall": champion},
        evidence,
    )


def calibration_gate(figures: dict[str, Any], rules: GateRules, window: dict[str, Any]) -> Gate:
    """Expected calibration error of the candidate within the bound."""
    evidence = {
        **_window_evidence(figures, window),
        "max_calibration_error": rules.max_calibration_error,
        "bins": figures["calibration_bins"],
    }
    error = figures["candidate_calibration_error"]
    metrics = {"candidate_calibration_error": error}
    if "champion_calibration_error" in figures:
        metrics["champion_calibration_error"] = figures["champion_calibration_error"]
    problem = _window_problem(figures, rules)
    if problem:
        return Gate(CALIBRATION, False, problem, metrics, evidence)
    passed = not math.isnan(error) and error <= rules.max_calibration_error
    return Gate(
        CALIBRATION,
        passed,
        f"expected calibration error {error:.4f} {'<=' if passed else '>'} "
        f"{rules.max_calibration_error:g}",
        metrics,
        evidence,
    )


def segment_gate(figures: dict[str, Any], rules: GateRules, window: dict[str, Any]) -> Gate:
    """No segment (``segment_field``) whose recall falls beyond its tolerance."""
    table = figures.get("segments")
    evidence = {
        **_window_evidence(figures, window),
        "segment_field": rules.segment_field,
        "min_segment_positives": rules.min_segment_positives,
        "max_segment_recall_drop": rules.max_segment_recall_drop,
        "segments": table or [],
    }
    problem = _window_problem(figures, rules)
    if problem:
        return Gate(SEGMENTS, False, problem, {}, evidence)
    if table is None:
        why = (
            "no champion yet: nothing to compare with"
            if "champion_pr_auc" not in figures
            else f"the events have no {rules.segment_field!r} column or the champion alerts on "
            "nothing: no segment to compare"
        )
        return Gate(SEGMENTS, True, why, {}, evidence)
    worse = [
        row
        for row in table
        if row["candidate_recall"] < row["champion_recall"] - rules.max_segment_recall_drop
    ]
    drops = [row["champion_recall"] - row["candidate_recall"] for row in table]
    metrics = {"segments_compared": len(table), "largest_recall_drop": max(drops, default=0.0)}
    if worse:
        named = ", ".join(
            f"{r['segment']} {r['candidate_recall']:.3f} < {r['champion_recall']:.3f}"
            for r in worse
        )
        return Gate(
            SEGMENTS,
            False,
            f"recall worse beyond {rules.max_segment_recall_drop:g} in {len(worse)} of "
            f"{len(table)} segments of {rules.segment_field}: {named}",
            metrics,
            evidence,
        )
    return Gate(
        SEGMENTS,
        True,
        f"no segment of {rules.segment_field} worse beyond {rules.max_segment_recall_drop:g} "
        f"({len(table)} with >= {rules.min_segment_positives} positives compared)",
        metrics,
        evidence,
    )


def predict_time_gate(figures: dict[str, Any], rules: GateRules) -> Gate:
    """Model time per row within the budget and within a ratio of the champion's."""
    candidate = figures["candidate_predict_us_per_row"]
    champion = figures.get("champion_predict_us_per_row")
    metrics = {"candidate_us_per_row": candidate, "champion_us_per_row": champion}
    evidence = {
        "max_predict_us_per_row": rules.max_predict_us_per_row,
        "max_predict_time_ratio": rules.max_predict_time_ratio,
        "measured": "up to 2,048 window rows in batches of 32, each batch the fastest of 5 "
        "runs, run next to the champion's same batch",
    }
    allowed = rules.max_predict_us_per_row
    if champion is not None and not math.isnan(champion):
        allowed = min(allowed, max(rules.max_predict_time_ratio * champion, 1.0))
    passed = not math.isnan(candidate) and candidate <= allowed
    return Gate(
        PREDICT_TIME,
        passed,
        f"candidate {candidate:.1f} us per row {'<=' if passed else '>'} {allowed:.1f} us "
        f"(budget {rules.max_predict_us_per_row:g} us; {rules.max_predict_time_ratio:g}x the "
        f"champion's {champion if champion is None else round(champion, 1)} us)",
        metrics,
        evidence,
    )


# --- recording ------------------------------------------------------------------------------


def record(
    log: DecisionLog,
    run: RunInfo,
    gates: Sequence[Gate],
    *,
    stage: str,
    candidate: str,
    champion: str | None,
    last_stage: bool,
) -> list[Decision]:
    """Append each gate, then a verdict when a gate failed or this is the last stage."""
    written = [
        log.record(
            run,
            "gate",
            gate.name,
            passed=gate.passed,
            candidate=candidate,
            champion=champion,
            message=gate.message,
            metrics=gate.metrics,
            evidence={"stage": stage, **gate.evidence},
        )
        for gate in gates
    ]
    failed = [gate.name for gate in gates if not gate.passed]
    if failed:
        written.append(
            log.record(
                run,
                "verdict",
                "candidate",
                passed=False,
                candidate=candidate,
                champion=champion,
                message=f"stopped at {stage}: {', '.join(failed)}; the champion keeps answering",
                evidence={"stage": stage, "failed_gates": failed},
            )
        )
    elif last_stage:
        written.append(
            log.record(
                run,
                "verdict",
                "candidate",
                passed=True,
                candidate=candidate,
                champion=champion,
                message="passed every gate: ready for shadow and canary rollout",
                evidence={"stage": stage},
            )
        )
    return written


def check_results(gates: Sequence[Gate], asset: str) -> list[AssetCheckResult]:
    """The gates as Dagster check results, evidence as metadata."""
    return [
        AssetCheckResult(
            asset_key=asset,
            check_name=gate.name,
            passed=gate.passed,
            severity=AssetCheckSeverity.ERROR,
            description=gate.message,
            metadata={
                "message": gate.message,
                "metrics": MetadataValue.json(json_safe(gate.metrics)),
                "evidence": MetadataValue.json(json_safe(gate.evidence)),
                # Numbers on their own too: the UI plots them across runs.
                **{
                    name: float(value)
                    for name, value in gate.metrics.items()
                    if isinstance(value, int | float) and math.isfinite(value)
                },
            },
        )
        for gate in gates
    ]


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else math.nan
