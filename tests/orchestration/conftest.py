"""A platform root of its own for the orchestration tests: the fraud repository's definitions
(no offline tables, no registry: the asset graph writes and applies them), the session's tiny
generated events as the raw events, and the session's trained package as the champion."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from orchestration.resources import PlatformResource
from tests.conftest import FEATURE_REPO

CHAMPION = "fraud_model/v1"


@pytest.fixture(scope="module")
def platform_root(tmp_path_factory, transactions: pd.DataFrame, model_root: Path) -> Path:
    root = tmp_path_factory.mktemp("platform")
    repo = root / "feature_repo" / "fraud"
    repo.mkdir(parents=True)
    for item in FEATURE_REPO.iterdir():
        if item.suffix in (".py", ".yaml") or item.name == ".feastignore":
            shutil.copy(item, repo / item.name)
    (root / "data").mkdir()
    transactions.to_parquet(root / "data" / "transactions.parquet", index=False)
    shutil.copytree(model_root, root / "models" / "packages")
    return root


def platform(root: Path, **changes: object) -> PlatformResource:
    """The resource over ``root``: the session champion, few boosting rounds."""
    return PlatformResource(root=str(root), champion=CHAMPION, training_rounds=60, **changes)  # type: ignore[arg-type]
