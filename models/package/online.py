"""The online package: a River learner that learns labels as they mature, and its sealed snapshots.

A label event names a business id, its label, and when the label became known (``matured_at``:
a chargeback, a confirmed report, the end of the dispute window). The learner learns only what
serving saw and only what was known by then:

- its input is the feature vector logged with that business id's answer in the prediction log
  (``feature_repo/prediction_log.py``; the champion's row, the first answer given), never a
  vector read again later;
- a label is learned once its ``matured_at`` has passed (``feature_repo.clock``: the one wall
  clock) and an answer for its id is in the log; until then it waits, however early it arrived.
  Each business id is learned at most once.

The model is River's (``learn_one`` / ``predict_proba_one`` on dict inputs): feature scaling
then logistic regression, missing values left out of the row. Its state is snapshotted every
``snapshot_every`` labels as a sealed, versioned package ``<root>/<name>/v<n>`` (``online.json``
describing it, ``state.pkl`` the pickled learner; sealed and optionally signed like every model
package, ``models.package.seal``); ``OnlineLearner.restore`` loads the newest one after a
restart, after verifying its seal. Package kind: :data:`KIND`.

The learner and its format live with the package format because training-side code (the
replay, ``orchestration``) and serving (``scoring_service.deployments.online``, which hosts a
learner in a deployment and reads its labels' vectors from the prediction log) both use it.
River is the optional extra ``online``: it is imported when a learner is built or restored.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import numpy as np

from feature_repo import clock
from models.package.seal import seal_package, sha256_file, verify_package

#: The package kind an online learner's snapshots declare (``online.json``'s ``kind``).
KIND: Final = "river-online"
DESCRIPTION_FILE: Final = "online.json"
STATE_FILE: Final = "state.pkl"


class OnlineLearnerError(ValueError):
    """An online package that cannot be restored, or labels the learner cannot use."""


@dataclass(frozen=True)
class LabelEvent:
    """A label that became known: the business id it is for, 1 (positive) or 0, and when."""

    business_id: str
    label: int
    matured_at: datetime


@dataclass(frozen=True)
class LoggedAnswer:
    """What serving saw for one business id: its logged feature vector and when it answered."""

    features: Sequence[float]
    feature_names: Sequence[str]
    answered_at: datetime


AnswerLookup = Callable[[Sequence[str]], Mapping[str, LoggedAnswer]]


def default_model() -> Any:
    """Scaling, then logistic regression (River): cheap per label, stable online."""
    from river import compose, linear_model, optim, preprocessing

    return compose.Pipeline(
        preprocessing.StandardScaler(),
        linear_model.LogisticRegression(optimizer=optim.SGD(0.05), l2=1e-4),
    )


def _row(names: Sequence[str], values: Sequence[float]) -> dict[str, float]:
    """A feature vector as River's dict input; missing (NaN) values are left out."""
    return {name: float(v) for name, v in zip(names, values, strict=True) if v == v}


class OnlineLearner:
    """A River model that learns matured labels from the prediction log's vectors."""

    def __init__(
        self,
        feature_names: Sequence[str],
        *,
        base_package: str,
        model: Any | None = None,
        snapshot_every: int = 1_000,
    ) -> None:
        if snapshot_every < 1:
            raise ValueError("snapshot_every must be at least 1")
        self.feature_names = list(feature_names)
        self.base_package = base_package
        self.model = model if model is not None else default_model()
        self.snapshot_every = snapshot_every
        self.pending: dict[str, LabelEvent] = {}  # offered, not learned yet
        self.learned_ids: set[str] = set()
        self.positives = 0
        self.version = 0  # of the last snapshot
        self._since_snapshot = 0

    @property
    def labels_learned(self) -> int:
        """How many labels the model has learned."""
        return len(self.learned_ids)

    # --- predicting ---------------------------------------------------------------------------

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """Probability of the positive label per row of ``[n, features]`` (the package's order)."""
        out = np.empty(len(matrix), dtype=np.float64)
        for i, values in enumerate(np.asarray(matrix, dtype=np.float64)):
            proba = self.model.predict_proba_one(_row(self.feature_names, values))
            out[i] = float(proba.get(True, 0.0))
        return out

    def contributions(self, values: Sequence[float]) -> tuple[np.ndarray, float, float]:
        """One row explained: each input's contribution to the log-odds (its weight times its
        scaled value; 0 for a missing value), the log-odds, and the expected value (the
        intercept: the log-odds at the inputs' running means). Contributions plus the expected
        value equal the log-odds, whose logistic function is :meth:`predict`'s probability.
        OnlineLearnerError for a model that is not scaling then logistic regression."""
        steps = getattr(self.model, "steps", {})
        scaler, linear = steps.get("StandardScaler"), steps.get("LogisticRegression")
        if scaler is None or linear is None or len(steps) != 2:
            raise OnlineLearnerError(
                "only a learner of scaling then logistic regression (the default) is explained"
            )
        scaled = scaler.transform_one(_row(self.feature_names, values))
        weights = linear.weights
        phi = np.array(
            [float(weights.get(n, 0.0)) * float(scaled.get(n, 0.0)) for n in self.feature_names]
        )
        expected = float(linear.intercept)
        return phi, float(phi.sum()) + expected, expected

    # --- learning -----------------------------------------------------------------------------

    def offer(self, labels: Iterable[LabelEvent]) -> int:
        """Take labels to learn once matured (a label already learned is ignored); how many
        were taken. ValueError for a label that is not 0 or 1."""
        taken = 0
        for event in labels:
            if event.label not in (0, 1):
                raise OnlineLearnerError(
                    f"label {event.label!r} of {event.business_id!r} is not 0 or 1; send the "
                    "domain's positive label as 1 and every other one as 0"
                )
            if event.business_id in self.learned_ids:
                continue
            self.pending[event.business_id] = event
            taken += 1
        return taken

    def learn_matured(
        self,
        answers: AnswerLookup,
        *,
        now: datetime | None = None,
        snapshot_root: Path | None = None,
        name: str = "online",
        signing_key: bytes | None = None,
    ) -> int:
        """Learn every pending label matured by ``now`` (default: the platform clock) whose
        answer is logged; how many were learned. With ``snapshot_root``, a package is written
        each time ``snapshot_every`` labels have been learned since the last one."""
        now = now or clock.now()
        due = sorted(
            (e for e in self.pending.values() if e.matured_at <= now),
            key=lambda e: (e.matured_at, e.business_id),
        )
        if not due:
            return 0
        logged = answers([e.business_id for e in due])
        learned = 0
        for event in due:
            answer = logged.get(event.business_id)
            if answer is None or answer.answered_at > event.matured_at:
                continue  # no answer seen yet: it waits for one
            row = _row(answer.feature_names, answer.features)
            unknown = set(row) - set(self.feature_names)
            if unknown:
                raise OnlineLearnerError(
                    f"the logged answer of {event.business_id!r} has features "
                    f"{sorted(unknown)[:5]} this learner does not know; it learns the vectors of "
                    f"{self.base_package} only"
                )
            self.model.learn_one(row, bool(event.label))
            del self.pending[event.business_id]
            self.learned_ids.add(event.business_id)
            self.positives += event.label
            learned += 1
            self._since_snapshot += 1
            if snapshot_root is not None and self._since_snapshot >= self.snapshot_every:
                self.snapshot(snapshot_root, name, signing_key)
        return learned

    # --- snapshots ----------------------------------------------------------------------------

    def snapshot(self, root: Path, name: str, signing_key: bytes | None = None) -> Path:
        """Write the learner as the next sealed version ``<root>/<name>/v<n>``, atomically."""
        import river

        version = max(self.version, newest_version(root, name)) + 1
        target = Path(root) / name / f"v{version}"
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".v{version}.", dir=target.parent))
        try:
            self.version = version
            self._since_snapshot = 0
            (staging / STATE_FILE).write_bytes(pickle.dumps(self, protocol=5))
            description = {
                "kind": KIND,
                "name": name,
                "version": f"v{version}",
                "base_package": self.base_package,
                "feature_names": self.feature_names,
                "labels_learned": self.labels_learned,
                "positives": self.positives,
                "labels_pending": len(self.pending),
                "library": {"river": river.__version__},
                "created_at": clock.now().isoformat(),
                "artefacts": {STATE_FILE: sha256_file(staging / STATE_FILE)},
            }
            (staging / DESCRIPTION_FILE).write_text(json.dumps(description, indent=2) + "\n")
            seal_package(staging, signing_key)
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return target

    @classmethod
    def restore(
        cls, root: Path, name: str, signing_key: bytes | None = None
    ) -> OnlineLearner | None:
        """The newest sealed snapshot of ``name`` (None when there is none); its seal and
        checksums are verified first (OnlineLearnerError naming what is wrong)."""
        version = newest_version(root, name)
        if version == 0:
            return None
        return cls.load(Path(root) / name / f"v{version}", signing_key)

    @classmethod
    def load(cls, path: Path, signing_key: bytes | None = None) -> OnlineLearner:
        """One snapshot ``<root>/<name>/v<n>``, its seal and checksums verified first."""
        path = Path(path)
        try:
            verify_package(path, signing_key)
            description = json.loads((path / DESCRIPTION_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise OnlineLearnerError(f"online package {path} cannot be restored: {exc}") from exc
        if description.get("kind") != KIND:
            raise OnlineLearnerError(f"{path} is a {description.get('kind')!r} package, not {KIND}")
        if sha256_file(path / STATE_FILE) != description["artefacts"][STATE_FILE]:
            raise OnlineLearnerError(f"{path}/{STATE_FILE} does not match its checksum")
        try:
            learner = pickle.loads((path / STATE_FILE).read_bytes())  # verified above
        except ImportError as exc:
            raise OnlineLearnerError(
                f"{path} needs River to be restored ({exc}); install the `online` extra"
            ) from exc
        if not isinstance(learner, cls):
            raise OnlineLearnerError(f"{path}/{STATE_FILE} does not hold an online learner")
        return learner


def newest_version(root: Path, name: str) -> int:
    folder = Path(root) / name
    if not folder.is_dir():
        return 0
    versions = [
        int(p.name[1:])
        for p in folder.iterdir()
        if p.is_dir() and p.name.startswith("v") and p.name[1:].isdigit()
    ]
    return max(versions, default=0)
