"""Deployments: which model packages are live for a domain, and how each answer is decided.

A deployment is one YAML file (its path is ``SCORING_DEPLOYMENT``) validated by
:class:`DeploymentSpec`:

- ``champion`` and ``challengers`` split the traffic by weight (the weights sum to 1). A request
  is assigned by a hash of one declared request field (``sticky_field``, e.g. the card) and a
  ``salt``, so one customer sees one variant, across calls and restarts; changing the salt
  reshuffles everyone on purpose.
- ``shadows`` are scored on the same requests after the answer is sent, never returned.
- ``fallback`` is an ordered chain used when a variant cannot answer (its model fails, its
  required features are missing or stale beyond its policy, the store is down); the chain ends
  in the service's outage policy.
- ``ensembles`` combine several packages by a declared rule (weighted mean of probabilities, or
  the maximum) with thresholds of their own; a champion, challenger or shadow may name one.
- ``families`` are packages of one FeatureService trained per segment (a request field's value,
  e.g. ``card_country``, or a stored feature's, an entity's code or count) with a default
  member; a champion or challenger may name one, and each row is answered by its segment's
  member (``scoring_service.deployments.family``: loaded on demand within
  ``SCORING_MODEL_MEMORY_MB``), or by the default.
- ``online`` names an online learner (``scoring_service.deployments.online``): the newest sealed
  snapshot of a River model that learns matured labels, scored on its base package's inputs. A
  challenger or shadow may name one, never the champion: a learner always runs beside the batch
  champion, which answers the traffic it does not take.

This module holds the declaration, its static checks (weights, names, cycles) and the pure
functions the request path uses (sticky assignment, the ensemble rule). Loading the packages and
checking them against the live feature store happens in ``scoring_service.deployments.live``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Name = str  # a variant, shadow, fallback step or ensemble name
_WEIGHT_TOLERANCE = 1e-9


class DeploymentInvalid(ValueError):
    """A deployment that cannot go live; the message names the fault."""


def parse_package(reference: str) -> tuple[str, str]:
    """``name/version`` -> (name, version)."""
    name, sep, version = reference.partition("/")
    if not sep or not name or not version or "/" in version:
        raise ValueError(f"{reference!r} is not a package reference of the form name/version")
    return name, version


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScoreSource(_Strict):
    """Something that produces a score: one package, or a declared ensemble."""

    package: str | None = Field(default=None, description="Model package `name/version`.")
    ensemble: Name | None = Field(default=None, description="Name of a declared ensemble.")
    family: Name | None = Field(default=None, description="Name of a declared model family.")
    online: Name | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$",
        description="Name of an online learner (its snapshots under the model root); a "
        "challenger or shadow only.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> ScoreSource:
        given = [
            s for s in (self.package, self.ensemble, self.family, self.online) if s is not None
        ]
        if len(given) != 1:
            raise ValueError("give exactly one of `package`, `ensemble`, `family` or `online`")
        if self.package is not None:
            parse_package(self.package)
        return self

    @property
    def source(self) -> str:
        """The package reference, `ensemble:<name>`, `family:<name>` or `online:<name>`."""
        if self.package is not None:
            return self.package
        if self.online is not None:
            return f"online:{self.online}"
        return f"ensemble:{self.ensemble}" if self.ensemble is not None else f"family:{self.family}"


class Variant(ScoreSource):
    """The champion or a challenger: answers a share of the traffic."""

    name: Name = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_.\-]*$")
    weight: float = Field(ge=0.0, le=1.0, description="Share of the traffic (sums to 1).")
    required_views: list[str] = Field(
        default_factory=list,
        description="Feature views whose row must be present (not missing, not past its TTL) "
        "for this variant to answer; otherwise the fallback chain answers.",
    )


class Shadow(ScoreSource):
    """Scored on live traffic after the answer; compared with the champion, never returned."""

    name: Name = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_.\-]*$")


class FallbackStep(_Strict):
    """One step of the fallback chain: a package (e.g. request-time features only)."""

    name: Name = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_.\-]*$")
    package: str
    required_views: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _reference(self) -> FallbackStep:
        parse_package(self.package)
        return self


class EnsembleMember(_Strict):
    package: str
    weight: float = Field(default=1.0, gt=0.0)

    @model_validator(mode="after")
    def _reference(self) -> EnsembleMember:
        parse_package(self.package)
        return self


class Ensemble(_Strict):
    """Several packages combined by a declared rule, with thresholds of their own."""

    members: list[EnsembleMember] = Field(min_length=2)
    rule: Literal["weighted_mean", "max"] = "weighted_mean"
    thresholds: dict[str, float] = Field(
        description="Label -> score cut-off for the combined score (labels of the domain)."
    )

    @model_validator(mode="after")
    def _sane(self) -> Ensemble:
        packages = [m.package for m in self.members]
        if len(set(packages)) != len(packages):
            raise ValueError("an ensemble lists the same package twice")
        if any(not 0.0 <= c <= 1.0 for c in self.thresholds.values()):
            raise ValueError("ensemble thresholds must lie in [0, 1]")
        # That they rise with the label's risk is checked against the domain's labels on loading.
        return self


class Family(_Strict):
    """Packages of one FeatureService trained per segment, and the default for the others
    (``python -m models train --family-by <field>`` writes this entry)."""

    segment_field: str | None = Field(
        default=None, description="Request field whose value picks the member."
    )
    segment_feature: str | None = Field(
        default=None,
        description="Stored feature the default reads (an entity's code or count) whose value "
        "picks the member, instead of a request field.",
    )
    default: str = Field(description="Package answering segments without a member of their own.")
    members: dict[str, str] = Field(
        default_factory=dict, description="Segment value -> member package `name/version`."
    )

    @model_validator(mode="after")
    def _references(self) -> Family:
        if (self.segment_field is None) == (self.segment_feature is None):
            raise ValueError("a family names one of segment_field and segment_feature")
        parse_package(self.default)
        for package in self.members.values():
            parse_package(package)
        if self.default in self.members.values():
            raise ValueError("the default member is also a segment's member")
        return self

    @property
    def segment(self) -> str:
        """The request field or stored feature whose value picks the member."""
        return self.segment_field or self.segment_feature  # type: ignore[return-value]


class DeploymentSpec(_Strict):
    """A deployment file."""

    name: str = Field(min_length=1, description="What this deployment is, for the history.")
    description: str = ""
    sticky_field: str = Field(description="Request field whose hash assigns the variant.")
    salt: str = Field(default="", description="Mixed into the hash; change it to reshuffle.")
    champion: Variant
    challengers: list[Variant] = Field(default_factory=list)
    shadows: list[Shadow] = Field(default_factory=list)
    fallback: list[FallbackStep] = Field(default_factory=list)
    ensembles: dict[Name, Ensemble] = Field(default_factory=dict)
    families: dict[Name, Family] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> DeploymentSpec:
        variants: list[Variant] = [self.champion, *self.challengers]
        total = sum(v.weight for v in variants)
        if abs(total - 1.0) > _WEIGHT_TOLERANCE:
            raise ValueError(
                f"traffic weights of the champion and challengers sum to {total:g}, not 1"
            )
        names = [v.name for v in variants] + [s.name for s in self.shadows]
        names += [f.name for f in self.fallback]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"names must be unique; repeated: {duplicated}")
        scorers: list[Variant | Shadow] = [*variants, *self.shadows]
        for item in scorers:
            if item.ensemble is not None and item.ensemble not in self.ensembles:
                raise ValueError(f"{item.name} names an ensemble {item.ensemble!r} not declared")
            if item.family is not None and item.family not in self.families:
                raise ValueError(f"{item.name} names a family {item.family!r} not declared")
        if self.champion.online is not None:
            raise ValueError(
                f"champion {self.champion.name} names online learner {self.champion.online!r}: "
                "a learner runs beside the batch champion, as a challenger or a shadow, never "
                "as the champion"
            )
        for shadow in self.shadows:
            if shadow.family is not None:
                raise ValueError(f"shadow {shadow.name}: a family answers variants, not shadows")
        chain = [f.package for f in self.fallback]
        repeated = sorted({p for p in chain if chain.count(p) > 1})
        if repeated:
            raise ValueError(f"fallback cycle: {repeated[0]} appears twice in the chain")
        for variant in variants:
            if variant.package in chain:
                raise ValueError(
                    f"fallback cycle: variant {variant.name} ({variant.package}) falls back to "
                    "itself"
                )
        return self

    @property
    def variants(self) -> list[Variant]:
        """Champion first, then the challengers."""
        return [self.champion, *self.challengers]

    def online_learners(self) -> list[str]:
        """The online learners named by challengers and shadows, each once."""
        named = [v.online for v in self.challengers] + [s.online for s in self.shadows]
        return list(dict.fromkeys(n for n in named if n is not None))

    def packages(self) -> list[str]:
        """Every package the deployment loads at start, each once, in a stable order (a
        family's default; its members load on demand; an online learner's base package is
        read from its snapshot, ``LiveDeployment.load``)."""
        refs = [v.package for v in self.variants if v.package]
        refs += [s.package for s in self.shadows if s.package]
        refs += [f.package for f in self.fallback]
        refs += [m.package for e in self.ensembles.values() for m in e.members]
        refs += [self.families[v.family].default for v in self.variants if v.family]
        return list(dict.fromkeys(refs))


def load_deployment(path: Path) -> DeploymentSpec:
    """Read and validate a deployment file; DeploymentInvalid naming the fault."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise DeploymentInvalid(f"deployment file {path} cannot be read: {exc}") from exc
    except yaml.YAMLError as exc:
        raise DeploymentInvalid(f"deployment file {path} is not valid YAML: {exc}") from exc
    return parse_deployment(data, source=str(path))


def parse_deployment(data: object, source: str = "deployment") -> DeploymentSpec:
    """Validate a deployment given as data; DeploymentInvalid naming the fault."""
    try:
        return DeploymentSpec.model_validate(data)
    except ValidationError as exc:
        faults = []
        for error in exc.errors()[:5]:
            where = ".".join(str(p) for p in error.get("loc", ()))
            message = str(error.get("msg", "is invalid")).removeprefix("Value error, ")
            faults.append(f"{where}: {message}" if where else message)
        raise DeploymentInvalid(f"{source} is invalid: " + "; ".join(faults)) from exc


def single_model(package: str, sticky_field: str) -> DeploymentSpec:
    """The deployment of one package answering everything (the default)."""
    return DeploymentSpec(
        name=f"{package} alone",
        sticky_field=sticky_field,
        champion=Variant(name="champion", package=package, weight=1.0),
    )


# --- the pure functions of the request path ----------------------------------------------------


def bucket(values: Sequence[object], salt: str) -> np.ndarray:
    """A uniform number in [0, 1) per value: blake2b of salt and value (stable across runs)."""
    prefix = salt.encode() + b"\0"
    out = np.empty(len(values), dtype=np.float64)
    for i, value in enumerate(values):
        digest = hashlib.blake2b(prefix + str(value).encode(), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "big") / 2.0**64
    return out


def assign(values: Sequence[object], weights: Sequence[float], salt: str) -> np.ndarray:
    """Index of the variant of each value, by cumulative weights (sticky by value and salt).

    A missing value (None) goes to the first variant, the champion.
    """
    edges = np.cumsum(np.asarray(weights, dtype=np.float64))
    edges[-1] = 1.0  # no value falls past the last variant through rounding
    chosen = np.searchsorted(edges, bucket(values, salt), side="right")
    missing = np.fromiter((v is None for v in values), dtype=bool, count=len(values))
    chosen[missing] = 0
    return chosen.astype(np.int64)


def combine(rule: str, scores: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """The ensemble's score per row from its members' scores ``[n, members]``.

    NaN (a member without an answer) makes the combined score NaN: an ensemble answers with all
    of its members or not at all, and its variant then falls back.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if rule == "max":
        return scores.max(axis=1)
    w = np.asarray(weights, dtype=np.float64)
    return scores @ (w / w.sum())
