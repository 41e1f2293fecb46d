"""A live deployment: its packages loaded and checked, and how one micro-batch is answered.

``LiveDeployment.load`` turns a :class:`~scoring_service.deployments.spec.DeploymentSpec` into
loaded
packages and refuses it, naming the fault, unless every package loads (seal, checksums, graphs),
its CPU and GPU graphs agree on planted rows, its features are in the live feature store, the
ensembles' members read the same entities, thresholds rise with the labels, and the sticky field
is a request field. Nothing changes for the live deployment until all of that holds.

One feature read serves every model of a request: the reader reads the union of the views of
all the deployment's models (``layout``), and each model takes its columns from it. Per row:

1. the sticky hash assigns the champion or a challenger;
2. the variant answers unless it cannot: its model fails, its score is not a number, a view it
   requires is missing or stale for the row, or the store could not be read at all;
3. rows it cannot answer go down the fallback chain, step by step; each answer says which
   variant or step decided and, for a fallback, why;
4. rows no step can answer get the uncertain label (``no_model_answer``); when the store was
   down and no step could answer without it, the outage policy answers instead (the caller
   re-raises the store error).

Shadows are scored afterwards, on the same feature batch, by ``ShadowRunner`` (off the answer's
path, through a bounded queue that drops first under load).

A challenger or shadow may be an online learner (``scoring_service.deployments.online``): the
newest snapshot of a River model, scored on its base package's input matrix (the base package
is loaded with the deployment's other packages); each answer names the snapshot that gave it.

A variant may be a model family (``scoring_service.deployments.family``): its rows are split by
their segment's member, one model call per member, and each answer names the member package
that gave it (or the default, with the reason when the segment's member is loading or refused).

Why one module of this length: the checks of ``LiveDeployment.load`` establish exactly the
invariants the per-batch answering relies on (every model's columns in the read layout, ensemble
members on the same entities, thresholds rising), so the two stay side by side.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
from feast import FeatureStore

from feature_repo.layout import ViewSpec
from feature_repo.online import MISSING, PRESENT, FeatureBatch, StoreLayout
from feature_repo.transforms import model_input
from models.package import LabelThresholds, OnDemandViewInfo, package_dir, segment_key
from scoring_service.core import metrics
from scoring_service.core.errors import ModelPackageInvalid
from scoring_service.deployments.family import FamilyMembers
from scoring_service.deployments.online import OnlineLearnerError, OnlineScorer, read_base_package
from scoring_service.deployments.packages import LoadedModel, load_package
from scoring_service.deployments.spec import (
    DeploymentInvalid,
    DeploymentSpec,
    Ensemble,
    assign,
    combine,
    parse_package,
)
from scoring_service.monitoring.answers import member_input_names
from scoring_service.monitoring.drift import DriftMonitor, ViewWatch
from scoring_service.stages.labels import LabelPolicy
from scoring_service.stages.mapping import MappedRequests

logger = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-5
FALLBACK_MODEL_ERROR = "fallback_model_error"
FALLBACK_FEATURES = "fallback_required_features_unavailable"
FALLBACK_STORE = "fallback_feature_store_unavailable"


@dataclass(frozen=True)
class MappingPlan:
    """What ``map_records`` needs, for the union of the deployment's models."""

    name: str
    version: str
    entity_mapping: dict[str, str]
    request_features: list[str]
    on_demand_views: dict[str, OnDemandViewInfo]


class ModelView:
    """One loaded package reading its columns out of the deployment's union feature batch."""

    def __init__(self, model: LoadedModel, union: StoreLayout, request_features: list[str]):
        self.model = model
        self.label = model.version_label
        offsets = {v.name: v for v in union.views}
        cols: list[int] = []
        for view in model.layout.views:
            at = offsets[view.name].offset
            cols.extend(range(at, at + len(view.features)))
        self.columns = np.array(cols, dtype=np.intp)
        self.join_keys = list(dict.fromkeys(v.join_key for v in model.layout.views))
        self.views = [v.name for v in model.layout.views]
        index = {name: i for i, name in enumerate(request_features)}
        self.request_columns = np.array(
            [index[name] for name in model.manifest.request_features], dtype=np.intp
        )

    @property
    def reads_store(self) -> bool:
        return bool(self.views)

    def matrix(self, batch: FeatureBatch, mapped: MappedRequests, rows: np.ndarray) -> np.ndarray:
        """The model's input matrix for the given rows."""
        every = len(rows) == len(batch.values)  # every row of the batch (rows are sorted)
        values = batch.values
        stored = values[:, self.columns] if every else values[np.ix_(rows, self.columns)]
        on_demand = self.model.on_demand
        computed = None
        if on_demand.width:
            request = (
                mapped.request_fields
                if every
                else {name: [v[i] for i in rows] for name, v in mapped.request_fields.items()}
            )
            computed = on_demand.compute(stored, request)
        asked = mapped.request_values
        request_values = (
            asked[:, self.request_columns] if every else asked[np.ix_(rows, self.request_columns)]
        )
        return model_input(stored, computed, request_values)

    def score(
        self, batch: FeatureBatch, mapped: MappedRequests, rows: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities for the rows and the input matrix (raises what the session raises)."""
        matrix = self.matrix(batch, mapped, rows)
        return np.asarray(self.model.predictor.predict(matrix), dtype=np.float64), matrix


class OnlineView(ModelView):
    """An online learner on its base package's inputs: the base package's matrix, the
    learner's probabilities."""

    def __init__(
        self,
        base: LoadedModel,
        union: StoreLayout,
        request_features: list[str],
        scorer: OnlineScorer,
    ) -> None:
        super().__init__(base, union, request_features)
        self.scorer = scorer
        self.label = f"online:{scorer.name}"

    def score(
        self, batch: FeatureBatch, mapped: MappedRequests, rows: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        matrix = self.matrix(batch, mapped, rows)
        return self.scorer.predict(matrix), matrix


@dataclass
class LiveVariant:
    """A variant, shadow or fallback step: one model, or an ensemble of several."""

    name: str
    kind: str  # champion, challenger, shadow, fallback
    members: list[ModelView]
    weights: list[float]
    rule: str
    policy: LabelPolicy
    required_views: list[str] = field(default_factory=list)
    model_version: str = ""
    family: FamilyMembers | None = None  # a family variant: its members (members[0]: default)
    online: OnlineScorer | None = None  # an online learner's variant: its newest snapshot
    # The names of ``explained`` rows: the package's inputs, or each member's for an ensemble.
    input_names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        if len(self.members) == 1:
            self.input_names = tuple(self.members[0].model.manifest.features)
            return
        total = float(sum(self.weights))
        self.input_names = member_input_names(
            [
                (m.label, None if self.rule == "max" else w / total, m.model.manifest.features)
                for m, w in zip(self.members, self.weights, strict=True)
            ]
        )

    def scores(
        self, batch: FeatureBatch, mapped: MappedRequests, rows: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Scores of the rows, and the input matrix red flags read (an ensemble's: none)."""
        scores, matrix, _ = self.explained_scores(batch, mapped, rows)
        return scores, matrix

    def explained_scores(
        self, batch: FeatureBatch, mapped: MappedRequests, rows: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``scores``, and the rows an explanation reads (named by ``input_names``): the
        package's input matrix, or an ensemble's members' matrices side by side."""
        if len(self.members) == 1:
            scores, matrix = self.members[0].score(batch, mapped, rows)
            return scores, matrix, matrix
        parts = [m.score(batch, mapped, rows) for m in self.members]
        each = np.column_stack([p[0] for p in parts])
        combined = combine(self.rule, each, self.weights)
        explained = np.hstack([p[1] for p in parts])
        return combined, np.empty((len(rows), 0), np.float32), explained

    @property
    def reads_store(self) -> bool:
        return any(m.reads_store for m in self.members)

    def unavailable(self, batch: FeatureBatch, rows: np.ndarray) -> np.ndarray:
        """Rows whose required views are not present (missing, stale or not read)."""
        out = np.zeros(len(rows), dtype=bool)
        for view in self.required_views:
            status = batch.view_status.get(view)
            if status is None:
                out[:] = True
            else:
                out |= status[rows] != PRESENT
        return out


@dataclass
class Answered:
    """The answers of n rows, column by column."""

    scores: np.ndarray  # NaN: no model answered
    labels: list[str]
    reasons: list[list[str]]
    variants: list[str]
    model_versions: list[str]
    matrices: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    # Per row, the input row of the package that decided it (None: no model answered) and its
    # names (``LiveVariant.input_names``), for the prediction log and explanations.
    inputs: list[np.ndarray | None] = field(default_factory=list)
    input_names: list[tuple[str, ...]] = field(default_factory=list)


class LiveDeployment:
    """A validated deployment with its packages open."""

    def __init__(
        self,
        spec: DeploymentSpec,
        variants: list[LiveVariant],
        shadows: list[LiveVariant],
        fallback: list[LiveVariant],
        layout: StoreLayout,
        plan: MappingPlan,
        models: dict[str, LoadedModel],
    ) -> None:
        self.spec = spec
        self.variants = variants
        self.shadows = shadows
        self.fallback = fallback
        self.layout = layout
        self.plan = plan
        self.models = models
        self.weights = [v.weight for v in spec.variants]
        self.champion = variants[0]
        self._requests = {
            s.name: metrics.VARIANT_REQUESTS.labels(s.name, s.model_version)
            for s in [*variants, *fallback]
        }
        self._scores = {
            s.name: metrics.VARIANT_SCORES.labels(s.name, s.model_version)
            for s in [*variants, *fallback]
        }
        self._seconds = {
            s.name: metrics.VARIANT_SECONDS.labels(s.name) for s in [*variants, *fallback]
        }
        # Drift per package that answers (variants and fallback steps of one model): its inputs
        # and scores over the rows it answered. The champion's monitor also keeps the feature
        # views' freshness, over the rows it answered (most of the traffic).
        self.drift: dict[str, DriftMonitor] = {}
        for step in [*variants, *fallback]:
            if len(step.members) != 1 or step.model_version in self.drift:
                continue
            model = step.members[0].model
            if step.online is not None:  # its inputs are the base package's; no score baseline
                self.drift[step.model_version] = DriftMonitor(
                    step.model_version,
                    model.manifest.features,
                    model.manifest.feature_baselines,
                    None,
                    [],
                )
                continue
            watched = (
                [
                    ViewWatch(v.name, v.join_key, v.ttl_seconds, v.evidence)
                    for v in model.layout.views
                ]
                if step is self.champion
                else []
            )
            self.drift[step.model_version] = DriftMonitor.for_manifest(model.manifest, watched)

    # --- loading and validation ----------------------------------------------------------------

    @classmethod
    def load(
        cls,
        spec: DeploymentSpec,
        root: str,
        store: FeatureStore,
        *,
        request_fields: Sequence[str] | None = None,
        model_memory_mb: float | None = None,
        model_admission: str = "frequency",
        **load_options: object,
    ) -> LiveDeployment:
        """Open and check every package (a family's default; its members load on demand,
        their graphs within ``model_memory_mb``, admitted by ``model_admission``);
        DeploymentInvalid naming the first fault."""
        models: dict[str, LoadedModel] = {}
        for reference in spec.packages():
            name, version = parse_package(reference)
            try:
                loaded = load_package(package_dir(root, name, version), store, **load_options)  # type: ignore[arg-type]
            except ModelPackageInvalid as exc:
                raise DeploymentInvalid(f"package {reference}: {exc.message}") from exc
            problem = graph_parity_problem(loaded)
            if problem:
                raise DeploymentInvalid(f"package {reference}: {problem}")
            models[reference] = loaded
        scorers: dict[str, OnlineScorer] = {}
        signing_key = load_options.get("signing_key")
        for learner in spec.online_learners():
            try:
                base = read_base_package(Path(root), learner)
                if base not in models:
                    base_name, base_version = parse_package(base)
                    models[base] = load_package(
                        package_dir(Path(root), base_name, base_version),
                        store,
                        **load_options,  # type: ignore[arg-type]
                    )
                    problem = graph_parity_problem(models[base])
                    if problem:
                        raise DeploymentInvalid(
                            f"online learner {learner}: base package: {problem}"
                        )
                scorers[learner] = OnlineScorer(
                    Path(root),
                    learner,
                    feature_names=models[base].manifest.features,
                    base_package=base,
                    signing_key=signing_key,  # type: ignore[arg-type]
                )
            except (OnlineLearnerError, ValueError) as exc:
                raise DeploymentInvalid(f"online learner {learner}: {exc}") from exc
            except ModelPackageInvalid as exc:
                raise DeploymentInvalid(
                    f"online learner {learner}: base package: {exc.message}"
                ) from exc
        first = models[spec.packages()[0]]
        domain = first.manifest.domain
        for reference, loaded in models.items():
            if loaded.manifest.domain != domain:
                raise DeploymentInvalid(
                    f"package {reference} serves domain {loaded.manifest.domain!r}, but the "
                    f"deployment's other packages serve {domain!r}"
                )
        if request_fields is not None and spec.sticky_field not in request_fields:
            raise DeploymentInvalid(
                f"sticky_field {spec.sticky_field!r} is not a request field "
                f"(fields: {', '.join(request_fields)})"
            )
        for family_name, family_spec in spec.families.items():
            field = family_spec.segment_field
            if field is not None and request_fields is not None and field not in request_fields:
                raise DeploymentInvalid(
                    f"family {family_name}: segment_field {field!r} is not a request field "
                    f"(fields: {', '.join(request_fields)})"
                )
            feature = family_spec.segment_feature
            stored = models[family_spec.default].manifest.stored_features
            if feature is not None and feature not in stored:
                raise DeploymentInvalid(
                    f"family {family_name}: segment_feature {feature!r} is not a stored feature "
                    f"its default {family_spec.default} reads (features: {', '.join(stored)})"
                )
        layout = StoreLayout([])
        for loaded in models.values():
            layout = layout.union(loaded.layout)
        plan = _mapping_plan(spec, models)
        views = {v.name for v in layout.views}

        def step(name: str, kind: str, source: object, required: Sequence[str]) -> LiveVariant:
            missing = [v for v in required if v not in views]
            if missing:
                raise DeploymentInvalid(f"{name}: required views {missing} are read by no model")
            package = getattr(source, "package", None)
            ensemble_name = getattr(source, "ensemble", None)
            family_name = getattr(source, "family", None)
            online_name = getattr(source, "online", None)
            if online_name is not None:
                scorer = scorers[online_name]
                base = models[scorer.base_package]
                return LiveVariant(
                    name,
                    kind,
                    [OnlineView(base, layout, plan.request_features, scorer)],
                    [1.0],
                    "online",
                    base.policy,
                    list(required),
                    f"online:{online_name}",
                    online=scorer,
                )
            if family_name is not None:
                declared = spec.families[family_name]
                default = models[declared.default]

                def open_member(reference: str) -> LoadedModel:
                    member = package_dir(Path(root), *parse_package(reference))
                    return load_package(member, store, checked=default, **load_options)  # type: ignore[arg-type]

                family = FamilyMembers(
                    family_name,
                    declared.segment,
                    declared.members,
                    default,
                    view=lambda m: ModelView(m, layout, plan.request_features),
                    load=open_member,
                    budget_bytes=None if model_memory_mb is None else int(model_memory_mb * 2**20),
                    admission=model_admission,
                    segment_column=(
                        None
                        if declared.segment_feature is None
                        else _feature_column(layout, declared.segment_feature)
                    ),
                )
                return LiveVariant(
                    name,
                    kind,
                    [family.default_view],  # type: ignore[list-item]
                    [1.0],
                    "family",
                    default.policy,
                    list(required),
                    f"family:{family_name}",
                    family=family,
                )
            if package is not None:
                model = models[package]
                view = ModelView(model, layout, plan.request_features)
                return LiveVariant(
                    name,
                    kind,
                    [view],
                    [1.0],
                    "single",
                    model.policy,
                    list(required),
                    model.version_label,
                )
            ensemble = spec.ensembles[ensemble_name]  # type: ignore[index]
            members = [models[m.package] for m in ensemble.members]
            return LiveVariant(
                name,
                kind,
                [ModelView(m, layout, plan.request_features) for m in members],
                [m.weight for m in ensemble.members],
                ensemble.rule,
                _ensemble_policy(ensemble_name or "", ensemble, members),
                list(required),
                f"ensemble:{ensemble_name}",
            )

        variants = [
            step(v.name, "champion" if i == 0 else "challenger", v, v.required_views)
            for i, v in enumerate(spec.variants)
        ]
        shadows = [step(s.name, "shadow", s, ()) for s in spec.shadows]
        fallback = [step(f.name, "fallback", f, f.required_views) for f in spec.fallback]
        return cls(spec, variants, shadows, fallback, layout, plan, models)

    # --- answering -----------------------------------------------------------------------------

    def sticky_values(self, mapped: MappedRequests) -> list[object]:
        """The sticky field's value of each request (None where the request lacks it)."""
        return self.field_values(mapped, self.spec.sticky_field)

    def field_values(self, mapped: MappedRequests, name: str) -> list[object]:
        """A request field's value of each request (the sticky field, a family's segment)."""
        key = self.plan.entity_mapping.get(name)
        if key is not None:
            return list(mapped.keys[key])
        if name in mapped.request_fields:
            return list(mapped.request_fields[name])
        column = self.plan.request_features.index(name)
        return mapped.request_values[:, column].tolist()

    def answer(self, batch: FeatureBatch | None, mapped: MappedRequests, n: int) -> Answered | None:
        """Answers of n rows; ``batch`` None means the store could not be read. None when the
        store was down and no fallback step answers without it (the outage policy's turn)."""
        out = Answered(np.full(n, np.nan), [""] * n, [[] for _ in range(n)], [""] * n, [""] * n)
        out.inputs, out.input_names = [None] * n, [()] * n
        store_down = batch is None
        if batch is None:
            batch = unread_batch(self.layout, n)
        why = np.array([FALLBACK_STORE] * n, dtype=object)
        pending = np.arange(n)
        if not store_down and len(self.variants) == 1:  # one variant takes every row
            pending = self._try(self.variants[0], batch, mapped, pending, out, why, False)
        elif not store_down:
            chosen = assign(self.sticky_values(mapped), self.weights, self.spec.salt)
            left = [
                self._try(variant, batch, mapped, pending[chosen == index], out, why, False)
                for index, variant in enumerate(self.variants)
                if (chosen == index).any()
            ]
            pending = np.sort(np.concatenate(left)) if left else pending[:0]
        for step in self.fallback:
            if not len(pending):
                break
            if store_down and step.reads_store:
                continue
            pending = self._try(step, batch, mapped, pending, out, why, True)
        if len(pending):
            if store_down:
                return None
            policy = self.champion.policy
            for i in pending.tolist():
                status = {key: int(batch.status[key][i]) for key in batch.status}
                label, gaps = policy.decide(None, np.empty(0), status)
                out.labels[i], out.reasons[i] = label, [*gaps, str(why[i])]
                out.variants[i] = "none"
        return out

    def _try(
        self,
        step: LiveVariant,
        batch: FeatureBatch,
        mapped: MappedRequests,
        rows: np.ndarray,
        out: Answered,
        why: np.ndarray,
        is_fallback: bool,
    ) -> np.ndarray:
        """Answer what the step can of ``rows``; the rows left (``why`` says why)."""
        blocked = step.unavailable(batch, rows)
        if step.required_views and blocked.any():
            why[rows[blocked]] = FALLBACK_FEATURES
            able = rows[~blocked]
        else:
            able = rows
        if not len(able):
            return rows
        versions: list[str] | None = None
        notes: list[str | None] | None = None
        try:
            started = time.perf_counter()
            if step.family is not None:
                scores, matrix, versions, notes = self._family_scores(
                    step.family, batch, mapped, able
                )
                explained = matrix
            else:
                scores, matrix, explained = step.explained_scores(batch, mapped, able)
                if step.online is not None:  # per row, the snapshot that answered
                    versions, notes = [step.online.version] * len(able), [None] * len(able)
            self._seconds[step.name].observe(time.perf_counter() - started)
        except Exception:
            logger.exception(
                "%s %s failed; its rows go down the fallback chain", step.kind, step.name
            )
            why[able] = FALLBACK_MODEL_ERROR
            return rows
        ok = ~np.isnan(scores)
        if ok.all():  # the usual case: no row to take out
            good = able
        else:
            why[able[~ok]] = FALLBACK_MODEL_ERROR
            good = able[ok]
            scores, matrix, explained = scores[ok], matrix[ok], explained[ok]
            if versions is not None and notes is not None:
                kept = np.flatnonzero(ok).tolist()
                versions, notes = [versions[j] for j in kept], [notes[j] for j in kept]
        every = len(good) == len(batch.values)  # every row of the batch (good is sorted)
        statuses = batch.status if every else {k: v[good] for k, v in batch.status.items()}
        labels, reasons = step.policy.decide_many(scores, matrix, statuses)
        self._requests[step.name].inc(len(good))
        monitor = self.drift.get(step.model_version)
        if monitor is not None:  # copies into its ring buffer; summarised off the answer's path
            monitor.observe(matrix, scores, batch if every else batch.rows(good))
        metrics.observe_many(self._scores[step.name], scores)
        names = step.input_names
        if notes is not None:  # a family's: why the default answered a segment with a member
            reasons = [[*r, n] if n else r for r, n in zip(reasons, notes, strict=True)]
        out.scores[good] = scores
        at = good.tolist()
        if is_fallback:
            reasons = [[*r, str(why[i])] for r, i in zip(reasons, at, strict=True)]
        if versions is None:
            versions = [step.model_version] * len(at)
        if len(at) == len(out.labels):  # every row of the call (``at`` is 0..n-1)
            out.inputs, out.input_names = list(explained), [names] * len(at)
            out.labels, out.reasons, out.model_versions = list(labels), reasons, versions
            out.variants = [step.name] * len(at)
        else:
            for j, i in enumerate(at):
                out.inputs[i], out.input_names[i] = explained[j], names
                out.labels[i], out.reasons[i] = labels[j], reasons[j]
                out.variants[i], out.model_versions[i] = step.name, versions[j]
        if len(good) == len(rows):  # every row answered
            return rows[:0]
        return np.sort(np.concatenate([rows[blocked], able[~ok]]))

    def _family_scores(
        self, family: FamilyMembers, batch: FeatureBatch, mapped: MappedRequests, rows: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, list[str], list[str | None]]:
        """A family's scores of the rows: one model call per member present among them; per
        row, the package that answered and why the default did where the segment has a member."""
        if family.segment_column is None:  # a request field's value
            segments = self.field_values(mapped, family.segment_field)
            if len(segments) != len(rows):
                segments = [segments[i] for i in rows.tolist()]
        else:  # a stored feature's, as read (missing or past its view's TTL: NaN, no segment)
            segments = [segment_key(v) for v in batch.values[rows, family.segment_column].tolist()]
        scores = np.full(len(rows), np.nan)
        matrix: np.ndarray | None = None
        versions = [family.default_package] * len(rows)
        notes: list[str | None] = [None] * len(rows)
        with family.routes(segments) as routes:
            by_package: dict[str, tuple[ModelView, list[np.ndarray], bool]] = {}
            for route in routes:
                grouped = by_package.get(route.package)
                if grouped is None:
                    by_package[route.package] = (route.view, [route.rows], route.shares_inputs)  # type: ignore[assignment]
                else:
                    grouped[1].append(route.rows)
                if route.package != family.default_package or route.reason is not None:
                    for j in route.rows.tolist():
                        versions[j], notes[j] = route.package, route.reason
            # Members reading the default's inputs the same way (the usual family: one
            # FeatureService) share one input matrix of every row, built once; each member's
            # model call takes its rows of it. Others build their own.
            shared: np.ndarray | None = None
            own: list[tuple[np.ndarray, np.ndarray]] = []
            counted: dict[str, int] = {}  # rows predicted, by graph: one metric write each
            try:
                for view, parts, shares in by_package.values():
                    at = np.sort(np.concatenate(parts)) if len(parts) > 1 else parts[0]
                    if shares:
                        if shared is None:
                            default_view: ModelView = family.default_view  # type: ignore[assignment]
                            shared = default_view.matrix(batch, mapped, rows)
                        scores[at] = view.model.predictor.predict(
                            shared if len(at) == len(rows) else shared[at], counted
                        )
                    else:
                        scores[at], part_matrix = view.score(batch, mapped, rows[at])
                        own.append((at, part_matrix))
                if own:
                    width = own[0][1].shape[1]
                    matrix = np.empty((len(rows), width), dtype=own[0][1].dtype)
                    if shared is not None:
                        matrix[:] = shared
                    for at, part_matrix in own:
                        matrix[at] = part_matrix
                else:
                    matrix = shared
            finally:
                family.default.predictor.count_rows(counted)
        if matrix is None:
            matrix = np.empty((0, 0), dtype=np.float32)
        return scores, matrix, versions, notes


def unread_batch(layout: StoreLayout, n: int) -> FeatureBatch:
    """A batch for a read that did not happen: every value NaN, every view missing."""
    batch = FeatureBatch(values=np.full((n, layout.width), np.nan, dtype=np.float32))
    for view in layout.views:
        batch.view_status[view.name] = np.full(n, MISSING, dtype=np.int8)
        batch.view_age_seconds[view.name] = np.full(n, np.nan)
    for key in layout.join_keys:
        batch.status[key] = np.full(n, MISSING, dtype=np.int8)
        batch.age_seconds[key] = np.full(n, np.nan)
        batch.event_timestamp[key] = np.full(n, np.nan)
    return batch


def _mapping_plan(spec: DeploymentSpec, models: Mapping[str, LoadedModel]) -> MappingPlan:
    mapping: dict[str, str] = {}
    request_features: list[str] = []
    on_demand: dict[str, OnDemandViewInfo] = {}
    for loaded in models.values():
        manifest = loaded.manifest
        for request_field, key in manifest.entity_mapping.items():
            if mapping.get(request_field, key) != key:
                raise DeploymentInvalid(
                    f"request field {request_field!r} maps to {mapping[request_field]!r} in one "
                    f"package and {key!r} in {loaded.version_label}"
                )
            mapping[request_field] = key
        request_features += [f for f in manifest.request_features if f not in request_features]
        on_demand.update(manifest.on_demand_views)
    # A family's segment field is kept by mapping as an on-demand view's request field is.
    for name, family in spec.families.items():
        if family.segment_field is None:  # a stored feature's: read with the others
            continue
        on_demand[f"family:{name}"] = OnDemandViewInfo(
            request_fields=[family.segment_field],
            source_views=[],
            stored_inputs=[],
            features=[],
            function="",
            code_sha256="",
        )
    return MappingPlan(spec.name, "deployment", mapping, request_features, on_demand)


def _feature_column(layout: StoreLayout, feature: str) -> int:
    """The column of a stored feature in the deployment's feature batch."""
    for view in layout.views:
        if feature in view.features:
            return view.offset + view.features.index(feature)
    raise DeploymentInvalid(f"stored feature {feature!r} is read by no view of the deployment")


def _ensemble_policy(name: str, ensemble: Ensemble, members: list[LoadedModel]) -> LabelPolicy:
    """The first member's policy with the ensemble's thresholds; members must agree on the
    entities they read and the labels they give."""
    first = members[0]
    for member in members[1:]:
        if member.manifest.entity_mapping != first.manifest.entity_mapping:
            raise DeploymentInvalid(
                f"ensemble {name}: member {member.version_label} maps requests to other entities "
                f"({member.manifest.entity_mapping}) than {first.version_label} "
                f"({first.manifest.entity_mapping})"
            )
        if member.manifest.labels != first.manifest.labels:
            raise DeploymentInvalid(f"ensemble {name}: members give different labels")
    labels = list(first.manifest.labels)
    if list(ensemble.thresholds) != labels[1:]:
        raise DeploymentInvalid(
            f"ensemble {name}: thresholds must name the labels {labels[1:]}, in that order"
        )
    try:
        thresholds = LabelThresholds(**ensemble.thresholds, rule=f"declared by ensemble {name}")
    except ValueError as exc:
        raise DeploymentInvalid(f"ensemble {name}: {exc}") from exc
    base = first.policy
    return LabelPolicy(
        thresholds, base.uncertain, [], base.labels, base.uncertain_label, (), base.unknown_reasons
    )


def graph_parity_problem(model: LoadedModel, rows: int = 256) -> str | None:
    """Whether the package's CPU and GPU graphs agree on planted rows (NaNs included)."""
    gpu = model.manifest.graphs.get("gpu")
    if gpu is None:
        return None
    rng = np.random.default_rng(0)
    width = len(model.manifest.features)
    matrix = rng.normal(0, 50, size=(rows, width)).astype(np.float32)
    matrix[rng.random(matrix.shape) < 0.1] = np.nan
    try:
        session = ort.InferenceSession(
            str(model.path / gpu.file), providers=["CPUExecutionProvider"]
        )
        other = session.run([gpu.output_name], {gpu.input_name: matrix})[0]
    except Exception as exc:  # a graph that does not run is not a parity match
        return f"GPU graph {gpu.file} does not run: {type(exc).__name__}"
    ours = model.predictor.predict(matrix)
    other = np.asarray(other, dtype=np.float64).reshape(len(ours), -1)[:, -1]
    gap = float(np.max(np.abs(np.asarray(ours, dtype=np.float64) - other)))
    if gap > PARITY_TOLERANCE:
        return f"its CPU and GPU graphs disagree by {gap:.2e} (> {PARITY_TOLERANCE:g})"
    return None


class RollingAgreement:
    """Label agreement rate and mean absolute score difference over the last ``window`` rows,
    kept as running sums over a ring buffer (constant work per row, whatever the window)."""

    def __init__(self, window: int) -> None:
        self.agree = np.zeros(window, dtype=np.float64)
        self.diff = np.zeros(window, dtype=np.float64)
        self.filled = 0
        self.next = 0
        self.agree_sum = 0.0
        self.diff_sum = 0.0

    def add(self, agree: np.ndarray, diff: np.ndarray) -> tuple[float, float]:
        """Add rows; the current (agreement rate, mean absolute difference)."""
        size = len(self.agree)
        if len(agree) > size:  # only the newest rows fit
            agree, diff = agree[-size:], diff[-size:]
        slots = (self.next + np.arange(len(agree))) % size
        self.agree_sum += float(agree.sum()) - float(self.agree[slots].sum())
        self.diff_sum += float(diff.sum()) - float(self.diff[slots].sum())
        self.agree[slots], self.diff[slots] = agree, diff
        wrapped = self.next + len(agree) >= size
        self.next = int((self.next + len(agree)) % size)
        self.filled = min(size, self.filled + len(agree))
        if wrapped:  # once per window: exact sums again, so rounding never accumulates
            self.agree_sum, self.diff_sum = float(self.agree.sum()), float(self.diff.sum())
        return self.agree_sum / self.filled, self.diff_sum / self.filled


class ShadowRunner:
    """Scores shadows after the answers, from a bounded queue; drops first under load.

    Two limits keep shadows from costing the answers: the queue (a batch that finds it full is
    dropped), and a time budget: shadow scoring may take ``time_share`` of the wall clock on
    average (a token bucket filled at that rate, holding at most ``burst_s``, emptied by each
    batch's measured scoring time). A batch that finds the bucket empty is dropped and counted,
    so a saturated service answers at no less than about ``1 - time_share`` of its shadow-free
    rate, while a service with room to spare has every batch scored.
    """

    def __init__(
        self,
        deployment: LiveDeployment,
        queue_size: int = 64,
        window: int = 10_000,
        time_share: float = 0.2,
        burst_s: float = 0.05,
    ):
        self.deployment = deployment
        self.time_share = time_share
        self.burst_s = burst_s
        self._tokens = burst_s
        self._filled_at = time.perf_counter()
        self.queue: asyncio.Queue[tuple[FeatureBatch, MappedRequests, Answered]] = asyncio.Queue(
            maxsize=queue_size
        )
        self._task: asyncio.Task[None] | None = None
        self._agree = {s.name: RollingAgreement(window) for s in deployment.shadows}

    def start(self) -> None:
        if self.deployment.shadows and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def offer(self, batch: FeatureBatch | None, mapped: MappedRequests, answered: Answered) -> None:
        if not self.deployment.shadows or batch is None:
            return
        if self.time_share <= 0.0:
            metrics.SHADOW_DROPPED.inc(len(answered.labels))
            return
        try:
            self.queue.put_nowait((batch, mapped, answered))
        except asyncio.QueueFull:
            metrics.SHADOW_DROPPED.inc(len(answered.labels))

    def _affordable(self) -> bool:
        """Whether the time budget has room for one more batch (the bucket is not empty)."""
        now = time.perf_counter()
        elapsed, self._filled_at = now - self._filled_at, now
        self._tokens = min(self.burst_s, self._tokens + elapsed * self.time_share)
        return self._tokens > 0.0

    async def _run(self) -> None:
        while True:
            batch, mapped, answered = await self.queue.get()
            if not self._affordable():
                metrics.SHADOW_DROPPED.inc(len(answered.labels))
                continue
            started = time.perf_counter()
            try:
                self.score(batch, mapped, answered)
            except Exception:
                logger.exception("shadow scoring failed")
            self._tokens -= time.perf_counter() - started

    def score(self, batch: FeatureBatch, mapped: MappedRequests, answered: Answered) -> None:
        """Score every shadow on the batch; agreement with the answers that models gave."""
        rows = np.flatnonzero(~np.isnan(answered.scores))
        if not len(rows):
            return
        for shadow in self.deployment.shadows:
            started = time.perf_counter()
            scores, matrix = shadow.scores(batch, mapped, rows)
            metrics.VARIANT_SECONDS.labels(shadow.name).observe(time.perf_counter() - started)
            statuses = {key: batch.status[key][rows] for key in batch.status}
            labels, _ = shadow.policy.decide_many(scores, matrix, statuses)
            answered_labels = np.asarray(answered.labels, dtype=object)[rows]
            agree, diff = self._agree[shadow.name].add(
                np.asarray(labels, dtype=object) == answered_labels,
                np.abs(np.asarray(scores, dtype=np.float64) - answered.scores[rows]),
            )
            metrics.SHADOW_LABEL_AGREEMENT.labels(shadow.name, shadow.model_version).set(agree)
            metrics.SHADOW_SCORE_DIFF.labels(shadow.name, shadow.model_version).set(diff)
            metrics.VARIANT_REQUESTS.labels(shadow.name, shadow.model_version).inc(len(rows))
            # The shadow's score distribution: a rollout's baseline for its canary steps.
            sample = metrics.VARIANT_SCORES.labels(shadow.name, shadow.model_version)
            metrics.observe_many(sample, scores)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None


def static_views(layout: StoreLayout) -> dict[str, ViewSpec]:
    """{view: ViewSpec} of a layout (for tests and reports)."""
    return {
        v.name: ViewSpec(v.join_key, v.ttl_seconds, v.features, v.evidence) for v in layout.views
    }
