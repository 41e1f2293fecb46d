"""Versioned model packages: the ONNX graph(s) plus a manifest that says how to serve them.

A package lives in ``<root>/<name>/<version>/`` and holds ``manifest.json`` and the graph files
it names. The manifest is the contract between training and serving: which FeatureService the
model reads, the order of its input vector, how a business request maps to entity keys, the
label thresholds and the "uncertain" policy, plus evaluation results, library versions and the
sha256 of every artefact so a damaged package is refused before it serves.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MANIFEST_FILE = "manifest.json"
SCHEMA_VERSION = 1


class GraphInfo(BaseModel):
    """One ONNX graph of the package."""

    model_config = ConfigDict(extra="forbid")

    file: str = Field(description="File name inside the package folder.")
    sha256: str = Field(description="Hex sha256 of the file.")
    input_name: str = "features"
    output_name: str = "probabilities"
    kind: Literal["tree_ensemble", "standard_ops"] = Field(
        description="tree_ensemble: ai.onnx.ml TreeEnsemble (CPU); standard_ops: default-domain "
        "operators that the CUDA execution provider runs."
    )


class FeatureViewInfo(BaseModel):
    """A feature view read by the model, as it was when the model was trained."""

    model_config = ConfigDict(extra="forbid")

    join_key: str
    ttl_seconds: int | None
    features: list[str]


class OnDemandViewInfo(BaseModel):
    """An on-demand feature view read by the model: its inputs, outputs and code."""

    model_config = ConfigDict(extra="forbid")

    request_fields: list[str] = Field(description="Request fields of its request sources.")
    source_views: list[str] = Field(description="Feature views it reads.")
    stored_inputs: list[str] = Field(description="Stored features its function reads.")
    features: list[str] = Field(description="Outputs the model reads, in model order.")
    function: str = Field(description="`module:function` computing it in training and serving.")
    code_sha256: str = Field(description="sha256 of the function's source at training time.")


class LabelThresholds(BaseModel):
    """Score cut-offs; a score >= a threshold gets that label (the highest one reached)."""

    model_config = ConfigDict(extra="forbid")

    suspicious: float = Field(ge=0.0, le=1.0)
    highly_suspicious: float = Field(ge=0.0, le=1.0)
    rule: str = Field(default="", description="How the thresholds were chosen.")

    @model_validator(mode="after")
    def _ordered(self) -> LabelThresholds:
        if self.suspicious > self.highly_suspicious:
            raise ValueError("suspicious threshold must not exceed highly_suspicious threshold")
        return self


class UncertainPolicy(BaseModel):
    """When the evidence is too thin to give a normal label.

    An entity is *unknown* when the online store has no row for it, or (when
    ``stale_counts_as_unknown``) when its row is older than the feature view's TTL.
    """

    model_config = ConfigDict(extra="forbid")

    max_unknown_entities: int = Field(
        default=1, ge=0, description="More unknown entities than this gives `uncertain`."
    )
    required_entities: list[str] = Field(
        default_factory=list, description="Join keys that must be known, else `uncertain`."
    )
    stale_counts_as_unknown: bool = True
    report_label_at_or_above: Literal["suspicious", "highly_suspicious", "never"] = Field(
        default="highly_suspicious",
        description="A score reaching this label is reported even on thin evidence: a model "
        "alarm is worth acting on even when some entities are new.",
    )


class Manifest(BaseModel):
    """Everything the scoring service needs to serve a model, and to refuse a wrong one."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    schema_version: int = SCHEMA_VERSION
    name: str
    version: str
    created_at: datetime
    feature_service: str = Field(description="Feast FeatureService the model reads.")
    features: list[str] = Field(
        description="Ordered model input: stored, then on-demand, then request features."
    )
    feature_views: dict[str, FeatureViewInfo]
    on_demand_views: dict[str, OnDemandViewInfo] = Field(
        default_factory=dict, description="On-demand feature views, in model order."
    )
    request_features: list[str] = Field(
        default_factory=list, description="Request fields used as model inputs, in order."
    )
    entity_mapping: dict[str, str] = Field(description="Business request field -> Feast join key.")
    label_thresholds: LabelThresholds
    uncertain_policy: UncertainPolicy = Field(default_factory=UncertainPolicy)
    graphs: dict[str, GraphInfo] = Field(description="'cpu' (required) and 'gpu' graphs.")
    artefacts: dict[str, str] = Field(
        default_factory=dict,
        description="Other files of the package (e.g. the LightGBM model text) -> sha256.",
    )
    metrics: dict[str, dict[str, float | int | str | None]] = Field(default_factory=dict)
    baseline_score_distribution: dict[str, float] = Field(default_factory=dict)
    training: dict[str, object] = Field(default_factory=dict)
    library_versions: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        stored = [f for fv in self.feature_views.values() for f in fv.features]
        if self.features != stored + self.on_demand_features + self.request_features:
            raise ValueError(
                "features must be the feature views' features in order, then the on-demand "
                "views' features, then the request features"
            )
        if "cpu" not in self.graphs:
            raise ValueError("a package needs a 'cpu' graph")
        join_keys = {fv.join_key for fv in self.feature_views.values()}
        unmapped = join_keys - set(self.entity_mapping.values())
        if unmapped:
            raise ValueError(f"no request field maps to join key(s) {sorted(unmapped)}")
        return self

    @property
    def stored_features(self) -> list[str]:
        """Features read from the online store, in model order."""
        return [f for fv in self.feature_views.values() for f in fv.features]

    @property
    def on_demand_features(self) -> list[str]:
        """Features computed per request by on-demand views, in model order."""
        return [f for view in self.on_demand_views.values() for f in view.features]


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checksums(manifest: Manifest) -> dict[str, str]:
    """Every file of a package with its expected sha256."""
    out = {graph.file: graph.sha256 for graph in manifest.graphs.values()}
    out.update(manifest.artefacts)
    return out


def sha256_bytes(payload: bytes) -> str:
    """Hex sha256 of bytes in memory."""
    return hashlib.sha256(payload).hexdigest()


def package_dir(root: Path, name: str, version: str) -> Path:
    """Folder of one package version."""
    return Path(root) / name / version


def write_package(root: Path, manifest: Manifest, files: dict[str, bytes]) -> Path:
    """Write graphs and manifest to a temporary folder, then move it into place atomically.

    A reader never sees a half-written package: either the old version folder or the new one.
    """
    target = package_dir(root, manifest.name, manifest.version)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{manifest.version}.", dir=target.parent))
    try:
        for file_name, payload in files.items():
            (staging / file_name).write_bytes(payload)
        for file_name, expected in checksums(manifest).items():
            if sha256_file(staging / file_name) != expected:
                raise ValueError(f"checksum of {file_name} changed while writing the package")
        (staging / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2) + "\n")
        if target.exists():
            backup = target.with_name(f".{manifest.version}.replaced")
            shutil.rmtree(backup, ignore_errors=True)
            os.replace(target, backup)
            os.replace(staging, target)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def read_manifest(path: Path) -> Manifest:
    """Parse and validate a package's manifest (no checksum verification)."""
    return Manifest.model_validate(json.loads((Path(path) / MANIFEST_FILE).read_text()))
