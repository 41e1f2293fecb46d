"""Safe rollout: validate a deployment completely, swap it atomically, roll back in one call.

The manager holds the live deployment's scorer in its holder's ``scorer`` (the served domain).
A new deployment is loaded and checked off the event loop (``LiveDeployment.load``); only when
every check holds is a new scorer built and put in place in one assignment. Requests that
started on the previous scorer keep it (they hold a reference) and finish on it; its
micro-batcher is closed once they have. The previous live deployments stay open, so a rollback
is a swap, not a reload. Every change is recorded: when, by which admin key (its id, never the
key), what changed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from feature_repo import clock
from scoring_service.core import metrics
from scoring_service.core.errors import DeploymentRefused, NotReady
from scoring_service.deployments.live import LiveDeployment
from scoring_service.deployments.spec import (
    DeploymentInvalid,
    DeploymentSpec,
    load_deployment,
    parse_deployment,
)

if TYPE_CHECKING:  # the manager swaps scorers it is given; it builds none itself
    from scoring_service.scoring.scorer import Scorer

logger = logging.getLogger(__name__)

KEEP_PREVIOUS = 5
"""Previous deployments kept open for an instant rollback."""


@dataclass(frozen=True)
class Change:
    """One entry of the deployment history."""

    at: datetime
    action: str  # start, apply, reload, rollback
    deployment: str
    by: str  # admin key id, "config" or "signal"
    changes: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "action": self.action,
            "deployment": self.deployment,
            "by": self.by,
            "changes": self.changes,
        }


def describe_changes(old: DeploymentSpec | None, new: DeploymentSpec) -> list[str]:
    """What differs between two deployments, in words."""
    if old is None:
        return [f"{v.name}: {v.source} at {v.weight:g}" for v in new.variants]
    out = []
    before = {v.name: v for v in old.variants}
    after = {v.name: v for v in new.variants}
    for name in after.keys() - before.keys():
        out.append(f"added {name}: {after[name].source} at {after[name].weight:g}")
    for name in before.keys() - after.keys():
        out.append(f"removed {name}: {before[name].source}")
    for name in after.keys() & before.keys():
        if after[name] != before[name]:
            out.append(
                f"{name}: {before[name].source} at {before[name].weight:g} -> "
                f"{after[name].source} at {after[name].weight:g}"
            )
    for kind in ("shadows", "fallback", "ensembles", "sticky_field", "salt"):
        if getattr(old, kind) != getattr(new, kind):
            out.append(f"{kind} changed")
    return sorted(out) or ["no change"]


class DeploymentManager:
    """The live deployment of a service, its history, and the swaps between them."""

    def __init__(
        self,
        state: Any,
        load: Callable[[DeploymentSpec], LiveDeployment],
        build: Callable[[LiveDeployment], Scorer],
        domain: str,
        file: Path | None = None,
    ) -> None:
        self.state = state  # the served domain: its `scorer` is what the routes read
        self._load = load
        self._build = build
        self.domain = domain
        self.file = file
        self.live: LiveDeployment | None = None
        self.previous: list[LiveDeployment] = []
        self.history: list[Change] = []
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()

    def start(self, live: LiveDeployment, scorer: Scorer) -> None:
        """The deployment the service starts with."""
        self.live = live
        self.state.scorer = scorer
        self._record("start", live.spec, "config", describe_changes(None, live.spec))

    async def apply(self, data: object, by: str, action: str = "apply") -> LiveDeployment:
        """Validate a deployment (data or a spec), swap it in; DeploymentRefused otherwise."""
        async with self._lock:
            try:
                spec = data if isinstance(data, DeploymentSpec) else parse_deployment(data)
                live = await asyncio.to_thread(self._load, spec)
            except DeploymentInvalid as exc:
                logger.warning("deployment refused, the live one keeps serving: %s", exc)
                raise DeploymentRefused(str(exc)) from exc
            self._swap(live, action, by)
            return live

    async def reload_file(self, by: str = "signal") -> LiveDeployment | None:
        """Re-read the deployment file (SIGHUP); a refused file leaves the live one."""
        if self.file is None:
            return None
        try:
            spec = load_deployment(self.file)
        except DeploymentInvalid as exc:
            logger.warning("deployment file refused, the live one keeps serving: %s", exc)
            return None
        try:
            return await self.apply(spec, by, action="reload")
        except DeploymentRefused:
            return None

    async def rollback(self, by: str) -> LiveDeployment:
        """Put the previous deployment back (already open: no loading)."""
        async with self._lock:
            if not self.previous:
                raise DeploymentRefused("There is no previous deployment to roll back to.")
            live = self.previous.pop()
            self._swap(live, "rollback", by, keep_current=False)
            return live

    def _swap(self, live: LiveDeployment, action: str, by: str, keep_current: bool = True) -> None:
        if self.live is None:
            raise NotReady("The scoring service is starting or stopping; retry in a moment.")
        old_spec = self.live.spec
        scorer = self._build(live)
        scorer.start()
        retired: Scorer | None = self.state.scorer
        self.state.scorer = scorer  # the swap: one assignment; new requests see the new one
        if keep_current:
            self.previous.append(self.live)
            del self.previous[:-KEEP_PREVIOUS]
        metrics.DEPLOYMENT_INFO.labels(self.domain, old_spec.name).set(0)
        self.live = live
        self._record(action, live.spec, by, describe_changes(old_spec, live.spec))
        if retired is not None:
            # Requests that started on the old scorer finish on it; then its batcher closes.
            task = asyncio.get_running_loop().create_task(retired.retire())
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    def _record(self, action: str, spec: DeploymentSpec, by: str, changes: list[str]) -> None:
        metrics.DEPLOYMENT_INFO.labels(self.domain, spec.name).set(1)
        self.history.append(Change(clock.now(), action, spec.name, by, changes))
        logger.info("deployment %s (%s by %s): %s", spec.name, action, by, "; ".join(changes))

    def describe(self) -> dict[str, Any]:
        """The live deployment and the history, for GET /admin/deployments."""
        live = self.live
        return {
            "live": live.spec.model_dump(mode="json") if live else None,
            "packages": {ref: m.version_label for ref, m in live.models.items()} if live else {},
            "rollback_to": self.previous[-1].spec.name if self.previous else None,
            "history": [c.as_dict() for c in self.history],
        }
