"""The published model package: contents, checksums, parity and quality."""

from __future__ import annotations

import json

import lightgbm as lgb
import numpy as np
import onnxruntime as ort

from feature_pipelines.fraud.schema import CARD_FEATURES, IP_FEATURES, MERCHANT_FEATURES
from models.package import SCHEMA_VERSION, checksums, read_manifest, sha256_file


def test_manifest_contract(model_root) -> None:
    path = model_root / "fraud_model" / "v1"
    manifest = read_manifest(path)
    assert manifest.feature_service == "fraud_model_v1"
    assert manifest.features == IP_FEATURES + CARD_FEATURES + MERCHANT_FEATURES + ["amount"]
    assert manifest.entity_mapping == {
        "ip_address": "ip_address",
        "card_id": "card_id",
        "merchant_id": "merchant_id",
    }
    assert manifest.feature_views["ip_features"].ttl_seconds == 14 * 86400
    assert set(manifest.graphs) == {"cpu", "gpu"}
    assert manifest.graphs["gpu"].kind == "standard_ops"
    for file_name, digest in checksums(manifest).items():
        assert sha256_file(path / file_name) == digest
    for lib in ("lightgbm", "onnxruntime", "onnx", "feast", "python"):
        assert manifest.library_versions[lib]
    holdout = manifest.metrics["holdout"]
    for key in (
        "roc_auc",
        "pr_auc",
        "rules_baseline_pr_auc",
        "decision_tree_roc_auc",
        "decision_tree_pr_auc",
        "n_rows",
        "positive_rate",
    ):
        assert key in holdout
    t = manifest.label_thresholds
    assert 0.0 < t.suspicious <= t.highly_suspicious < 1.0
    assert "precision" in t.rule
    assert json.loads((path / "manifest.json").read_text())["schema_version"] == SCHEMA_VERSION == 3


def test_model_beats_rules_baseline(model_root) -> None:
    holdout = read_manifest(model_root / "fraud_model" / "v1").metrics["holdout"]
    assert holdout["pr_auc"] > holdout["rules_baseline_pr_auc"]
    # The generated world is noisy (friendly fraud, unreported fraud, legit traffic that looks
    # like fraud) and the fixture's holdout small: far from chance, not near perfect.
    assert holdout["pr_auc"] > 5 * holdout["positive_rate"]
    assert holdout["roc_auc"] > 0.7


def test_both_graphs_match_lightgbm(model_root, transactions) -> None:
    path = model_root / "fraud_model" / "v1"
    manifest = read_manifest(path)
    booster = lgb.Booster(model_file=str(path / "model.lgb.txt"))
    rng = np.random.default_rng(0)
    rows = rng.gamma(1.5, 20.0, size=(3000, len(manifest.features))).astype(np.float32)
    rows[:, :-1] = np.round(rows[:, :-1])
    rows[rng.random(rows.shape) < 0.25] = np.nan
    expected = booster.predict(rows.astype(np.float64))
    for graph in manifest.graphs.values():
        sess = ort.InferenceSession(str(path / graph.file), providers=["CPUExecutionProvider"])
        (probabilities,) = sess.run([graph.output_name], {graph.input_name: rows})
        assert np.max(np.abs(probabilities[:, 1] - expected)) <= 1e-5
