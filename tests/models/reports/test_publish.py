"""The report inside its package: listed with its checksum, republished atomically with a valid
seal, and regenerated from a training set; what cannot be regenerated is refused with a reason."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lightgbm as lgb
import pandas as pd
import pytest

from models.package import (
    checksums,
    read_manifest,
    sha256_bytes,
    sha256_file,
    verify_package,
    write_package,
)
from models.reports.publish import regenerate, republish, with_report
from models.reports.training import REPORT_FILE
from tests.conftest import ROOT
from tests.models.package_helpers import toy_files, toy_manifest

FRAUD = ROOT / "feature_repo" / "fraud"


def test_the_report_is_listed_with_its_checksum() -> None:
    manifest = toy_manifest()
    listed, payload = with_report(manifest, "<html>é</html>")
    assert payload == "<html>é</html>".encode()
    assert listed.artefacts == {**manifest.artefacts, REPORT_FILE: sha256_bytes(payload)}
    assert REPORT_FILE not in manifest.artefacts  # the original is left as it was


def test_republishing_swaps_the_report_and_keeps_the_package_sealed(tmp_path: Path) -> None:
    manifest, payload = with_report(toy_manifest(), "old report")
    package = write_package(tmp_path, manifest, {**toy_files(), REPORT_FILE: payload})
    assert republish(package, read_manifest(package), "new report") == package
    assert (package / REPORT_FILE).read_text() == "new report"
    updated = read_manifest(package)
    for name, digest in checksums(updated).items():
        assert sha256_file(package / name) == digest
    assert set(checksums(updated)) == {"model.onnx", "model.lgb.txt", REPORT_FILE}
    verify_package(package)


def test_a_package_outside_a_package_root_is_not_republished(tmp_path: Path) -> None:
    package = write_package(tmp_path, toy_manifest(), toy_files())
    elsewhere = tmp_path / "copies" / "toy_model_latest"
    shutil.copytree(package, elsewhere)
    with pytest.raises(ValueError, match=r"is not laid out as <root>/toy_model/v1"):
        republish(elsewhere, read_manifest(elsewhere), "report")


@pytest.fixture()
def trained(tmp_path: Path, labelled_rows: pd.DataFrame, booster: lgb.Booster) -> Path:
    """A toy package with its LightGBM model, trained on ``labelled_rows`` (holdout: last day)."""
    text = booster.model_to_string().encode()
    times = labelled_rows["event_timestamp"]
    manifest = toy_manifest(
        artefacts={"model.lgb.txt": sha256_bytes(text)},
        training={
            "holdout_from": str(times.iloc[-1_000]),
            "data_range": [str(times.iloc[0]), str(times.iloc[-1])],
        },
    )
    return write_package(tmp_path / "packages", manifest, {**toy_files(), "model.lgb.txt": text})


def test_regenerate_rebuilds_the_report_from_a_training_set(
    trained: Path, labelled_rows: pd.DataFrame, tmp_path: Path
) -> None:
    training_set = tmp_path / "training_set.parquet"
    labelled_rows.to_parquet(training_set)
    assert regenerate(trained, training_set=training_set, domain=FRAUD) == trained
    verify_package(trained)
    page = (trained / REPORT_FILE).read_text()
    start = page.index('id="report-data">') + len('id="report-data">')
    numbers = json.loads(page[start : page.index("</script>", start)])
    assert numbers["holdout_rows"] == 1_000
    assert numbers["holdout_positive_rate"] == pytest.approx(
        labelled_rows["is_fraud"].tail(1_000).mean()
    )
    assert read_manifest(trained).artefacts[REPORT_FILE] == sha256_file(trained / REPORT_FILE)


def test_regenerate_needs_a_domain_and_a_training_set(trained: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no domain file: pass --domain .* or --repo"):
        regenerate(trained)
    with pytest.raises(ValueError, match=r"no training set: pass --training-set"):
        regenerate(trained, domain=FRAUD, events=tmp_path / "missing.parquet")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("drop amount", r"the training set lacks \['amount'\]: it was not retrieved through "
         "toy_model_v1"),
        ("one class", "no holdout rows of both classes"),
        ("no model file", "has no LightGBM model file to score the holdout"),
    ],
)  # fmt: skip
def test_regenerate_refuses_what_it_cannot_measure(
    trained: Path, labelled_rows: pd.DataFrame, tmp_path: Path, change: str, message: str
) -> None:
    frame = labelled_rows
    if change == "drop amount":
        frame = frame.drop(columns="amount")
    elif change == "one class":
        frame = frame.assign(is_fraud=0)
    else:
        manifest = read_manifest(trained)
        write_package(trained.parent.parent, manifest.model_copy(update={"artefacts": {}}),
                      {"model.onnx": toy_files()["model.onnx"]})  # fmt: skip
    training_set = tmp_path / "training_set.parquet"
    frame.to_parquet(training_set)
    with pytest.raises(ValueError, match=message):
        regenerate(trained, training_set=training_set, domain=FRAUD)
