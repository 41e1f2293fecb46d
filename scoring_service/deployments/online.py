"""An online learner in a deployment: its snapshots served beside the batch champion, and the
prediction log's vectors it learns from.

The learner and its package format are ``models.package.online`` (River: ``learn_one`` /
``predict_proba_one``; sealed snapshots ``<root>/<name>/v<n>``). Here:

- :class:`OnlineScorer`: a deployment's challenger or shadow naming ``online: <name>`` scores
  with the newest snapshot of that learner, on the input matrix of its base package (the batch
  package whose logged vectors it learns); a newer snapshot, written by the learning process,
  is picked up within ``refresh_seconds`` after its seal is verified. A snapshot that fails its
  seal is refused and the one in use stays;
- :func:`log_answers`: for label events, the vector serving logged with each business id's
  answer (``feature_repo/prediction_log.py``; the log keeps business ids as they are and
  pseudonymizes entity ids, which a learner does not need);
- :func:`learn_from_labels`: one learning pass (the ``online-learn`` command): offer label
  events, learn those matured by now whose answer is logged, snapshot.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from feature_repo import prediction_log as plog
from models.package.online import (
    DESCRIPTION_FILE,
    KIND,
    STATE_FILE,
    AnswerLookup,
    LabelEvent,
    LoggedAnswer,
    OnlineLearner,
    OnlineLearnerError,
    default_model,
    newest_version,
)

__all__ = [
    "DESCRIPTION_FILE",
    "KIND",
    "STATE_FILE",
    "AnswerLookup",
    "LabelEvent",
    "LearnPass",
    "LoggedAnswer",
    "OnlineLearner",
    "OnlineLearnerError",
    "OnlineScorer",
    "default_model",
    "learn_from_labels",
    "log_answers",
    "newest_version",
    "read_base_package",
]

logger = logging.getLogger(__name__)

#: How often a served learner looks for a newer snapshot (seconds).
REFRESH_SECONDS = 5.0


def read_base_package(root: Path, name: str) -> str:
    """The base package (``name/version``) of the newest snapshot of learner ``name``;
    OnlineLearnerError when it has none."""
    version = newest_version(root, name)
    if version == 0:
        raise OnlineLearnerError(
            f"online learner {name!r} has no snapshot under {root}/{name}; start it with "
            f"`python -m scoring_service online-learn --name {name} --base <package>` first"
        )
    description = Path(root) / name / f"v{version}" / DESCRIPTION_FILE
    try:
        data = json.loads(description.read_text())
    except (OSError, ValueError) as exc:
        raise OnlineLearnerError(f"{description} cannot be read: {exc}") from exc
    if data.get("kind") != KIND:
        raise OnlineLearnerError(f"{description} is a {data.get('kind')!r} package, not {KIND}")
    return str(data["base_package"])


class OnlineScorer:
    """The newest sealed snapshot of one learner, refreshed when the learning process writes a
    newer one; scores rows of its base package's input matrix."""

    def __init__(
        self,
        root: Path,
        name: str,
        *,
        feature_names: Sequence[str],
        base_package: str,
        signing_key: bytes | None = None,
        refresh_seconds: float = REFRESH_SECONDS,
    ) -> None:
        self.root, self.name = Path(root), name
        self.signing_key = signing_key
        self.refresh_seconds = refresh_seconds
        self.base_package = base_package
        self.feature_names = list(feature_names)
        self._lock = threading.Lock()
        self._checked = 0.0
        learner = self._restore()
        if learner is None:
            raise OnlineLearnerError(f"online learner {name!r} has no snapshot under {root}")
        self.learner = learner

    @property
    def version(self) -> str:
        """``<name>/v<n>``: the snapshot answering now."""
        return f"{self.name}/v{self.learner.version}"

    def _restore(self) -> OnlineLearner | None:
        learner = OnlineLearner.restore(self.root, self.name, self.signing_key)
        if learner is None:
            return None
        if learner.base_package != self.base_package:
            raise OnlineLearnerError(
                f"snapshot v{learner.version} of {self.name!r} learns {learner.base_package}, "
                f"but the deployment serves it on {self.base_package}"
            )
        if learner.feature_names != self.feature_names:
            raise OnlineLearnerError(
                f"snapshot v{learner.version} of {self.name!r} has other features than its base "
                f"package {self.base_package}"
            )
        return learner

    def refresh(self, now: float | None = None) -> bool:
        """Swap in a newer snapshot when one is there (checked once per ``refresh_seconds``);
        whether it swapped. A snapshot that cannot be restored is logged and skipped."""
        now = time.monotonic() if now is None else now
        if now - self._checked < self.refresh_seconds or not self._lock.acquire(blocking=False):
            return False
        try:
            self._checked = now
            if newest_version(self.root, self.name) <= self.learner.version:
                return False
            try:
                learner = self._restore()
            except OnlineLearnerError as exc:
                logger.error("online learner %s: newer snapshot refused: %s", self.name, exc)
                return False
            if learner is None or learner.version <= self.learner.version:
                return False
            self.learner = learner
            logger.info("online learner %s: now answering with %s", self.name, self.version)
            return True
        finally:
            self._lock.release()

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """Probabilities of the rows of the base package's input matrix."""
        self.refresh()
        return self.learner.predict(matrix)


@dataclass(frozen=True)
class LearnPass:
    """What one learning pass did."""

    offered: int
    learned: int
    pending: int
    labels_learned: int
    snapshot: str | None


def learn_from_labels(
    root: Path,
    name: str,
    labels: Iterable[LabelEvent],
    answers: AnswerLookup,
    *,
    base_package: str | None = None,
    feature_names: Sequence[str] | None = None,
    snapshot_every: int = 1_000,
    now: datetime | None = None,
    signing_key: bytes | None = None,
) -> LearnPass:
    """One pass of the learning process: restore the learner (or start one on ``base_package``
    with ``feature_names``), offer the labels, learn those matured by ``now`` whose answer is
    logged, and write a snapshot when it learned anything or has none yet."""
    learner = OnlineLearner.restore(root, name, signing_key)
    if learner is None:
        if base_package is None or feature_names is None:
            raise OnlineLearnerError(
                f"online learner {name!r} has no snapshot yet: name its base package to start it"
            )
        learner = OnlineLearner(
            feature_names, base_package=base_package, snapshot_every=snapshot_every
        )
    elif base_package is not None and base_package != learner.base_package:
        raise OnlineLearnerError(
            f"online learner {name!r} learns the vectors of {learner.base_package}, not "
            f"{base_package}; start a learner of another name for that package"
        )
    learner.snapshot_every = snapshot_every
    offered = learner.offer(labels)
    learned = learner.learn_matured(
        answers, now=now, snapshot_root=Path(root), name=name, signing_key=signing_key
    )
    written = None
    if learned or learner.version == 0:
        written = str(learner.snapshot(Path(root), name, signing_key))
    return LearnPass(offered, learned, len(learner.pending), learner.labels_learned, written)


def log_answers(
    root: Path,
    *,
    variant: str | None = None,
    feature_names: Sequence[str] | None = None,
) -> AnswerLookup:
    """Answers from a prediction log (``root``: the domain's log folder): for each business id,
    the first answer logged (of ``variant`` when given) whose vector has ``feature_names`` when
    given (a learner's base package's: the champion's rows, or the learner's own answers as a
    challenger)."""
    wanted = None if feature_names is None else list(feature_names)

    def lookup(business_ids: Sequence[str]) -> dict[str, LoggedAnswer]:
        where = pc.field(plog.BUSINESS_ID).isin(list(business_ids))
        if variant is not None:
            where = where & (pc.field(plog.VARIANT) == variant)
        columns = [plog.BUSINESS_ID, plog.TS, plog.FEATURES, plog.FEATURE_NAMES]
        try:
            table = plog.read(root, columns=columns, where=where)
        except (FileNotFoundError, OSError, ValueError):  # no log, or no file written yet
            return {}
        out: dict[str, LoggedAnswer] = {}
        rows = sorted(table.to_pylist(), key=lambda r: r[plog.TS])
        for row in rows:
            business_id = row[plog.BUSINESS_ID]
            if business_id in out or row[plog.FEATURES] is None:
                continue
            if wanted is not None and list(row[plog.FEATURE_NAMES]) != wanted:
                continue  # another package's vector (a fallback step, an ensemble)
            out[business_id] = LoggedAnswer(
                row[plog.FEATURES], row[plog.FEATURE_NAMES], row[plog.TS]
            )
        return out

    return lookup
