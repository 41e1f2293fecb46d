"""``models.package`` is the format the service reads: every name it offered as one module is
still there, and importing it needs no training library (the serving image has none)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import models.package
from models.package import baselines, manifest, seal, segments
from tests.conftest import ROOT

# Every public name of the format, as the service and the tests import them.
PUBLIC = {
    manifest: [
        "MANIFEST_FILE",
        "SCHEMA_VERSION",
        "FeatureBaseline",
        "FeatureViewInfo",
        "GraphInfo",
        "LabelThresholds",
        "Manifest",
        "OnDemandViewInfo",
        "UncertainPolicy",
        "package_dir",
        "read_manifest",
    ],
    seal: [
        "DIGEST_FILE",
        "SIGNATURE_FILE",
        "SIGNING_KEY_ENV",
        "PackageIntegrityError",
        "checksums",
        "package_digest",
        "seal_package",
        "sha256_bytes",
        "sha256_file",
        "sign_digest",
        "verify_package",
        "write_package",
    ],
    baselines: [
        "BASELINE_QUANTILES",
        "PSI_EPSILON",
        "SCORE_EDGE_TOLERANCE",
        "SCORE_QUANTILES",
        "bin_counts",
        "feature_baseline",
        "psi",
        "score_baseline",
        "score_bins",
        "score_reference",
    ],
    segments: ["segment_key"],
}
# What the package's modules may import besides each other: the serving image installs them
# (feature_repo is the feature definitions the service itself reads).
SERVING_SAFE = {"__future__", "numpy", "pydantic", "feature_repo", *sys.stdlib_module_names}
# Optional extras a module may import inside a function only, where it is used: importing the
# format never needs them (River: the `online` extra, for a process that hosts a learner).
OPTIONAL = {"river"}
TRAINING = {"lightgbm", "sklearn", "onnxmltools", "onnx", "matplotlib", "shap"}


def test_every_public_name_is_re_exported_from_its_module() -> None:
    names = [name for public in PUBLIC.values() for name in public]
    assert sorted(models.package.__all__) == sorted(names)
    for module, public in PUBLIC.items():
        for name in public:
            assert getattr(models.package, name) is getattr(module, name), name


def test_the_format_imports_only_what_the_serving_image_installs() -> None:
    folder = ROOT / "models" / "package"
    strangers = []
    for path in sorted(folder.glob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        nested = {
            id(inner)
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            for inner in ast.walk(node)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                allowed = SERVING_SAFE | (OPTIONAL if id(node) in nested else set())
                if top not in allowed and not module.startswith("models.package"):
                    strangers.append(f"{Path(path).name}: {module}")
    assert strangers == []


def test_importing_the_format_loads_no_training_library() -> None:
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, models.package; print(' '.join(sys.modules))"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.split()
    assert [m for m in loaded if m.split(".")[0] in TRAINING] == []
    # Nor any other part of models/: the format stands alone.
    assert {m for m in loaded if m.startswith("models")} == {
        "models",
        "models.package",
        *(f"models.package.{name}" for name in ("baselines", "manifest", "seal", "segments")),
    }
