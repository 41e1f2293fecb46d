"""The decision log: every run, gate result, promotion and rollback, with its evidence.

One JSON object per line, appended and never rewritten (``data/orchestration/decisions.jsonl``
by default). Each record says when, what kind of decision, which run of which job made it, what
triggered that run and who or what started it, the versions involved, the figures and the
evidence. Appends take an exclusive lock on the file, so concurrent steps of a run (Dagster's
multiprocess executor) never interleave lines. ``python -m orchestration decisions`` reads it;
the assets also attach the records they append to their Dagster metadata, so the UI shows them.
"""

from __future__ import annotations

import fcntl
import getpass
import json
import math
import os
import uuid
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from feature_repo import clock

Kind = Literal[
    "run", "gate", "verdict", "rollout", "promotion", "rollback", "monitor", "trigger", "scoring"
]
KINDS: tuple[str, ...] = (
    "run",
    "gate",
    "verdict",
    "rollout",
    "promotion",
    "rollback",
    "monitor",
    "trigger",
    "scoring",
)

# Run tags the orchestration sets on the runs it requests (sensors) and reads back here.
TRIGGER_TAG = "platform/trigger"
STARTED_BY_TAG = "platform/started_by"
# Tags Dagster sets on runs started by a schedule, a sensor or a backfill.
_SCHEDULE_TAG = "dagster/schedule_name"
_SENSOR_TAG = "dagster/sensor_name"
_BACKFILL_TAG = "dagster/backfill"
_USER_TAG = "dagster/user"


class Decision(BaseModel):
    """One line of the log."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(default_factory=lambda: uuid.uuid4().hex, description="Unique record id.")
    time: datetime = Field(default_factory=clock.now, description="When it was decided (UTC).")
    kind: Kind
    run_id: str = Field(default="", description="Dagster run that decided it.")
    job: str = Field(default="", description="Job of that run.")
    trigger: str = Field(default="manual", description="Why the run started.")
    started_by: str = Field(default="", description="Who or what started the run.")
    subject: str = Field(default="", description="What is decided on: a gate, an asset, a job.")
    passed: bool | None = Field(default=None, description="A gate's or a verdict's outcome.")
    candidate: str | None = Field(default=None, description="Candidate package name/version.")
    champion: str | None = Field(default=None, description="Champion package name/version.")
    message: str = ""
    metrics: dict[str, Any] = Field(default_factory=dict)
    evidence: dict[str, Any] = Field(default_factory=dict)


class RunInfo(BaseModel):
    """What every record of one run shares."""

    run_id: str = ""
    job: str = ""
    trigger: str = "manual"
    started_by: str = ""


def run_info(run_id: str, job: str, tags: Mapping[str, str]) -> RunInfo:
    """Trigger and starter of a run, from its tags (schedule, sensor, backfill, or by hand)."""
    if TRIGGER_TAG in tags:
        trigger = tags[TRIGGER_TAG]
    elif _SCHEDULE_TAG in tags:
        trigger = f"schedule {tags[_SCHEDULE_TAG]}"
    elif _SENSOR_TAG in tags:
        trigger = f"sensor {tags[_SENSOR_TAG]}"
    elif _BACKFILL_TAG in tags:
        trigger = f"backfill {tags[_BACKFILL_TAG]}"
    else:
        trigger = "manual"
    if STARTED_BY_TAG in tags:
        started_by = tags[STARTED_BY_TAG]
    elif _USER_TAG in tags:
        started_by = tags[_USER_TAG]
    elif trigger == "manual":
        # Launched from the UI, the CLI or the API: Dagster's open-source UI records no user, so
        # the account the run executed under is what is known.
        started_by = f"a person: UI, CLI or API (account {getpass.getuser()})"
    else:
        started_by = "dagster daemon"
    return RunInfo(run_id=run_id, job=job, trigger=trigger, started_by=started_by)


def json_safe(value: Any) -> Any:
    """NaN and infinities are not JSON: null in the file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


class DecisionLog:
    """The append-only JSONL file of decisions."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def append(self, decision: Decision) -> Decision:
        """Append one record (under an exclusive lock); returns it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(json_safe(decision.model_dump(mode="json")), sort_keys=True)
        with self.path.open("a", encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                handle.write(line + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return decision

    def record(self, run: RunInfo, kind: Kind, subject: str, **fields: Any) -> Decision:
        """Append a record of ``run``."""
        return self.append(Decision(kind=kind, subject=subject, **run.model_dump(), **fields))

    def record_run_once(self, run: RunInfo, **fields: Any) -> Decision | None:
        """The run's own record, appended by the first step of the run that gets here."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a+", encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                handle.seek(0)
                for line in handle:
                    if not line.strip():
                        continue
                    seen = json.loads(line)
                    if seen.get("kind") == "run" and seen.get("run_id") == run.run_id:
                        return None
                decision = Decision(kind="run", subject=run.job, **run.model_dump(), **fields)
                handle.write(
                    json.dumps(json_safe(decision.model_dump(mode="json")), sort_keys=True)
                )
                handle.write("\n")
                handle.flush()
                os.fsync(handle.fileno())
                return decision
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def __iter__(self) -> Iterator[Decision]:
        if not self.path.is_file():
            return
        with self.path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    yield Decision.model_validate_json(line)
                except ValueError as exc:
                    raise ValueError(
                        f"{self.path}:{number} is not a decision record: {exc}"
                    ) from exc

    def read(
        self,
        *,
        kinds: Iterable[str] | None = None,
        run_id: str | None = None,
        candidate: str | None = None,
        failed_only: bool = False,
    ) -> list[Decision]:
        """The records, oldest first, filtered."""
        wanted = set(kinds) if kinds else None
        out = []
        for decision in self:
            if wanted is not None and decision.kind not in wanted:
                continue
            if run_id is not None and not decision.run_id.startswith(run_id):
                continue
            if candidate is not None and decision.candidate != candidate:
                continue
            if failed_only and decision.passed is not False:
                continue
            out.append(decision)
        return out


def as_metadata(decisions: Iterable[Decision]) -> list[dict[str, Any]]:
    """Records as JSON-ready dicts, for Dagster metadata."""
    return [json_safe(d.model_dump(mode="json")) for d in decisions]
