"""Explanations of logged answers: which inputs moved a score, in the domain's words.

``GET /v1/{resource}/{id}/explanation`` (analyst keys) finds the latest logged answer for a
business id (the recent-answers index first, then the parquet prediction log on disk), reads the
LightGBM model text of the package that gave it (``model.lgb.txt``, verified with the package's
seal like any load), and runs exact TreeSHAP (``scoring_service.monitoring.tree_shap``) on the
logged input row.
The contributions plus the expected value sum to the raw score (log-odds) the trees give for that
row; the answer shows the largest ones with each input's sentence from the domain file
(``features:``), and the entity statuses of the answer.

Whatever decided the answer is what explains it: the log names the package of each answer (the
direct path's model, a champion or challenger, a fallback step) and keeps that package's input
row. An ensemble's answer keeps each member's row (``answers.ensemble_members``) and is
explained as its members' weighted contributions: under ``weighted_mean`` each member's
contributions times its share, so contributions plus expected value sum to the members' weighted
raw score; under ``max`` the member whose score answered, alone. An online learner's answer
(``models.package.online``: scaling, then logistic regression) is explained by the snapshot that
gave it: each input's weight times its scaled value, the intercept as the expected value; they
sum to the log-odds whose logistic function is the score.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc

from feature_repo import prediction_log as plog
from feature_repo.domain import DomainSpec
from models.package import (
    PackageIntegrityError,
    package_dir,
    read_manifest,
    sha256_file,
    verify_package,
)
from models.package.online import DESCRIPTION_FILE as ONLINE_DESCRIPTION
from models.package.online import OnlineLearner, OnlineLearnerError
from scoring_service.core.errors import AnswerNotLogged, ModelPackageInvalid
from scoring_service.monitoring.answers import RecentAnswers, ensemble_members
from scoring_service.monitoring.prediction_log import LogEntry
from scoring_service.monitoring.tree_shap import TreeEnsemble, top_contributions

logger = logging.getLogger(__name__)

LIGHTGBM_SUFFIX = ".lgb.txt"
"""How a package's LightGBM model text is named among its artefacts."""

ENSEMBLES_KEPT = 8
"""Model versions whose trees stay parsed (a reload or a challenger adds one)."""


class Explainer:
    """Finds one domain's logged answers and explains them."""

    def __init__(
        self,
        spec: DomainSpec,
        model_root: Path,
        log_root: Path | None,
        recent: RecentAnswers | None,
        *,
        signing_key: bytes | None = None,
    ) -> None:
        self.spec = spec
        self.model_root = Path(model_root)
        self.log_root = log_root
        self.recent = recent
        self.signing_key = signing_key
        self._ensembles: OrderedDict[str, TreeEnsemble] = OrderedDict()
        self._lock = threading.Lock()

    # --- finding the answer ----------------------------------------------------------------

    def find(self, business_id: str) -> LogEntry:
        """The latest logged answer for this id; AnswerNotLogged when there is none."""
        if self.log_root is None or self.recent is None:
            raise AnswerNotLogged(
                "Explanations read the prediction log, and this service keeps none; set "
                "SCORING_PREDICTION_LOG_DIR."
            )
        entry = self.recent.get(business_id) or self._on_disk(business_id)
        if entry is None:
            raise AnswerNotLogged(
                f"No logged answer for {self.spec.business_id} {business_id!r}: it was not "
                "scored, not sampled into the prediction log, or the log no longer holds it."
            )
        return entry

    def _on_disk(self, business_id: str) -> LogEntry | None:
        root = self.log_root
        if root is None or next(root.glob(f"{plog.DATE}=*/*.parquet"), None) is None:
            return None  # nothing rolled into parquet yet
        where = (pc.field(plog.BUSINESS_ID) == business_id) & (
            pc.field(plog.DOMAIN) == self.spec.name
        )
        table = plog.read(root, where=where)
        if table.num_rows == 0:
            return None
        latest = int(pc.index(table[plog.TS], pc.max(table[plog.TS])).as_py())
        row = table.slice(latest, 1).to_pylist()[0]
        return _entry(row, self.spec.join_keys)

    # --- the trees of a package ------------------------------------------------------------

    def ensemble(self, model_version: str) -> TreeEnsemble:
        """The trees of package ``name/version``, read once and kept for a few versions."""
        with self._lock:
            cached = self._ensembles.get(model_version)
            if cached is not None:
                self._ensembles.move_to_end(model_version)
                return cached
        ensemble = self._read(model_version)
        with self._lock:
            self._ensembles[model_version] = ensemble
            while len(self._ensembles) > ENSEMBLES_KEPT:
                self._ensembles.popitem(last=False)
        return ensemble

    def _read(self, model_version: str) -> TreeEnsemble:
        name, _, version = model_version.partition("/")
        if not name or not version or "/" in version or ".." in model_version:
            raise ModelPackageInvalid(f"{model_version!r} is not a model package to explain with")
        path = package_dir(self.model_root, name, version)
        try:
            verify_package(path, self.signing_key)
            manifest = read_manifest(path)
        except (PackageIntegrityError, OSError, ValueError) as exc:
            raise ModelPackageInvalid(
                f"package {model_version} cannot explain its answers: {exc}"
            ) from exc
        text_files = [f for f in manifest.artefacts if f.endswith(LIGHTGBM_SUFFIX)]
        if not text_files:
            raise ModelPackageInvalid(
                f"package {model_version} has no LightGBM model text to explain with"
            )
        file = path / text_files[0]
        if sha256_file(file) != manifest.artefacts[text_files[0]]:
            raise ModelPackageInvalid(f"{text_files[0]} of {model_version} is damaged")
        ensemble = TreeEnsemble.from_lightgbm_text(file.read_text())
        if ensemble.feature_names and ensemble.feature_names != list(manifest.features):
            raise ModelPackageInvalid(
                f"the trees of {model_version} read inputs other than those its manifest lists"
            )
        return ensemble

    # --- the explanation -------------------------------------------------------------------

    def explain(self, entry: LogEntry, top: int) -> dict[str, Any]:
        """The explanation answer of a logged entry (CPU work: call it off the event loop)."""
        names = list(entry.feature_names)
        if not names:
            raise AnswerNotLogged(
                f"The logged answer for {self.spec.business_id} {entry.business_id!r} carries "
                f"no model input to explain (reasons: {', '.join(entry.reasons) or 'none'}): "
                "no model answered it (an outage policy's or the uncertain answer)."
            )
        row = [float(v) for v in entry.features]
        parts = self._parts(entry, names, row)
        several = len(parts) > 1
        phi = np.concatenate([weight * p.phi for p, weight in parts])
        shown = [f"{p.package}|{f}" if several else f for p, _ in parts for f in p.names]
        origin = [(p.package, f, weight) for p, weight in parts for f in p.names]
        index = {label: i for i, label in enumerate(shown)}
        values = [v for p, _ in parts for v in p.row]
        contributions = []
        for c in top_contributions(shown, values, phi, min(top, len(shown))):
            package, feature, weight = origin[index[c.feature]]
            item: dict[str, Any] = {
                "feature": feature,
                "value": c.value,
                "contribution": c.contribution,
                "text": self.spec.feature_text(feature, c.value),
            }
            if several or package != entry.model_version:
                item["package"], item["weight"] = package, weight
            contributions.append(item)
        return {
            self.spec.business_id: entry.business_id,
            "request_id": entry.request_id,
            "answered_at": entry.ts,
            "model_version": entry.model_version,
            "variant": entry.variant,
            "score": entry.score,
            "label": entry.label,
            "reasons": list(entry.reasons),
            "raw_score": sum(weight * p.raw for p, weight in parts),
            "expected_value": sum(weight * p.expected for p, weight in parts),
            "explained_by": [
                {
                    "package": p.package,
                    "weight": weight,
                    "raw_score": p.raw,
                    "expected_value": p.expected,
                }
                for p, weight in parts
            ],
            "contributions": contributions,
            "feature_freshness": {
                key: {"status": status, "age_seconds": entry.age_seconds.get(key)}
                for key, status in entry.statuses.items()
            },
        }

    def _parts(
        self, entry: LogEntry, names: list[str], row: list[float]
    ) -> list[tuple[_Part, float]]:
        """The packages that decided the answer, each with its share of it."""
        members = ensemble_members(names)
        if members is None:
            return [(self._part(entry, entry.model_version, names, row), 1.0)]
        ends = [m.start for m in members[1:]] + [len(names)]
        parts = [
            self._part(entry, m.package, m.features, row[m.start : end])
            for m, end in zip(members, ends, strict=True)
        ]
        if members[0].weight is None:  # ``max``: the member whose score answered, alone
            return [(max(parts, key=lambda p: p.raw), 1.0)]
        return [(p, float(m.weight or 0.0)) for p, m in zip(parts, members, strict=True)]

    def _part(self, entry: LogEntry, package: str, names: list[str], row: list[float]) -> _Part:
        name, _, version = package.partition("/")
        if name and version and ".." not in package:
            snapshot = package_dir(self.model_root, name, version)
            if (snapshot / ONLINE_DESCRIPTION).is_file():
                return self._online_part(entry, package, snapshot, names, row)
        ensemble = self.ensemble(package)
        if ensemble.feature_names and ensemble.feature_names != names:
            raise ModelPackageInvalid(
                f"the logged inputs of {entry.business_id!r} are not those of {package}"
            )
        return _Part(
            package,
            names,
            row,
            ensemble.contributions(row),
            ensemble.raw_score(row),
            ensemble.expected_value(),
        )

    def _online_part(
        self, entry: LogEntry, package: str, snapshot: Path, names: list[str], row: list[float]
    ) -> _Part:
        """An online learner's answer: its snapshot's linear contributions (log-odds)."""
        try:
            learner = OnlineLearner.load(snapshot, self.signing_key)
        except OnlineLearnerError as exc:
            raise ModelPackageInvalid(f"{package} cannot explain its answers: {exc}") from exc
        if learner.feature_names != names:
            raise ModelPackageInvalid(
                f"the logged inputs of {entry.business_id!r} are not those of {package}"
            )
        try:
            phi, raw, expected = learner.contributions(row)
        except OnlineLearnerError as exc:
            raise ModelPackageInvalid(f"{package} cannot explain its answers: {exc}") from exc
        return _Part(package, names, row, phi, raw, expected)


@dataclass(frozen=True)
class _Part:
    """One package's share of an explanation: its inputs, their contributions, its raw score."""

    package: str
    names: list[str]
    row: list[float]
    phi: np.ndarray
    raw: float
    expected: float


def _entry(row: dict[str, Any], join_keys: list[str]) -> LogEntry:
    """A log row read from parquet, as the entry it was written from."""
    statuses = dict(row[plog.STATUSES] or [])
    ages = dict(row[plog.AGE_SECONDS] or [])
    return LogEntry(
        request_id=row[plog.REQUEST_ID],
        business_id=row[plog.BUSINESS_ID],
        ts=row[plog.TS],
        domain=row[plog.DOMAIN],
        deployment=row[plog.DEPLOYMENT],
        variant=row[plog.VARIANT],
        model_version=row[plog.MODEL_VERSION],
        keys={key: row.get(key) for key in join_keys},
        features=[math.nan if v is None else v for v in row[plog.FEATURES] or []],
        feature_names=list(row[plog.FEATURE_NAMES] or []),
        statuses=statuses,
        age_seconds=ages,
        score=row[plog.SCORE],
        label=row[plog.LABEL],
        reasons=list(row[plog.REASONS] or []),
        latency_ms=row[plog.LATENCY_MS],
    )
