"""The layers hold, and the contracts that keep them can fail.

`lint-imports` (import-linter, configured in pyproject.toml) runs on the tree as it is, and on a
copy of it with one forbidden import planted: each plant must break the contract that names it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGES = ("feature_repo", "feature_pipelines", "models", "scoring_service", "orchestration")
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """Run import-linter on the packages under ``root`` with the project's contracts."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    """The packages' Python sources and the project configuration, copied."""
    for package in PACKAGES:
        shutil.copytree(
            ROOT / package,
            tmp_path / package,
            ignore=shutil.ignore_patterns("data", "packages", "__pycache__", "*.onnx"),
        )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_contracts_are_kept(tree: Path) -> None:
    result = lint_imports(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "planted", "contract"),
    [
        ("scoring_service/stages/labels.py", "import lightgbm", "needs no training libraries"),
        (
            "scoring_service/stages/labels.py",
            "import models.train",
            "never training or pipeline code",
        ),
        ("feature_repo/online.py", "import scoring_service.core.errors", "Layers"),
        ("models/evaluate.py", "import feature_pipelines.materialize", "Layers"),
        # The package format is what the service imports: it is held to the serving install.
        ("models/package/seal.py", "import lightgbm", "needs no training libraries"),
        # The orchestrator is its own extra: nothing below it imports it or Dagster.
        ("models/train.py", "import dagster", "Nothing below the orchestration"),
        ("scoring_service/cli.py", "import orchestration.cli", "Nothing below the orchestration"),
        ("orchestration/assets.py", "import scoring_service.cli", "does not import the scoring"),
        # Inside the service, each subpackage imports only those below it.
        ("scoring_service/core/errors.py", "import scoring_service.api.app", "Service subpackages"),
        (
            "scoring_service/stages/labels.py",
            "import scoring_service.deployments.live",
            "Service subpackages",
        ),
        ("scoring_service/served.py", "import scoring_service.api.deps", "Service subpackages"),
    ],
)
def test_a_forbidden_import_breaks_the_lint(
    tree: Path, module: str, planted: str, contract: str
) -> None:
    path = tree / module
    path.write_text(path.read_text() + f"\n{planted}  # planted by the architecture test\n")
    result = lint_imports(tree)
    assert result.returncode != 0
    broken = [line for line in result.stdout.splitlines() if "BROKEN" in line]
    assert any(contract in line for line in broken), result.stdout
