"""What the training report reads: the manifest's holdout rows, the events' segment columns,
and the previous version of the model scored on the same rows."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from feature_repo.domain import load_domain
from models.package import MANIFEST_FILE, Manifest, sha256_bytes, write_package
from models.reports.inputs import (
    booster_file,
    find_previous,
    holdout_rows,
    previous_comparison,
    with_segment_columns,
)
from tests.conftest import ROOT
from tests.models.package_helpers import FEATURES, toy_files, toy_manifest

FRAUD = load_domain(ROOT / "feature_repo" / "fraud")


def test_the_holdout_is_the_manifests_range(labelled_rows: pd.DataFrame) -> None:
    times = labelled_rows["event_timestamp"]
    manifest = toy_manifest(
        training={
            "holdout_from": str(times[2_000]),
            "data_range": [str(times[0]), str(times[2_499])],
        }
    )
    holdout = holdout_rows(labelled_rows, manifest)
    assert (
        holdout["transaction_id"].tolist() == labelled_rows["transaction_id"][2_000:2_500].tolist()
    )
    assert holdout.index.tolist() == list(range(500))
    # Without a recorded range, the holdout runs to the end of the frame.
    open_ended = toy_manifest(training={"holdout_from": str(times[2_900])})
    assert len(holdout_rows(labelled_rows, open_ended)) == 100


def test_segment_columns_come_from_the_events_by_business_id(labelled_rows: pd.DataFrame) -> None:
    frame = labelled_rows.head(3)
    events = pd.DataFrame(
        {
            "transaction_id": ["tx_00002", "tx_00000", "tx_00001", "tx_09999"],
            "card_country": ["US", "FR", "DE", "GB"],
            "amount": [0.0, 0.0, 0.0, 0.0],  # already in the frame: the frame's stays
        }
    )
    joined = with_segment_columns(frame, events, FRAUD)
    assert joined["card_country"].tolist() == ["FR", "DE", "US"]
    assert joined["amount"].tolist() == frame["amount"].tolist()
    assert with_segment_columns(frame, None, FRAUD) is frame
    assert with_segment_columns(frame.drop(columns="transaction_id"), events, FRAUD).shape == (3, 5)


def _publish(root: Path, version: str, days_before: int, booster: lgb.Booster | None) -> Manifest:
    """A toy package of ``version``, created ``days_before`` the reference date."""
    files = {"model.onnx": toy_files()["model.onnx"]}
    if booster is not None:
        files["model.lgb.txt"] = booster.model_to_string().encode()
    manifest = toy_manifest(
        version=version,
        created_at=toy_manifest().created_at - timedelta(days=days_before),
        artefacts={
            name: sha256_bytes(data) for name, data in files.items() if name != "model.onnx"
        },
    )
    write_package(root, manifest, files)
    return manifest


def test_the_previous_version_is_the_latest_created_before(tmp_path: Path) -> None:
    current = _publish(tmp_path, "v3", 0, None)
    _publish(tmp_path, "v1", 20, None)
    _publish(tmp_path, "v2", 10, None)
    _publish(tmp_path, "v4", -5, None)  # newer: never the previous one
    broken = tmp_path / "toy_model" / "v2b"
    shutil.copytree(tmp_path / "toy_model" / "v2", broken)
    (broken / MANIFEST_FILE).write_text("{not json")
    found = find_previous(tmp_path, current)
    assert found is not None
    folder, manifest = found
    assert folder == tmp_path / "toy_model" / "v2" and manifest.version == "v2"
    alone = tmp_path / "alone"
    assert find_previous(alone, _publish(alone, "v1", 0, None)) is None


def test_the_booster_file_is_the_lightgbm_text_artefact() -> None:
    assert booster_file(toy_manifest()) == "model.lgb.txt"
    assert booster_file(toy_manifest(artefacts={"report.html": "0"})) is None


def test_the_previous_version_scores_the_same_rows(
    tmp_path: Path, labelled_rows: pd.DataFrame, booster: lgb.Booster
) -> None:
    current = _publish(tmp_path, "v2", 0, booster)
    _publish(tmp_path, "v1", 7, booster)
    holdout = labelled_rows.tail(500).reset_index(drop=True)
    comparison, note = previous_comparison(tmp_path, current, holdout)
    assert note is None and comparison is not None
    assert comparison.name == "previous toy_model/v1"
    expected = booster.predict(holdout[FEATURES].to_numpy(np.float32).astype(np.float64))
    np.testing.assert_allclose(comparison.scores, expected)


def test_a_previous_version_that_cannot_be_scored_leaves_a_note(
    tmp_path: Path, labelled_rows: pd.DataFrame, booster: lgb.Booster
) -> None:
    holdout = labelled_rows.tail(50).drop(columns="amount").reset_index(drop=True)
    current = _publish(tmp_path, "v2", 0, booster)
    assert previous_comparison(tmp_path, current, holdout) == (None, None)  # no previous one
    _publish(tmp_path, "v1", 7, booster)
    comparison, note = previous_comparison(tmp_path, current, holdout)
    assert comparison is None
    assert note == "previous toy_model/v1 reads inputs this training set lacks (['amount']...)."

    def gone(feature_service: str, rows: pd.DataFrame) -> pd.DataFrame:
        raise KeyError(f"feature service {feature_service} is not in the registry")

    comparison, note = previous_comparison(tmp_path, current, holdout, gone)
    assert comparison is None and note is not None
    assert note.startswith("previous toy_model/v1: its features could not be retrieved (")

    def found(feature_service: str, rows: pd.DataFrame) -> pd.DataFrame:
        assert feature_service == "toy_model_v1"
        return rows.assign(amount=labelled_rows["amount"].tail(50).to_numpy())

    comparison, note = previous_comparison(tmp_path, current, holdout, found)
    assert note is None and comparison is not None and len(comparison.scores) == 50


def test_a_previous_version_without_its_model_file_is_not_compared(
    tmp_path: Path, labelled_rows: pd.DataFrame, booster: lgb.Booster
) -> None:
    current = _publish(tmp_path, "v2", 0, booster)
    _publish(tmp_path, "v1", 7, None)
    comparison, note = previous_comparison(tmp_path, current, labelled_rows.tail(10))
    assert comparison is None
    assert note == "previous toy_model/v1 has no LightGBM model file; not compared."


def test_segment_columns_need_one_event_per_business_id(labelled_rows: pd.DataFrame) -> None:
    events = pd.DataFrame({"transaction_id": ["tx_00000"] * 2, "card_country": ["US", "FR"]})
    with pytest.raises(pd.errors.MergeError):
        with_segment_columns(labelled_rows.head(2), events, FRAUD)
