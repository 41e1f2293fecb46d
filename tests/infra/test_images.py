"""The images, read from their Dockerfiles (no engine here): the serving image holds what the
service imports and nothing of training or the pipelines."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.infra.manifests import INFRA, ROOT

SERVING = INFRA / "Dockerfile"
PIPELINES = INFRA / "Dockerfile.pipelines"
FIRST_PARTY = ("scoring_service", "feature_repo", "feature_pipelines", "models")
# Training libraries the serving dependency set leaves out.
TRAINING_ONLY = ("lightgbm", "sklearn", "onnxmltools")
# The model-package format, the one part of models/ the serving image holds.
PACKAGE_FORMAT = (
    "__init__.py",
    "baselines.py",
    "manifest.py",
    "online.py",
    "seal.py",
    "segments.py",
)


def copies(dockerfile: Path, stage: str) -> list[tuple[list[str], str]]:
    """(sources, destination) of the COPY lines of one stage that copy from the build context."""
    out: list[tuple[list[str], str]] = []
    current = None
    for line in dockerfile.read_text().splitlines():
        match = re.match(r"^FROM \S+ AS (\S+)$", line)
        if match:
            current = match.group(1)
        elif current == stage and line.startswith("COPY ") and "--from=" not in line:
            *sources, destination = line.split()[1:]
            out.append((sources, destination))
    return out


def copied_files(dockerfile: Path, stage: str) -> set[Path]:
    """Every repository file the stage's COPY lines take, as paths relative to the root."""
    ignored = {"data", "__pycache__"}
    files: set[Path] = set()
    for sources, _ in copies(dockerfile, stage):
        for source in sources:
            path = ROOT / source
            if path.is_dir():
                files |= {
                    p.relative_to(ROOT)
                    for p in path.rglob("*")
                    if p.is_file() and not ignored & set(p.relative_to(ROOT).parts)
                }
            else:
                files |= {p.relative_to(ROOT) for p in ROOT.glob(source)}
    return files


def imports(path: Path) -> set[str]:
    """Every module a Python file imports, at module level or inside functions."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def module_file(name: str) -> Path | None:
    """The repository file of a first-party module (a name that is not one is None)."""
    base = Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if (ROOT / candidate).is_file():
            return candidate
    return None


def test_serving_image_is_multi_stage_serving_only() -> None:
    text = SERVING.read_text()
    stages = re.findall(r"^FROM \S+ AS (\S+)$", text, flags=re.MULTILINE)
    assert stages == ["build", "runtime"]
    # The serving lock (serve-cpu.txt unless ORT says otherwise), then the project alone.
    assert re.search(r"^ARG ORT=cpu$", text, flags=re.MULTILINE)
    assert '--prefix=/install --require-hashes -r "infra/locks/serve-${ORT}.txt"' in text
    assert "pip install --prefix=/install --no-deps ." in text
    assert re.search(r"^USER 10001", text, flags=re.MULTILINE)
    assert 'CMD ["python", "-m", "scoring_service", "serve"]' in text
    sources = {s for sources, _ in copies(SERVING, "build") for s in sources}
    assert sources == {
        "infra/locks/serve-${ORT}.txt",
        "pyproject.toml",
        "README.md",
        "scoring_service",
        "feature_repo",
        "models/__init__.py",
        "models/package",
    }


PIPELINE_BRIDGE = Path("scoring_service/stream_scoring/windows.py")


def test_serving_image_holds_every_module_the_service_imports() -> None:
    """Follow the service's first-party imports from scoring_service/ through what they import:
    each must be a file the image copies, and none may be a training library."""
    shipped = copied_files(SERVING, "build")
    todo = [p.relative_to(ROOT) for p in (ROOT / "scoring_service").rglob("*.py")]
    seen: set[Path] = set()
    missing: set[str] = set()
    training: set[str] = set()
    bridged: set[str] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imports(ROOT / path):
            top = name.split(".")[0]
            if top in TRAINING_ONLY:
                training.add(f"{path}: {name}")
            if top not in FIRST_PARTY:
                continue
            if path == PIPELINE_BRIDGE and name.startswith("feature_pipelines.streaming"):
                bridged.add(name)
                continue  # the window step runs only where the pipelines are installed
            target = module_file(name)
            if target is None:
                continue  # "from package import name": the name is not a module
            if target not in shipped:
                missing.add(f"{path}: {name}")
            todo.append(target)
    assert missing == set()
    assert training == set()
    # The one module the contracts let import the pipelines, lazily (pyproject.toml): the
    # stream scorer's optional window step, which the serving image does not offer.
    assert bridged and all(n.startswith("feature_pipelines.streaming") for n in bridged)
    assert not any(p.parts[0] == "feature_pipelines" for p in shipped)
    assert {p for p in shipped if p.parts[0] == "models"} == {
        Path("models/__init__.py"),
        *(Path("models/package") / name for name in PACKAGE_FORMAT),
    }


def test_serving_image_keeps_generated_data_out() -> None:
    ignore = (INFRA / "Dockerfile.dockerignore").read_text().split()
    assert {"data", "feature_repo/*/data", "models/packages", "**/.venv"} <= set(ignore)


def test_pipelines_image_stages_and_spark_driver() -> None:
    text = PIPELINES.read_text()
    stages = re.findall(r"^FROM \S+ AS (\S+)$", text, flags=re.MULTILINE)
    assert stages == ["build", "pipelines", "spark"]
    sources = {s for sources, _ in copies(PIPELINES, "build") for s in sources}
    assert "scoring_service" not in sources
    spark = copies(PIPELINES, "spark")
    (driver,) = [dest for srcs, dest in spark if srcs == ["infra/spark/aggregate.py"]]
    assert driver == "/app/jobs/aggregate.py"
    assert (INFRA / "Dockerfile.pipelines.dockerignore").read_text() == (
        INFRA / "Dockerfile.dockerignore"
    ).read_text()
