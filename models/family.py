"""A model family: one FeatureService's packages trained per segment, with a default member.

A segment is a value of a request field (``card_country``: one model per card country) or of a
stored feature the FeatureService reads, an entity's code or count (``card_distinct_countries_24h``:
one model per number of countries the card paid from in a day), as the training set holds it at
each event's instant; a stored feature's segments are its integer values
(``models.package.segment_key``, the key serving looks members up by), and rows where it is
missing or not an integer stay with the default. One call trains the whole family on one
point-in-time training set and one time split:

1. the **default member**, the global model over every segment (``models.train.train``, the
   package ``<name>/<version>``); it answers every segment without a member of its own;
2. per segment with at least ``min_rows`` training rows, a **member**: the
   global model's trees plus up to ``member_rounds`` more boosted on the segment's training rows
   alone (LightGBM's ``init_model``), stopped early on the segment's validation rows. Starting
   from the global model lets a small segment learn what differs in it without forgetting what
   every segment shares;
3. each member is evaluated against the global model on its segment's holdout (the split's
   last rows: neither model saw them): the binary log loss (lower is better; it counts every
   row, where PR-AUC needs positives, which a small segment's holdout may lack), with ROC-AUC
   and PR-AUC beside it. A member whose log loss is not lower than the global model's is **not
   published**; the default answers its segment, and the family's summary lists it with its
   figures. Segments with too few rows are listed too.

Members are published as ``<name>/<version>-<segment>``: the default's manifest with the member's
graphs, trees, segment metrics and score baseline; its label thresholds stay the default's, so
a label means the same whatever member gave it. ``<name>/<version>.family.yaml`` beside the
packages is the deployment's ``families:`` entry (``scoring_service/deployments/spec.py``), and
``<name>/<version>.family.json`` every segment's figures.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import yaml
from feast import FeatureStore

from feature_repo import clock
from feature_repo.domain import DomainSpec, load_domain
from models import evaluate, export
from models.dataset import (
    entity_dataframe,
    feature_layout,
    feature_matrix,
    load_events,
    open_store,
    retrieve_training_set,
)
from models.package import (
    GraphInfo,
    package_dir,
    score_bins,
    segment_key,
    sha256_bytes,
    write_package,
)
from models.package.baselines import feature_baseline
from models.train import (
    BOOSTER_FILE,
    CPU_GRAPH_FILE,
    GPU_GRAPH_FILE,
    TrainResult,
    default_params,
    split_by_time,
    train,
)

logger = logging.getLogger(__name__)

VALID_SHARE = 0.15
HOLDOUT_SHARE = 0.15
MIN_ROWS = 100
"""Training rows a segment needs for a member of its own (below: the default answers it)."""
MEMBER_ROUNDS = 60
"""Most trees a member adds to the global model's."""
EARLY_STOPPING_ROUNDS = 10
_SEGMENT = re.compile(r"[^A-Za-z0-9_.-]+")
_KEY = "__segment__"  # the training frame's column of segment keys
REQUEST_FIELD = "segment_field"
STORED_FEATURE = "segment_feature"


@dataclass
class MemberFigures:
    """One segment's outcome: its rows, and the member's and the global model's holdout figures."""

    segment: str
    train_rows: int
    holdout_rows: int
    holdout_positives: int
    published: bool = False
    package: str | None = None
    why: str = ""
    member_log_loss: float | None = None
    global_log_loss: float | None = None
    member_roc_auc: float | None = None
    global_roc_auc: float | None = None
    member_pr_auc: float | None = None
    global_pr_auc: float | None = None
    member_trees: int | None = None


@dataclass
class FamilyResult:
    """What one family training run produced."""

    name: str
    segment_field: str
    default: TrainResult
    segment_kind: str = REQUEST_FIELD  # or STORED_FEATURE
    segments: list[MemberFigures] = field(default_factory=list)
    folder: Path | None = None

    @property
    def default_package(self) -> str:
        m = self.default.manifest
        return f"{m.name}/{m.version}"

    @property
    def published(self) -> list[MemberFigures]:
        return [s for s in self.segments if s.published]

    @property
    def rejected(self) -> list[MemberFigures]:
        """Members trained and evaluated that did not beat the global model."""
        return [s for s in self.segments if not s.published and s.member_log_loss is not None]

    def spec(self) -> dict[str, object]:
        """The deployment's ``families:`` entry for this family."""
        return {
            self.segment_kind: self.segment_field,
            "default": self.default_package,
            "members": {s.segment: s.package for s in self.published},
        }

    def summary(self) -> str:
        """Every segment's figures, published members first."""

        def number(value: float | None) -> str:
            return "   -  " if value is None or value != value else f"{value:.4f}"

        lines = [
            f"family {self.name}: default {self.default_package}, segments by "
            f"{'' if self.segment_kind == REQUEST_FIELD else 'stored feature '}"
            f"{self.segment_field}; {len(self.published)} members published, "
            f"{len(self.rejected)} not (no better than the global model), "
            f"{len(self.segments) - len(self.published) - len(self.rejected)} without a model",
            f"{'segment':<10}{'train':>7}{'holdout':>8}{'pos':>5}  {'log loss member/global':<24}"
            f"{'PR-AUC member/global':<22}outcome",
        ]
        order = sorted(self.segments, key=lambda s: (not s.published, -s.train_rows))
        for s in order:
            outcome = f"published {s.package}" if s.published else f"default answers: {s.why}"
            lines.append(
                f"{s.segment:<10}{s.train_rows:>7}{s.holdout_rows:>8}{s.holdout_positives:>5}  "
                f"{number(s.member_log_loss)} / {number(s.global_log_loss)}"
                f"{'':<7}{number(s.member_pr_auc)} / {number(s.global_pr_auc)}{'':<5}{outcome}"
            )
        return "\n".join(lines)


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    """Mean binary cross-entropy (probabilities clipped away from 0 and 1)."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1 - 1e-12)
    y = np.asarray(y, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def member_version(version: str, segment: str) -> str:
    """The version of a segment's member package."""
    return f"{version}-{_SEGMENT.sub('_', segment)}"


def segment_kind(spec: DomainSpec, store: FeatureStore, feature_service: str, segment: str) -> str:
    """Whether ``segment`` is a request field of the domain (``segment_field``) or a stored
    feature of the FeatureService (``segment_feature``); ValueError when it is neither."""
    if segment in spec.request_fields:
        return REQUEST_FIELD
    stored = feature_layout(store, feature_service).stored_features
    if segment in stored:
        return STORED_FEATURE
    raise ValueError(
        f"{segment!r} is not a request field of the {spec.name} domain (fields: "
        f"{', '.join(spec.request_fields)}) nor a stored feature of {feature_service} "
        f"(features: {', '.join(stored)}); a family's member is chosen by one"
    )


def segment_keys(values: pd.Series, kind: str) -> pd.Series:
    """Each row's segment key (None: no segment), as serving keys it."""
    if kind == STORED_FEATURE:
        numbers = values.to_numpy(dtype=np.float64, na_value=np.nan)
        return pd.Series([segment_key(v) for v in numbers.tolist()], index=values.index)
    return values.map(lambda v: None if pd.isna(v) else str(v))


def train_family(
    repo_path: Path,
    events_path: Path | None,
    output_root: Path,
    segment_field: str,
    *,
    feature_service: str | None = None,
    model_name: str | None = None,
    version: str | None = None,
    yaml_path: Path | None = None,
    num_boost_round: int = 400,
    member_rounds: int = MEMBER_ROUNDS,
    min_rows: int = MIN_ROWS,
    seed: int = 7,
    domain: DomainSpec | None = None,
) -> FamilyResult:
    """Train the default member and one member per segment with enough rows; publish the
    members that beat the global model on their segment's holdout."""
    spec = domain or load_domain(repo_path)
    events_path = events_path or spec.training_data_path
    feature_service = feature_service or spec.feature_service
    store = open_store(repo_path, yaml_path)
    kind = segment_kind(spec, store, feature_service, segment_field)
    version = version or f"{feature_service.rsplit('_', 1)[-1]}-by-{segment_field}"
    default = train(
        repo_path=repo_path,
        events_path=events_path,
        output_root=output_root,
        feature_service=feature_service,
        model_name=model_name,
        model_version=version,
        yaml_path=yaml_path,
        num_boost_round=num_boost_round,
        valid_share=VALID_SHARE,
        holdout_share=HOLDOUT_SHARE,
        seed=seed,
        domain=spec,
    )
    manifest = default.manifest
    global_booster = lgb.Booster(model_file=str(default.package_path / BOOSTER_FILE))
    features = list(manifest.features)

    # The default's training set again, with the segment keys, split at the same instants.
    layout = feature_layout(store, feature_service)
    events = load_events(events_path, spec)
    extra = [segment_field] if kind == REQUEST_FIELD else []
    frame = retrieve_training_set(
        store,
        feature_service,
        entity_dataframe(events, spec, request_fields=[*layout.request_fields, *extra]),
        spec,
    )
    frame[_KEY] = segment_keys(frame[segment_field], kind)
    splits = split_by_time(frame, VALID_SHARE, HOLDOUT_SHARE)
    label = spec.label_column
    result = FamilyResult(f"{manifest.name}/{version}", segment_field, default, kind)
    counts = splits[0][_KEY].value_counts()
    segments = sorted(set(frame[_KEY].dropna()))
    for segment in sorted(segments, key=lambda s: (-int(counts.get(s, 0)), s)):
        parts = [p[p[_KEY] == segment] for p in splits]
        xs = [feature_matrix(p, features).astype(np.float64) for p in parts]
        ys = [p[label].to_numpy(dtype=np.int32) for p in parts]
        figures = MemberFigures(segment, len(parts[0]), len(parts[2]), int(ys[2].sum()))
        result.segments.append(figures)
        if len(parts[0]) < min_rows:
            figures.why = f"{len(parts[0])} training rows (< {min_rows})"
            continue
        if not len(parts[2]):
            figures.why = "no holdout rows to evaluate a member on"
            continue
        booster = _member(global_booster, xs, ys, features, member_rounds, seed)
        member_scores = np.asarray(booster.predict(xs[2]), dtype=np.float64)
        global_scores = np.asarray(global_booster.predict(xs[2]), dtype=np.float64)
        ranks_member = evaluate.ranking_metrics(ys[2], member_scores)
        ranks_global = evaluate.ranking_metrics(ys[2], global_scores)
        figures.member_log_loss = log_loss(ys[2], member_scores)
        figures.global_log_loss = log_loss(ys[2], global_scores)
        figures.member_roc_auc = ranks_member["roc_auc"]
        figures.global_roc_auc = ranks_global["roc_auc"]
        figures.member_pr_auc = ranks_member["pr_auc"]
        figures.global_pr_auc = ranks_global["pr_auc"]
        figures.member_trees = booster.num_trees()
        if booster.num_trees() <= global_booster.num_trees():
            figures.why = "no tree of its own improved its validation rows"
            continue
        if not figures.member_log_loss < figures.global_log_loss:
            figures.why = "its holdout log loss is not below the global model's"
            continue
        path = _publish(
            output_root, default, booster, segment, (kind, segment_field), xs, ys, figures
        )
        figures.published = True
        figures.package = f"{manifest.name}/{path.name}"
    result.folder = package_dir(output_root, manifest.name, version)
    _write_index(output_root, result)
    return result


def _member(
    global_booster: lgb.Booster,
    xs: list[np.ndarray],
    ys: list[np.ndarray],
    features: list[str],
    rounds: int,
    seed: int,
) -> lgb.Booster:
    """The global model's trees plus the segment's own, stopped early on its validation rows."""
    train_set = lgb.Dataset(xs[0], ys[0], feature_name=features, free_raw_data=False)
    params = {**default_params(seed), "min_data_in_leaf": 10, "learning_rate": 0.03}
    callbacks: list[Callable[..., Any]] = []
    valid_sets: list[lgb.Dataset] = []
    if len(np.unique(ys[1])) == 2:
        valid_sets = [lgb.Dataset(xs[1], ys[1], reference=train_set)]
        params["metric"] = ["binary_logloss"]
        callbacks = [lgb.early_stopping(EARLY_STOPPING_ROUNDS, verbose=False)]
    booster = lgb.train(
        params,
        train_set,
        num_boost_round=rounds,
        init_model=global_booster,
        valid_sets=valid_sets,
        callbacks=callbacks,
    )
    best = booster.best_iteration or booster.current_iteration()
    return lgb.Booster(model_str=booster.model_to_string(num_iteration=best))


def _publish(
    root: Path,
    default: TrainResult,
    booster: lgb.Booster,
    segment: str,
    segmented_by: tuple[str, str],  # (REQUEST_FIELD or STORED_FEATURE, its name)
    xs: list[np.ndarray],
    ys: list[np.ndarray],
    figures: MemberFigures,
) -> Path:
    """Seal the member as ``<name>/<version>-<segment>``: the default's manifest with its own
    graphs, trees, metrics and baselines."""
    manifest = default.manifest
    cpu_graph = export.tree_ensemble_graph(booster, len(manifest.features))
    gpu_graph = export.standard_ops_graph(booster)
    planted = export.with_planted_nans(xs[2].astype(np.float32))
    for graph, name in ((cpu_graph, "cpu graph"), (gpu_graph, "gpu graph")):
        export.check_parity(booster, graph, xs[2].astype(np.float32), f"{name}, holdout")
        export.check_parity(booster, graph, planted, f"{name}, planted NaNs")
    files = {
        CPU_GRAPH_FILE: cpu_graph.SerializeToString(),
        GPU_GRAPH_FILE: gpu_graph.SerializeToString(),
        BOOSTER_FILE: booster.model_to_string().encode(),
    }
    hold_scores = np.asarray(booster.predict(xs[2]), dtype=np.float64)
    valid_scores = np.asarray(booster.predict(xs[1]), dtype=np.float64) if len(xs[1]) else None
    version = member_version(manifest.version, segment)
    graphs = {
        "cpu": GraphInfo(
            file=CPU_GRAPH_FILE, sha256=sha256_bytes(files[CPU_GRAPH_FILE]), kind="tree_ensemble"
        ),
        "gpu": GraphInfo(
            file=GPU_GRAPH_FILE, sha256=sha256_bytes(files[GPU_GRAPH_FILE]), kind="standard_ops"
        ),
    }
    member = manifest.model_copy(
        update={
            "version": version,
            "created_at": clock.now(),
            "graphs": graphs,
            "artefacts": {BOOSTER_FILE: sha256_bytes(files[BOOSTER_FILE])},
            "metrics": {
                "validation": {
                    "n_rows": len(xs[1]),
                    "positive_rate": float(ys[1].mean()) if len(ys[1]) else float("nan"),
                    **(
                        evaluate.ranking_metrics(ys[1], valid_scores)
                        if valid_scores is not None
                        else {}
                    ),
                },
                "holdout": {
                    "n_rows": len(xs[2]),
                    "positive_rate": float(ys[2].mean()),
                    "log_loss": figures.member_log_loss,
                    **evaluate.ranking_metrics(ys[2], hold_scores),
                },
                "family": {
                    segmented_by[0]: segmented_by[1],
                    "segment": segment,
                    "default": f"{manifest.name}/{manifest.version}",
                    "global_log_loss": figures.global_log_loss,
                    "global_roc_auc": figures.global_roc_auc,
                    "global_pr_auc": figures.global_pr_auc,
                },
            },
            "baseline_score_distribution": evaluate.score_quantiles(hold_scores),
            "baseline_score_bins": score_bins(hold_scores),
            "feature_baselines": {
                name: feature_baseline(xs[0][:, j].astype(np.float32))
                for j, name in enumerate(manifest.features)
            },
            "training": {
                **manifest.training,
                "n_train": len(xs[0]),
                "num_trees": booster.num_trees(),
                "best_iteration": booster.num_trees(),
                "family_segment": {segmented_by[1]: segment},
            },
        }
    )
    return write_package(root, member, files)


def _write_index(root: Path, result: FamilyResult) -> None:
    """``family.yaml`` (the deployment's ``families:`` entry) and ``family.json`` (figures)
    in the default package's model folder, ``<root>/<name>/<version>.family.*``."""
    manifest = result.default.manifest
    folder = Path(root) / manifest.name
    stem = f"{manifest.version}.family"
    (folder / f"{stem}.yaml").write_text(yaml.safe_dump(result.spec(), sort_keys=False))
    figures = [
        {k: None if isinstance(v, float) and v != v else v for k, v in asdict(s).items()}
        for s in result.segments
    ]
    (folder / f"{stem}.json").write_text(
        json.dumps({"family": result.name, **result.spec(), "segments": figures}, indent=2) + "\n"
    )


def read_family(root: Path, name: str, version: str) -> dict[str, object]:
    """A published family's index (``family.json``)."""
    path = Path(root) / name / f"{version}.family.json"
    data: dict[str, object] = json.loads(path.read_text())
    return data
