"""The manifest schema: what a model package says about how to serve it.

A package lives in ``<root>/<name>/<version>/`` and holds ``manifest.json`` and the graph files
it names. The manifest is the contract between training and serving: which FeatureService the
model reads, the order of its input vector, how a business request maps to entity keys, the
label thresholds and the "uncertain" policy, plus evaluation results, drift baselines, library
versions and the sha256 of every artefact (checked by ``models.package.seal``).
"""

from __future__ import annotations

import json
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

MANIFEST_FILE = "manifest.json"
# 2: on-demand functions live in the feature repository (feature_repo.<domain>.transforms) and
# views say whether they are evidence of their entity. 3: the domain and its label vocabulary
# (thresholds per label), optional entities. Older packages are refused with a message.
SCHEMA_VERSION = 3


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
    evidence: bool = Field(
        default=True,
        description="Whether a missing row makes the entity unknown (False: optional evidence, "
        "e.g. streaming windows of a quiet entity).",
    )


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
    """Score cut-offs, one per label above the lowest, in rising order of risk.

    Each label of the domain but the lowest is a field named after it, e.g.
    ``{"manual_review": 0.31, "decline": 0.62, "rule": "..."}``. A score at or above a label's
    cut-off gets that label (the riskiest one reached); below every cut-off, the lowest label.
    """

    # Labels are the domain's vocabulary, so they are extra fields (checked below).
    model_config = ConfigDict(extra="allow")

    rule: str = Field(default="", description="How the thresholds were chosen.")

    if TYPE_CHECKING:  # a label's cut-off reads as an attribute

        def __getattr__(self, name: str) -> float: ...

    @model_validator(mode="before")
    @classmethod
    def _numbers(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name, value in data.items():
            if name == "rule":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"threshold of label {name!r} must be a number, not {value!r}")
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"threshold of label {name!r} must be within [0, 1]")
            out[name] = float(value)
        return out

    @model_validator(mode="after")
    def _ordered(self) -> LabelThresholds:
        cutoffs = list(self.cutoffs.items())
        if not cutoffs:
            raise ValueError("thresholds need at least one label above the lowest")
        for (lower, low), (higher, high) in pairwise(cutoffs):
            if low > high:
                raise ValueError(
                    f"the {lower} threshold must not exceed the {higher} threshold ({low} > {high})"
                )
        return self

    @property
    def cutoffs(self) -> dict[str, float]:
        """Label -> cut-off, lowest risk first."""
        return dict(self.__pydantic_extra__ or {})

    def ranks(self, scores: np.ndarray) -> np.ndarray:
        """Per score, the rank of its label: 0 for the lowest label, i for the i-th cut-off."""
        edges = np.asarray(list(self.cutoffs.values()), dtype=np.float64)
        return np.searchsorted(edges, np.asarray(scores, dtype=np.float64), side="right")


class UncertainPolicy(BaseModel):
    """When the evidence is too thin to give a normal label.

    An entity is *unknown* when the online store has no row for it, or (when
    ``stale_counts_as_unknown``) when its row is older than the feature view's TTL. Optional
    entities (evidence most requests lack, e.g. a bureau's history) never count as unknown.
    """

    model_config = ConfigDict(extra="forbid")

    max_unknown_entities: int = Field(
        default=1, ge=0, description="More unknown entities than this gives `uncertain`."
    )
    required_entities: list[str] = Field(
        default_factory=list, description="Join keys that must be known, else `uncertain`."
    )
    optional_entities: list[str] = Field(
        default_factory=list,
        description="Join keys whose absence is reported as a reason but never counted.",
    )
    stale_counts_as_unknown: bool = True
    report_label_at_or_above: str = Field(
        default="never",
        description="A score reaching this label is reported even on thin evidence (a model "
        "alarm is worth acting on even when some entities are new); `never`: always uncertain.",
    )


class FeatureBaseline(BaseModel):
    """Distribution of one model input on the training split, for drift checks.

    Bins are ``(-inf, e0), [e0, e1), ..., [e_last, inf)`` over the distinct quantile edges
    ``e``; ``proportions`` are the shares of the non-missing training values in each bin
    (counted, not assumed: a discrete feature piles up at its edges), and ``missing_rate`` the
    share of NaN. ``models.package.baselines`` computes them and bins served values the same way.
    """

    model_config = ConfigDict(extra="forbid")

    edges: list[float] = Field(description="Distinct, ascending inner bin edges.")
    proportions: list[float] = Field(description="Share of non-missing values per bin.")
    missing_rate: float = Field(ge=0.0, le=1.0)
    n_rows: int = Field(ge=0, description="Training rows the baseline was computed on.")

    @model_validator(mode="after")
    def _bins(self) -> FeatureBaseline:
        if len(self.proportions) != len(self.edges) + 1:
            raise ValueError("a baseline needs one proportion more than it has edges")
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError("baseline edges must be strictly ascending")
        return self


class Manifest(BaseModel):
    """Everything the scoring service needs to serve a model, and to refuse a wrong one."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    schema_version: int = Field(
        default=SCHEMA_VERSION, description="Package format version; older ones are refused."
    )
    name: str
    version: str
    created_at: datetime
    domain: str = Field(description="Domain the model serves (the `name` of its domain.yaml).")
    labels: list[str] = Field(min_length=2, description="Label vocabulary, lowest risk first.")
    uncertain_label: str = Field(default="uncertain", description="Label of thin evidence.")
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
    feature_baselines: dict[str, FeatureBaseline] = Field(
        default_factory=dict,
        description="Per-input distribution on the training split (empty in older packages).",
    )
    baseline_score_bins: FeatureBaseline | None = Field(
        default=None,
        description="Holdout scores binned and counted, for score PSI (older packages: None, "
        "and the quantiles of baseline_score_distribution serve).",
    )
    training: dict[str, object] = Field(default_factory=dict)
    library_versions: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if self.schema_version != SCHEMA_VERSION:
            raise ValueError(
                f"package format {self.schema_version} is not the format this code reads "
                f"({SCHEMA_VERSION}); retrain the model with `models train` to rebuild it"
            )
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
        if list(self.label_thresholds.cutoffs) != self.labels[1:]:
            raise ValueError(
                f"label thresholds {list(self.label_thresholds.cutoffs)} must name the labels "
                f"above the lowest, lowest risk first: {self.labels[1:]}"
            )
        if self.uncertain_label in self.labels:
            raise ValueError(f"uncertain label {self.uncertain_label!r} is also a label")
        floor = self.uncertain_policy.report_label_at_or_above
        if floor != "never" and floor not in self.labels[1:]:
            raise ValueError(
                f"report_label_at_or_above {floor!r} must be `never` or one of {self.labels[1:]}"
            )
        policy = self.uncertain_policy
        named = set(policy.required_entities) | set(policy.optional_entities)
        strangers = named - set(self.entity_mapping.values())
        if strangers:
            raise ValueError(f"uncertain policy names unmapped join key(s) {sorted(strangers)}")
        return self

    @property
    def stored_features(self) -> list[str]:
        """Features read from the online store, in model order."""
        return [f for fv in self.feature_views.values() for f in fv.features]

    @property
    def on_demand_features(self) -> list[str]:
        """Features computed per request by on-demand views, in model order."""
        return [f for view in self.on_demand_views.values() for f in view.features]


def package_dir(root: Path, name: str, version: str) -> Path:
    """Folder of one package version."""
    return Path(root) / name / version


def read_manifest(path: Path) -> Manifest:
    """Parse and validate a package's manifest (no checksum verification)."""
    return Manifest.model_validate(json.loads((Path(path) / MANIFEST_FILE).read_text()))
