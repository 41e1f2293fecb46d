"""The training report inside its package: listed among the artefacts, and republished.

``models train`` adds the report to the package it writes (``with_report``);
``python -m models report --package <dir>`` rebuilds it from the package and its training set
and swaps the whole package folder atomically (``regenerate``, ``republish``), so a loader sees
the old package or the new one, each with matching checksums and a valid seal.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from models.package import (
    MANIFEST_FILE,
    Manifest,
    package_dir,
    read_manifest,
    sha256_bytes,
    write_package,
)
from models.reports.inputs import booster_file, holdout_rows, retriever, with_segment_columns
from models.reports.training import REPORT_FILE, build, render


def with_report(manifest: Manifest, report_html: str) -> tuple[Manifest, bytes]:
    """The manifest listing the report among its artefacts, and the report's bytes."""
    payload = report_html.encode("utf-8")
    artefacts = {**manifest.artefacts, REPORT_FILE: sha256_bytes(payload)}
    return manifest.model_copy(update={"artefacts": artefacts}), payload


def republish(package: Path, manifest: Manifest, report_html: str) -> Path:
    """Write a new report into a published package: the whole folder is swapped atomically,
    so a loader sees the old package or the new one, each with matching checksums."""
    package = Path(package)
    root = package.parent.parent
    if package_dir(root, manifest.name, manifest.version).resolve() != package.resolve():
        raise ValueError(
            f"{package} is not laid out as <root>/{manifest.name}/{manifest.version}; the "
            "report can only be republished in a package root"
        )
    updated, payload = with_report(manifest, report_html)
    files = {
        path.name: path.read_bytes()
        for path in sorted(package.iterdir())
        if path.is_file() and path.name not in (MANIFEST_FILE, REPORT_FILE)
    }
    files[REPORT_FILE] = payload
    return write_package(root, updated, files)


def regenerate(
    package: Path,
    *,
    training_set: Path | None = None,
    repo: Path | None = None,
    yaml: Path | None = None,
    events: Path | None = None,
    domain: Path | None = None,
) -> Path:
    """Rebuild a package's report from the package and its training set, and republish it.

    The training set is ``training_set`` (``python -m models dataset`` of the package's
    feature service) or, without one, retrieved again through the feature store in ``repo``
    from the events the package was trained on. The holdout is the manifest's. The domain file
    is ``domain``, else the one the package was trained with, else the one in ``repo``.
    """
    import lightgbm as lgb

    from feature_repo.domain import load_domain
    from models.dataset import (
        entity_dataframe,
        feature_layout,
        load_events,
        open_store,
        retrieve_training_set,
    )

    package = Path(package)
    manifest = read_manifest(package)
    recorded = str(manifest.training.get("domain_file", ""))
    domain_path = domain or (Path(recorded) if recorded else repo)
    if domain_path is None:
        raise ValueError("no domain file: pass --domain (the domain's folder) or --repo")
    spec = load_domain(domain_path)
    label = spec.label_column
    events_path = events or Path(str(manifest.training.get("events", "")))
    frame_events = load_events(events_path, spec) if events_path.is_file() else None
    store = open_store(repo, yaml) if repo is not None else None
    if training_set is not None:
        frame = pd.read_parquet(training_set)
    elif store is not None and frame_events is not None:
        layout = feature_layout(store, manifest.feature_service)
        frame = retrieve_training_set(
            store,
            manifest.feature_service,
            entity_dataframe(frame_events, spec, request_fields=layout.request_fields),
            spec,
        )
    else:
        raise ValueError(
            "no training set: pass --training-set (python -m models dataset), or --repo with "
            f"the events the package was trained on ({events_path} is not a file)"
        )
    holdout = with_segment_columns(holdout_rows(frame, manifest), frame_events, spec)
    lacking = [f for f in [*manifest.features, label] if f not in holdout.columns]
    if lacking:
        raise ValueError(
            f"the training set lacks {lacking[:5]}: it was not retrieved through "
            f"{manifest.feature_service}"
        )
    if holdout.empty or holdout[label].nunique() < 2:
        raise ValueError(
            "the training set has no holdout rows of both classes in this package's range"
        )
    name = booster_file(manifest)
    if name is None:
        raise ValueError(f"package {package} has no LightGBM model file to score the holdout")
    data = build(
        manifest,
        holdout,
        lgb.Booster(model_file=str(package / name)),
        spec=spec,
        root=package.parent.parent,
        retrieve=(
            retriever(store, frame_events, spec)
            if store is not None and frame_events is not None
            else None
        ),
    )
    return republish(package, manifest, render(data))
