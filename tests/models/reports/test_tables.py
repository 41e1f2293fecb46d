"""Which labels alert, and their figures per threshold and per segment, on planted rows."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from feature_repo.domain import SegmentSpec, load_domain
from models.evaluate import label_counts
from models.package import LabelThresholds
from models.reports import alerting_labels
from models.reports.tables import segment, segment_table, threshold_table
from tests.conftest import ROOT
from tests.models.package_helpers import toy_manifest

FRAUD = ROOT / "feature_repo" / "fraud"


def test_alerting_labels_are_the_labels_above_the_lowest_with_their_cutoffs() -> None:
    manifest = toy_manifest()
    labels = alerting_labels(manifest)
    assert labels == [("suspicious", 0.3), ("highly_suspicious", 0.7)]
    assert [name for name, _ in labels] == manifest.labels[1:]
    # A score at a label's cut-off gets that label: the service's ranks agree.
    ranks = manifest.label_thresholds.ranks(np.array([cutoff for _, cutoff in labels]))
    assert ranks.tolist() == [1, 2]


def test_tied_cutoffs_keep_the_order_of_risk() -> None:
    tied = LabelThresholds.model_validate({"suspicious": 0.5, "highly_suspicious": 0.5})
    manifest = toy_manifest(label_thresholds=tied)
    assert alerting_labels(manifest) == [("suspicious", 0.5), ("highly_suspicious", 0.5)]


def test_without_a_package_the_domain_says_which_labels_alert() -> None:
    spec = load_domain(FRAUD)
    labels = alerting_labels(None, spec)
    assert [name for name, _ in labels] == ["suspicious", "highly_suspicious"]
    assert all(math.isnan(cutoff) for _, cutoff in labels)
    assert alerting_labels(None) == []


def test_threshold_table_bands_match_the_manifest_definitions() -> None:
    rng = np.random.default_rng(3)
    scores = rng.random(5_000)
    y = (rng.random(5_000) < scores**3).astype(np.int32)
    manifest = toy_manifest()
    rows = {row["label"]: row for row in threshold_table(manifest, y, scores)}
    # The band of a label is the rows that get exactly it: the manifest's holdout figures.
    expected = label_counts(scores, y, manifest.label_thresholds.cutoffs)
    for name in ("suspicious", "highly_suspicious"):
        assert rows[name]["alert_rate"] == pytest.approx(expected[f"{name}_share"])
        assert rows[name]["precision"] == pytest.approx(expected[f"{name}_precision"])
        assert rows[name]["recall"] == pytest.approx(expected[f"{name}_recall"])
    above = scores >= 0.3
    assert rows["suspicious"]["alert_rate_at_or_above"] == pytest.approx(above.mean())
    assert rows["suspicious"]["recall_at_or_above"] == pytest.approx(y[above].sum() / y.sum())
    assert rows["highly_suspicious"]["alert_rate_at_or_above"] == pytest.approx(
        rows["highly_suspicious"]["alert_rate"]
    )


def test_an_empty_band_has_no_precision() -> None:
    scores = np.array([0.1, 0.2, 0.9])
    rows = threshold_table(toy_manifest(), np.array([0, 0, 1]), scores)
    assert math.isnan(rows[0]["precision"]) and rows[0]["alert_rate"] == 0.0
    assert rows[1]["precision"] == 1.0 and rows[1]["recall"] == 1.0


def test_segments_by_bins_by_value_and_by_difference() -> None:
    frame = pd.DataFrame(
        {
            "amount": [1.0, 7.0, 60.0, 2000.0],
            "card_country": ["US", "US", "FR", "DE"],
            "ip_country": ["US", "GB", "FR", "US"],
        }
    )
    bands = segment(SegmentSpec(name="amount band", field="amount", bins=[0, 5, 50, math.inf]))
    assert bands.groups(frame).astype(str).tolist() == ["0-5", "5-50", ">= 50", ">= 50"]
    mismatch = segment(
        SegmentSpec(name="country mismatch", field="card_country", differs_from="ip_country")
    )
    assert mismatch.columns == ("card_country", "ip_country")
    assert mismatch.groups(frame).tolist() == [
        "same card_country and ip_country",
        "card_country differs from ip_country",
        "same card_country and ip_country",
        "card_country differs from ip_country",
    ]
    by_value = segment(SegmentSpec(name="issuer", field="card_country"))
    assert by_value.groups(frame).tolist() == ["US", "US", "FR", "DE"]


def test_segment_table_measures_each_group_and_names_what_it_cannot() -> None:
    frame = pd.DataFrame({"amount": [1.0, 2.0, 3.0, 100.0, 200.0, 300.0]})
    y = np.array([0, 1, 0, 1, 1, 0])
    scores = np.array([0.1, 0.9, 0.4, 0.8, 0.2, 0.7])
    parts = [
        segment(SegmentSpec(name="amount band", field="amount", bins=[0, 50, 1e9, math.inf])),
        segment(SegmentSpec(name="fraud pattern", field="fraud_pattern")),
    ]
    rows, unavailable = segment_table(parts, frame, y, scores, alert_at=0.5)
    assert unavailable == ["fraud pattern (no column fraud_pattern)"]
    # Bands in their own order; the empty top band is left out.
    assert [(r["group"], r["n_rows"]) for r in rows] == [("0-50", 3), ("50-1e+09", 3)]
    low, high = rows
    assert low["positive_rate"] == pytest.approx(1 / 3)
    assert low["alert_rate"] == pytest.approx(1 / 3)  # 0.9 only
    assert low["precision"] == 1.0 and low["recall"] == 1.0
    assert high["precision"] == 0.5 and high["recall"] == 0.5  # 0.8 (fraud), 0.7 (not)
    assert not math.isnan(low["roc_auc"]) and 0.0 <= high["pr_auc"] <= 1.0
