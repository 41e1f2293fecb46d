"""Offline batch scoring gives what the online service gives, for the same transactions.

Recent transactions are scored through the app (SQLite online store, lifespan running) and,
at the same moment, offline with ``batch-score`` as of that moment: the point-in-time features
at "now" equal the materialized online ones, so scores and labels must be equal.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from feature_repo import clock
from scoring_service.batch_scoring import batch_score
from scoring_service.cli import app as service_cli
from scoring_service.core.errors import ModelPackageInvalid

pytestmark = pytest.mark.clock


@pytest.fixture(scope="module")
def sample(transactions: pd.DataFrame) -> pd.DataFrame:
    """300 transactions of the last day, a few with entities the store has never seen."""
    end = transactions.event_timestamp.max()
    recent = transactions[transactions.event_timestamp > end - pd.Timedelta(days=1)]
    picked = recent.iloc[-300:].reset_index(drop=True).copy()
    picked.loc[:9, "card_id"] = [f"card_never_seen_{i}" for i in range(10)]
    picked.loc[5:14, "ip_address"] = [f"198.51.100.{i}" for i in range(10)]
    return picked


def test_same_scores_and_labels_as_the_service(
    sample: pd.DataFrame, sqlite_repo: Path, model_root: Path, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from scoring_service.api.app import create_app
    from tests.fixtures.service import API_HEADERS, as_request, settings_for

    settings = settings_for(sqlite_repo, model_root, device="auto")
    with TestClient(create_app(settings), headers=API_HEADERS) as client:
        now = clock.now()
        body = {"transactions": [as_request(row) for row in sample.itertuples()]}
        response = client.post("/v1/transactions/score-batch", json=body)
    assert response.status_code == 200, response.text
    online = response.json()["results"]

    path = tmp_path / "sample.parquet"
    sample.to_parquet(path, index=False)
    out = tmp_path / "scores.parquet"
    result = batch_score(
        path, out, repo_path=sqlite_repo, model_root=model_root, as_of=now, chunk_rows=128
    )
    offline = pd.read_parquet(out)

    assert result.rows == len(sample) and result.device == "cpu"
    assert list(offline.columns) == ["transaction_id", "score", "label"]
    assert offline.transaction_id.tolist() == [r["transaction_id"] for r in online]
    np.testing.assert_array_equal(offline.score.to_numpy(), [r["score"] for r in online])
    assert offline.label.tolist() == [r["label"] for r in online]
    # Rows 5-9 have an unknown card and an unknown IP: too thin, unless the score alone is
    # highly suspicious (always reported).
    assert offline.label.iloc[5:10].isin(["uncertain", "highly_suspicious"]).all()
    assert {"uncertain", "not_fraud"} <= set(offline.label)


def test_cli_scores_at_transaction_time_in_input_order(
    sample: pd.DataFrame, sqlite_repo: Path, model_root: Path, tmp_path: Path
) -> None:
    path = tmp_path / "sample.parquet"
    sample.iloc[::-1].to_parquet(path, index=False)  # order must be kept, whatever it is
    out = tmp_path / "scores.parquet"
    result = CliRunner().invoke(
        service_cli,
        [
            "batch-score",
            "--input",
            str(path),
            "--out",
            str(out),
            "--repo",
            str(sqlite_repo),
            "--model-root",
            str(model_root),
            "--chunk-rows",
            "100",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "wrote 300 scores" in result.output
    assert "scored 300/300 rows (100%)" in result.output
    scores = pd.read_parquet(out)
    assert scores.transaction_id.tolist() == sample.transaction_id.iloc[::-1].tolist()
    assert scores.score.between(0, 1).all()
    assert set(scores.label) <= {"not_fraud", "suspicious", "highly_suspicious", "uncertain"}


def test_cuda_refused_without_gpu(
    sample: pd.DataFrame, sqlite_repo: Path, model_root: Path, tmp_path: Path
) -> None:
    from tests.scoring_service.stages.test_predictor import cuda_unusable_reason

    if cuda_unusable_reason() is None:
        pytest.skip("CUDA is usable here")
    path = tmp_path / "sample.parquet"
    sample.to_parquet(path, index=False)
    with pytest.raises(ModelPackageInvalid, match="device=cuda was requested"):
        batch_score(
            path,
            tmp_path / "out.parquet",
            repo_path=sqlite_repo,
            model_root=model_root,
            device="cuda",
        )
    assert not (tmp_path / "out.parquet").exists()


def test_missing_columns_are_named(sqlite_repo: Path, model_root: Path, tmp_path: Path) -> None:
    path = tmp_path / "bad.parquet"
    pd.DataFrame({"transaction_id": ["t1"], "amount": [1.0]}).to_parquet(path)
    with pytest.raises(ValueError, match="card_id"):
        batch_score(path, tmp_path / "out.parquet", repo_path=sqlite_repo, model_root=model_root)
