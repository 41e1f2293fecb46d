"""What the training report reads: the holdout rows, their segment columns, and the scorers it
compares the model with (the previous version of the same model, scored on the same rows).

The holdout is the manifest's (``holdout_from`` to the end of the data range the package was
trained on), so a regenerated report scores the rows that training measured.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from feature_repo.domain import DomainSpec
from models.package import MANIFEST_FILE, Manifest, read_manifest

logger = logging.getLogger(__name__)

# (feature service, holdout rows) -> a point-in-time frame of that service, in the rows' order.
Retrieve = Callable[[str, pd.DataFrame], pd.DataFrame]


@dataclass
class Comparison:
    """Another scorer of the same holdout rows: the rules baseline, the previous version."""

    name: str
    scores: np.ndarray


def holdout_rows(frame: pd.DataFrame, manifest: Manifest) -> pd.DataFrame:
    """The manifest's holdout split of a training set: rows from ``holdout_from`` to the end
    of the data range it was trained on."""
    times = pd.to_datetime(frame["event_timestamp"], utc=True)
    start = pd.Timestamp(str(manifest.training["holdout_from"]))
    mask = times >= start
    data_range = manifest.training.get("data_range")
    if isinstance(data_range, list) and len(data_range) == 2:
        mask &= times <= pd.Timestamp(str(data_range[1]))
    return frame[mask].reset_index(drop=True)


def with_segment_columns(
    frame: pd.DataFrame, events: pd.DataFrame | None, spec: DomainSpec
) -> pd.DataFrame:
    """The frame plus the events' own columns it lacks (request fields, evaluation-only
    columns...), joined on the business id."""
    key = spec.business_id
    if events is None or key not in frame.columns:
        return frame
    extra = [c for c in events.columns if c not in frame.columns]
    if not extra:
        return frame
    joined = frame.merge(events[[key, *extra]], on=key, how="left", validate="1:1")
    return joined


def retriever(store, events: pd.DataFrame, spec: DomainSpec) -> Retrieve:
    """Point-in-time features of another feature service for given holdout rows, in their
    order (to score the previous version when it reads inputs this one does not)."""
    from models.dataset import entity_dataframe, feature_layout, retrieve_training_set

    key = spec.business_id

    def retrieve(feature_service: str, rows: pd.DataFrame) -> pd.DataFrame:
        wanted = events[events[key].isin(rows[key])]
        layout = feature_layout(store, feature_service)
        frame = retrieve_training_set(
            store,
            feature_service,
            entity_dataframe(wanted, spec, request_fields=layout.request_fields),
            spec,
        )
        return rows[[key]].merge(frame, on=key, how="left")

    return retrieve


def find_previous(root: Path, manifest: Manifest) -> tuple[Path, Manifest] | None:
    """The latest other version of the same model created before this one, if any."""
    best: tuple[Path, Manifest] | None = None
    for candidate in sorted((Path(root) / manifest.name).glob(f"*/{MANIFEST_FILE}")):
        folder = candidate.parent
        if folder.name == manifest.version or folder.name.startswith("."):
            continue
        try:
            other = read_manifest(folder)
        except (ValueError, OSError) as exc:
            logger.warning("skipping %s for the report's comparison: %s", folder, exc)
            continue
        if other.created_at >= manifest.created_at:
            continue
        if best is None or other.created_at > best[1].created_at:
            best = (folder, other)
    return best


def booster_file(manifest: Manifest) -> str | None:
    """The LightGBM model text among a package's artefacts."""
    return next((name for name in manifest.artefacts if name.endswith(".lgb.txt")), None)


def previous_comparison(
    root: Path,
    manifest: Manifest,
    holdout: pd.DataFrame,
    retrieve: Retrieve | None = None,
) -> tuple[Comparison | None, str | None]:
    """The previous version's scores on these holdout rows, or a note saying why there are none.

    Its inputs come from the holdout frame when it has them all, else from ``retrieve``
    (feature service, holdout rows) -> a point-in-time frame in the same row order.
    """
    import lightgbm as lgb

    found = find_previous(root, manifest)
    if found is None:
        return None, None
    folder, other = found
    label = f"previous {other.name}/{other.version}"
    booster_name = booster_file(other)
    if booster_name is None or not (folder / booster_name).is_file():
        return None, f"{label} has no LightGBM model file; not compared."
    frame = holdout
    lacking = [f for f in other.features if f not in frame.columns]
    if lacking and retrieve is not None:
        try:
            frame = retrieve(other.feature_service, holdout)
        except Exception as exc:  # a feature service gone from the registry, for one
            return None, f"{label}: its features could not be retrieved ({exc}); not compared."
        lacking = [f for f in other.features if f not in frame.columns]
    if lacking:
        return None, f"{label} reads inputs this training set lacks ({lacking[:3]}...)."
    booster = lgb.Booster(model_file=str(folder / booster_name))
    matrix = frame[other.features].to_numpy(dtype=np.float32, na_value=np.nan)
    scores = np.asarray(booster.predict(matrix.astype(np.float64)), dtype=np.float64)
    return Comparison(label, scores), None
