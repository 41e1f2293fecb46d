"""The credit model, trained end to end on the credit-scoring tutorial data.

The whole data set (28,638 applications) is small enough to train on here: the loader writes a
temporary copy of the credit repository, the plain Feast CLI applies it, and ``python -m models
train --domain <copy>`` trains through the FeatureService with the time split, exports ONNX with
its parity check and publishes the package. LightGBM must beat the decision tree (the tutorial's
model) on both holdout ROC-AUC and PR-AUC.
"""

from __future__ import annotations

import traceback
from pathlib import Path

import pytest
from typer.testing import CliRunner

from feature_pipelines.credit.load import load
from models.cli import app
from models.export import PARITY_TOLERANCE
from models.package import Manifest, checksums, read_manifest, sha256_file
from tests.conftest import feast_cli
from tests.feature_pipelines.credit.test_load import definitions_copy

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(package folder, output of `models train`) of the credit model on the full data."""
    repo = definitions_copy(tmp_path_factory.mktemp("credit_train") / "credit")
    load(None, repo)
    feast_cli(repo, "apply")
    root = tmp_path_factory.mktemp("credit_packages")
    result = CliRunner().invoke(app, ["train", "--domain", str(repo), "--output", str(root)])
    if result.exit_code != 0:
        trace = "".join(traceback.format_exception(*result.exc_info)) if result.exc_info else ""
        pytest.fail(f"train failed:\n{result.output}\n{trace}")
    return root / "credit_model" / "v1", result.output


@pytest.fixture(scope="module")
def manifest(trained: tuple[Path, str]) -> Manifest:
    return read_manifest(trained[0])


def test_lightgbm_beats_the_decision_tree_on_the_same_split(manifest: Manifest) -> None:
    holdout = manifest.metrics["holdout"]
    assert holdout["roc_auc"] > holdout["decision_tree_roc_auc"]
    assert holdout["pr_auc"] > holdout["decision_tree_pr_auc"]
    assert holdout["roc_auc"] > 0.9
    assert holdout["pr_auc"] > holdout["rules_baseline_pr_auc"]


def test_train_prints_both_models_holdout_metrics(trained: tuple[Path, str], manifest) -> None:
    holdout = manifest.metrics["holdout"]
    output = trained[1]
    assert f"LightGBM              {holdout['roc_auc']:.4f}   {holdout['pr_auc']:.4f}" in output
    assert (
        f"decision tree         {holdout['decision_tree_roc_auc']:.4f}   "
        f"{holdout['decision_tree_pr_auc']:.4f}"
    ) in output


def test_package_follows_the_domain_declaration(trained, manifest: Manifest) -> None:
    assert (manifest.domain, manifest.name, manifest.version) == ("credit", "credit_model", "v1")
    assert manifest.labels == ["approve", "manual_review", "decline"]
    cutoffs = manifest.label_thresholds.cutoffs
    assert list(cutoffs) == ["manual_review", "decline"]
    assert 0.0 < cutoffs["manual_review"] <= cutoffs["decline"] < 1.0
    assert "decline = lowest score with precision >= 0.8" in manifest.label_thresholds.rule
    assert manifest.entity_mapping == {"dob_ssn": "dob_ssn", "zipcode": "zipcode"}
    assert manifest.request_features == [
        "person_age",
        "person_income",
        "person_emp_length",
        "loan_amnt",
        "loan_int_rate",
    ]
    assert manifest.uncertain_policy.optional_entities == ["dob_ssn"]
    assert manifest.uncertain_policy.report_label_at_or_above == "decline"
    assert set(manifest.on_demand_views) == {
        "application_ratios",
        "credit_burden",
        "application_categories",
    }
    # Time split: validation and holdout come after the training rows.
    assert manifest.training["validation_from"] < manifest.training["holdout_from"]
    assert manifest.training["n_train"] > 0.65 * 28_638
    assert max(manifest.training["parity_cpu"], manifest.training["parity_gpu"]) <= (
        PARITY_TOLERANCE
    )
    for file_name, digest in checksums(manifest).items():
        assert sha256_file(trained[0] / file_name) == digest
