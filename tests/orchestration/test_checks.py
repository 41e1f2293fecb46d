"""The segment and model-time gates on planted figures: each passes and fails where it should.
(Every gate on real figures: tests/orchestration/test_graph.py.)"""

from __future__ import annotations

import numpy as np
import pandas as pd

from orchestration import checks
from orchestration.evaluation import segment_recalls
from orchestration.resources import GateRules

RULES = GateRules(min_window_rows=10, min_window_positives=2, min_segment_positives=5)
WINDOW = {"as_of": "2026-12-01T00:00:00+00:00"}


def planted(candidate_misses_in: str) -> pd.DataFrame:
    """Two segments of 10 frauds and 90 legit payments each; the champion catches 8 of 10 frauds
    in both; the candidate catches 8 in one segment and 3 in ``candidate_misses_in``."""
    frames = []
    for segment in ("grocery", "travel"):
        y = np.array([1] * 10 + [0] * 90)
        champion = np.where(y == 1, 0.9, 0.1)
        champion[8:10] = 0.1  # two frauds missed
        caught = 3 if segment == candidate_misses_in else 8
        candidate = np.where(y == 1, 0.8, 0.05)
        candidate[caught:10] = 0.05
        frames.append(
            pd.DataFrame(
                {"segment": segment, "y": y, "score": candidate, "score_champion": champion}
            )
        )
    return pd.concat(frames, ignore_index=True)


def figures(rows: pd.DataFrame) -> dict:
    return {
        "n_rows": len(rows),
        "n_positives": int(rows.y.sum()),
        "positive_rate": float(rows.y.mean()),
        "champion_pr_auc": 0.8,
        "segments": segment_recalls(rows, 0.5, 0.5, RULES.min_segment_positives),
    }


def test_a_segment_worse_beyond_its_tolerance_fails_the_gate() -> None:
    gate = checks.segment_gate(figures(planted("travel")), RULES, WINDOW)
    assert not gate.passed
    assert "travel 0.300 < 0.800" in gate.message and "grocery" not in gate.message
    assert gate.metrics["largest_recall_drop"] == 0.5
    assert {row["segment"] for row in gate.evidence["segments"]} == {"grocery", "travel"}


def test_equal_segments_pass_and_small_segments_are_not_compared() -> None:
    rows = planted("nowhere")
    assert checks.segment_gate(figures(rows), RULES, WINDOW).passed
    few = GateRules(min_window_rows=10, min_window_positives=2, min_segment_positives=11)
    table = segment_recalls(rows, 0.5, 0.5, few.min_segment_positives)
    assert table == []


def test_model_time_gate_holds_the_budget_and_the_ratio() -> None:
    rules = GateRules(max_predict_us_per_row=100.0, max_predict_time_ratio=3.0)
    fast = {"candidate_predict_us_per_row": 8.0, "champion_predict_us_per_row": 5.0}
    assert checks.predict_time_gate(fast, rules).passed
    slow = {"candidate_predict_us_per_row": 40.0, "champion_predict_us_per_row": 5.0}
    gate = checks.predict_time_gate(slow, rules)
    assert not gate.passed and "40.0 us per row > 15.0 us" in gate.message
    alone = {"candidate_predict_us_per_row": 150.0}  # no champion: the budget alone
    assert not checks.predict_time_gate(alone, rules).passed
