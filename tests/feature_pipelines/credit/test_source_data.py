"""The credit domain's source files live in the repository: a clone needs nothing beside it.

``feature_pipelines/credit/source_data/`` holds Feast's credit-scoring tutorial files, their
licence and ``SOURCE.md``, which names each file with its sha256. The loader reads that folder
by default, and no product file names a path outside the repository.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from feature_pipelines.credit.load import (
    DEFAULT_SOURCE,
    HISTORY_FILE,
    LOANS_FILE,
    ROOT,
    SOURCE_ENV,
    ZIPCODES_FILE,
    source_dir,
)

NOTE = DEFAULT_SOURCE / "SOURCE.md"
# A table row of SOURCE.md: | `file` | `sha256` | ...
ROW = re.compile(r"^\| `(?P<file>[^`]+)` \| `(?P<sha256>[0-9a-f]{64})` \|", re.MULTILINE)

# What the product is made of (tests and benchmarks aside), and the build outputs inside it.
PRODUCT = ["feature_repo", "feature_pipelines", "models", "scoring_service", "infra", "Makefile"]
BUILD_OUTPUTS = {"data", "packages", "__pycache__"}
TEXT_SUFFIXES = {".py", ".yaml", ".yml", ".toml", ".md", ".json", ".sql", ".conf", ".sh", ".txt"}
# A path into a folder beside the repository (written out or joined), or an absolute path of
# this machine's layout.
OUTSIDE = re.compile(r"\bshared/|[\"']shared[\"']\s*/|\.\./\.\./\.\./|/work/")


def listed_sums() -> dict[str, str]:
    return {m["file"]: m["sha256"] for m in ROW.finditer(NOTE.read_text())}


def product_files() -> list[Path]:
    files = []
    for name in PRODUCT:
        top = ROOT / name
        if top.is_file():
            files.append(top)
            continue
        for path in sorted(top.rglob("*")):
            inside = path.relative_to(top).parts[:-1]
            if BUILD_OUTPUTS.intersection(inside) or not path.is_file():
                continue
            if path.suffix in TEXT_SUFFIXES or path.name.startswith("Dockerfile"):
                files.append(path)
    return files


def test_the_default_source_is_inside_the_repository(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SOURCE_ENV, raising=False)
    assert source_dir() == DEFAULT_SOURCE
    assert DEFAULT_SOURCE.resolve().is_relative_to(ROOT.resolve())
    assert DEFAULT_SOURCE.relative_to(ROOT).as_posix() == "feature_pipelines/credit/source_data"


def test_the_source_files_match_their_sums() -> None:
    sums = listed_sums()
    assert set(sums) == {LOANS_FILE, ZIPCODES_FILE, HISTORY_FILE}
    for name, expected in sums.items():
        digest = hashlib.sha256((DEFAULT_SOURCE / name).read_bytes()).hexdigest()
        assert digest == expected, name


def test_the_source_names_its_origin_and_licence() -> None:
    assert "feast-dev/feast-credit-score-local-tutorial" in NOTE.read_text()
    licence = (DEFAULT_SOURCE / "LICENSE").read_text()
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence


def test_no_product_file_names_a_path_outside_the_repository() -> None:
    files = product_files()
    assert ROOT / "feature_pipelines" / "credit" / "load.py" in files
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in files
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert found == []
