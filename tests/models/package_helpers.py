"""Helpers of the package-format and report tests: a small valid manifest and its files.

Written to ``tmp_path`` with ``models.package.write_package``; the "graph" is a few bytes, which
is all the format checks (its sha256), so no model needs training.
"""

from __future__ import annotations

from datetime import UTC, datetime

from models.package import (
    FeatureViewInfo,
    GraphInfo,
    LabelThresholds,
    Manifest,
    UncertainPolicy,
    sha256_bytes,
)

GRAPH = b"onnx graph bytes of a toy model"
BOOSTER = b"tree\nversion=v4\n"
STORED = ["card_txn_count_24h", "card_amount_mean_30d"]
FEATURES = [*STORED, "amount"]


def toy_manifest(**changes: object) -> Manifest:
    """A valid manifest of a three-label model reading one feature view and one request field;
    ``changes`` replace fields (validated again)."""
    fields: dict[str, object] = {
        "name": "toy_model",
        "version": "v1",
        "created_at": datetime(2026, 3, 1, 12, 0, tzinfo=UTC),
        "domain": "toy",
        "labels": ["not_fraud", "suspicious", "highly_suspicious"],
        "feature_service": "toy_model_v1",
        "features": FEATURES,
        "feature_views": {
            "card_features": FeatureViewInfo(join_key="card_id", ttl_seconds=86400, features=STORED)
        },
        "request_features": ["amount"],
        "entity_mapping": {"card_id": "card_id"},
        "label_thresholds": LabelThresholds.model_validate(
            {"suspicious": 0.3, "highly_suspicious": 0.7, "rule": "planted"}
        ),
        "uncertain_policy": UncertainPolicy(report_label_at_or_above="highly_suspicious"),
        "graphs": {
            "cpu": GraphInfo(file="model.onnx", sha256=sha256_bytes(GRAPH), kind="tree_ensemble")
        },
        "artefacts": {"model.lgb.txt": sha256_bytes(BOOSTER)},
    }
    fields.update(changes)
    return Manifest.model_validate(fields)


def toy_files() -> dict[str, bytes]:
    """The files ``toy_manifest`` names, with matching checksums."""
    return {"model.onnx": GRAPH, "model.lgb.txt": BOOSTER}
