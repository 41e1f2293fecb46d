"""The training report: written into the package, checksummed, and rendered by a real browser."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from models.cli import app
from models.dataset import open_store
from models.package import checksums, read_manifest, sha256_file
from models.report import FIGURES, REPORT_FILE
from scoring_service.registry import load_package

CHROMIUM = "/usr/bin/chromium"


class _Page(HTMLParser):
    """The img elements and the embedded report data of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.images: dict[str, dict[str, str]] = {}
        self.data = ""
        self._in_data = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "img" and "id" in values:
            self.images[values["id"]] = values
        self._in_data = tag == "script" and values.get("id") == "report-data"

    def handle_endtag(self, tag: str) -> None:
        self._in_data = False

    def handle_data(self, data: str) -> None:
        if self._in_data:
            self.data += data


def chromium(page: Path, workdir: Path, *mode: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium on a local file, offline, with a throwaway profile."""
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing; install Debian's chromium package")
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={workdir / 'profile'}",
            "--window-size=1400,4000",
            *mode,
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )


def png_size(payload: bytes) -> tuple[int, int]:
    """Width and height of a PNG, from the decoded image."""
    with Image.open(io.BytesIO(payload)) as image:
        image.load()
        return image.size


def check_figures(dom: str) -> dict:
    """Every expected figure is an img with alt text and a real PNG; returns the report data."""
    page = _Page()
    page.feed(dom)
    assert list(page.images) == list(FIGURES)
    for fig_id, attrs in page.images.items():
        assert attrs["alt"], f"{fig_id} has no alt text"
        prefix = "data:image/png;base64,"
        assert attrs["src"].startswith(prefix), f"{fig_id} is not an embedded PNG"
        payload = base64.b64decode(attrs["src"][len(prefix) :], validate=True)
        width, height = png_size(payload)
        assert width >= 300 and height >= 200, f"{fig_id} is {width}x{height}"
    return json.loads(page.data)


def test_training_writes_a_checksummed_report(model_root: Path) -> None:
    path = model_root / "fraud_model" / "v1"
    manifest = read_manifest(path)
    assert REPORT_FILE in manifest.artefacts
    for file_name, digest in checksums(manifest).items():
        assert sha256_file(path / file_name) == digest
    page = _Page()
    page.feed((path / REPORT_FILE).read_text())
    numbers = json.loads(page.data)
    holdout = manifest.metrics["holdout"]
    # The report scores the same holdout rows as training did: the same figures.
    assert numbers["holdout_rows"] == holdout["n_rows"]
    assert numbers["curves"]["model"]["pr_auc"] == pytest.approx(holdout["pr_auc"], abs=1e-9)
    assert numbers["curves"]["rules baseline"]["pr_auc"] == pytest.approx(
        holdout["rules_baseline_pr_auc"], abs=1e-9
    )
    suspicious = next(row for row in numbers["thresholds"] if row["label"] == "suspicious")
    assert suspicious["precision"] == pytest.approx(holdout["suspicious_precision"], nan_ok=True)
    assert {row["segment"] for row in numbers["segments"]} == {
        "country mismatch",
        "amount band",
        "fraud pattern",
    }


def test_report_renders_in_headless_chromium(model_root: Path, tmp_path: Path) -> None:
    report = model_root / "fraud_model" / "v1" / REPORT_FILE
    dom = chromium(report, tmp_path, "--dump-dom").stdout
    check_figures(dom)
    shot = tmp_path / "report.png"
    chromium(report, tmp_path, f"--screenshot={shot}")
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    assert pixels.shape[:2] == (4000, 1400)
    gray = pixels.mean(axis=2)
    assert gray.std() > 10.0, "the screenshot is blank"
    # Plot lines and bars are coloured; a page of text and tables alone is grey.
    saturation = pixels.max(axis=2) - pixels.min(axis=2)
    assert (saturation > 80).mean() > 0.002, "the screenshot shows no plots"


def test_report_command_regenerates_with_the_previous_version(
    model_root: Path, sqlite_repo: Path, transactions_path: Path, tmp_path: Path
) -> None:
    # A package root with v1 and an older v0 of the same model (v1's trees, an earlier date).
    root = tmp_path / "packages"
    current = root / "fraud_model" / "v1"
    shutil.copytree(model_root / "fraud_model" / "v1", current)
    older = root / "fraud_model" / "v0"
    shutil.copytree(current, older)
    manifest = read_manifest(current)
    v0 = manifest.model_copy(
        update={"version": "v0", "created_at": manifest.created_at - timedelta(days=7)}
    )
    (older / "manifest.json").write_text(v0.model_dump_json(indent=2))
    (current / REPORT_FILE).write_text("stale")  # damaged: regeneration must replace it

    result = CliRunner().invoke(
        app,
        [
            "report",
            "--package",
            str(current),
            "--repo",
            str(sqlite_repo),
            "--events",
            str(transactions_path),
        ],
    )
    assert result.exit_code == 0, result.output

    regenerated = read_manifest(current)
    for file_name, digest in checksums(regenerated).items():
        assert sha256_file(current / file_name) == digest
    numbers = check_figures((current / REPORT_FILE).read_text())
    previous = numbers["curves"]["previous fraud_model/v0"]
    # Same trees, same holdout: the previous version's curve is the model's.
    assert previous["pr_auc"] == pytest.approx(numbers["curves"]["model"]["pr_auc"])
    assert numbers["curves"]["model"]["pr_auc"] == pytest.approx(
        manifest.metrics["holdout"]["pr_auc"], abs=1e-9
    )
    # The service verifies the republished package, report included, and loads it.
    loaded = load_package(current, open_store(sqlite_repo), device="cpu")
    assert loaded.manifest.artefacts[REPORT_FILE] == sha256_file(current / REPORT_FILE)
