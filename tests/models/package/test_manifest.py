"""The manifest schema: it round-trips through its file, and a wrong manifest is refused with a
sentence that says what is wrong in the package's terms."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from models.package import (
    MANIFEST_FILE,
    SCHEMA_VERSION,
    FeatureBaseline,
    FeatureViewInfo,
    GraphInfo,
    LabelThresholds,
    OnDemandViewInfo,
    UncertainPolicy,
    package_dir,
    read_manifest,
)
from tests.models.package_helpers import FEATURES, STORED, toy_manifest


def test_a_manifest_round_trips_through_its_file(tmp_path: Path) -> None:
    manifest = toy_manifest(
        feature_baselines={
            "amount": FeatureBaseline(
                edges=[5.0, 50.0], proportions=[0.2, 0.5, 0.3], missing_rate=0.1, n_rows=10
            )
        },
        metrics={"holdout": {"pr_auc": 0.61, "n_rows": 1200}},
    )
    (tmp_path / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2))
    read = read_manifest(tmp_path)
    assert read == manifest
    assert read.created_at.utcoffset() is not None  # times stay aware
    assert read.label_thresholds.highly_suspicious == 0.7
    assert json.loads((tmp_path / MANIFEST_FILE).read_text())["schema_version"] == SCHEMA_VERSION


def test_packages_live_in_name_and_version_folders(tmp_path: Path) -> None:
    assert package_dir(tmp_path, "fraud_model", "v7") == tmp_path / "fraud_model" / "v7"


def test_model_inputs_are_stored_then_on_demand_then_request_features() -> None:
    view = OnDemandViewInfo(
        request_fields=["amount"],
        source_views=["card_features"],
        stored_inputs=["card_amount_mean_30d"],
        features=["amount_to_card_mean_30d"],
        function="feature_repo.fraud.transforms:ratios",
        code_sha256="0" * 64,
    )
    manifest = toy_manifest(
        features=[*STORED, "amount_to_card_mean_30d", "amount"],
        on_demand_views={"ratios": view},
    )
    assert manifest.stored_features == STORED
    assert manifest.on_demand_features == ["amount_to_card_mean_30d"]
    with pytest.raises(ValidationError, match="then the on-demand views' features"):
        toy_manifest(features=["amount_to_card_mean_30d", *STORED, "amount"])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"schema_version": 2},
            r"package format 2 is not the format this code reads \(3\); retrain the model",
        ),
        ({"features": list(reversed(FEATURES))}, "features must be the feature views' features"),
        (
            {
                "graphs": {
                    "gpu": GraphInfo(file="model.standard.onnx", sha256="0", kind="standard_ops")
                }
            },
            "a package needs a 'cpu' graph",
        ),
        ({"entity_mapping": {"card": "card_token"}}, r"no request field maps to join key\(s\)"),
        (
            {"labels": ["not_fraud", "review", "block"]},
            "must name the labels above the lowest, lowest risk first",
        ),
        ({"uncertain_label": "suspicious"}, "uncertain label 'suspicious' is also a label"),
        (
            {"uncertain_policy": UncertainPolicy(report_label_at_or_above="not_fraud")},
            "report_label_at_or_above 'not_fraud' must be `never` or one of",
        ),
        (
            {"uncertain_policy": UncertainPolicy(required_entities=["merchant_id"])},
            r"uncertain policy names unmapped join key\(s\) \['merchant_id'\]",
        ),
        ({"graph": {}}, "Extra inputs are not permitted"),  # a typo is not ignored
    ],
)
def test_a_wrong_manifest_is_refused_with_a_reason(changes: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        toy_manifest(**changes)


@pytest.mark.parametrize(
    ("thresholds", "message"),
    [
        (
            {"suspicious": 0.8, "highly_suspicious": 0.7},
            r"the suspicious threshold must not exceed the highly_suspicious threshold",
        ),
        ({"suspicious": "high"}, "threshold of label 'suspicious' must be a number"),
        ({"suspicious": True}, "threshold of label 'suspicious' must be a number"),
        ({"suspicious": 1.5}, r"threshold of label 'suspicious' must be within \[0, 1\]"),
        ({"rule": "no labels"}, "at least one label above the lowest"),
    ],
)
def test_label_thresholds_refuse_what_no_label_could_mean(thresholds: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        LabelThresholds.model_validate(thresholds)


def test_a_score_takes_the_riskiest_label_whose_cutoff_it_reaches() -> None:
    thresholds = LabelThresholds.model_validate({"suspicious": 0.3, "highly_suspicious": 0.7})
    assert list(thresholds.cutoffs) == ["suspicious", "highly_suspicious"]
    ranks = thresholds.ranks(np.array([0.0, 0.2999, 0.3, 0.69, 0.7, 1.0]))
    assert ranks.tolist() == [0, 0, 1, 1, 2, 2]
    # Tied cut-offs: the riskier label wins, the other is never given.
    tied = LabelThresholds.model_validate({"suspicious": 0.5, "highly_suspicious": 0.5})
    assert tied.ranks(np.array([0.49, 0.5])).tolist() == [0, 2]


def test_a_feature_baseline_needs_one_share_per_bin() -> None:
    with pytest.raises(ValidationError, match="one proportion more than it has edges"):
        FeatureBaseline(edges=[1.0], proportions=[1.0], missing_rate=0.0, n_rows=1)
    with pytest.raises(ValidationError, match="strictly ascending"):
        FeatureBaseline(edges=[2.0, 1.0], proportions=[0.3, 0.3, 0.4], missing_rate=0.0, n_rows=1)


def test_a_view_without_ttl_and_optional_evidence_is_kept() -> None:
    view = FeatureViewInfo(join_key="card_id", ttl_seconds=None, features=STORED, evidence=False)
    manifest = toy_manifest(feature_views={"card_stream": view})
    assert manifest.feature_views["card_stream"].ttl_seconds is None
    assert manifest.feature_views["card_stream"].evidence is False
