"""A model family's members in one process: the default always loaded, the others on demand,
within a memory budget.

A family variant (``families:`` in the deployment file, ``scoring_service/deployments/spec.py``)
answers each row with the member of its segment, or with the default member where the segment
has none. The segment is the value of a request field (``segment_field``) or of a stored feature
the default reads (``segment_feature``: an entity's code or count, as read with the row's other
features; a row whose value is missing, past its view's TTL or not an integer has no segment),
keyed as training keyed it (``models.package.segment_key``). Members load on their segment's
first request:

- **Who answers while a member loads: the default, at once.** The load runs in a background
  thread and the request does not wait for it: a load (seal, checksums, the feature store check,
  an ONNX Runtime session and its warm-up) takes milliseconds on a quiet machine and tens of them
  on a busy one, more than a score's whole budget, while the default answers in the time of any
  other row. The answer says so (reason ``family_member_loading``); the segment's next requests
  find the member resident. A member reloaded after its eviction hashes no unchanged file again
  (``packages.FileDigests``): its seal is recomputed from the digests remembered.
- **One load per member** however many requests ask for it at once (single flight): the first
  starts it, the others find it in flight and are answered by the default meanwhile.
- **The budget** (``SCORING_MODEL_MEMORY_MB``) bounds the bytes of the members' graphs held in
  sessions (the default's are not counted: it is never evicted). A member that arrives when the
  budget is full evicts the least recently used members that no micro-batch is scoring at that
  moment; if that does not make room, the new member is not kept (its rows keep the default).
- **Admission by frequency** (``SCORING_MODEL_ADMISSION=frequency``, the default; TinyLFU's
  rule). Since a segment's first request is answered by the default anyway, a load only pays
  if the member stays resident until its segment's next requests. So when the budget is full, a
  member is loaded only if its segment has been asked for more often than the segment of the
  member it would evict (the least recently used one not in use). Otherwise its rows get the
  default's answer with reason ``family_member_infrequent``. The counts are rows asked per
  member, up to ``COUNT_CAP``, all halved every ``AGING_PER_MEMBER`` rows per member of the
  family: a segment whose traffic grows is admitted as soon as it outnumbers the least recently
  used member's, and a past burst counts for a few halvings at most. Eviction stays least
  recently used. Under a skewed mix this keeps the members of mid-ranked segments from being
  evicted by one-off requests of rare ones: fewer loads, and a higher hit rate. ``recency``
  loads every member asked for (plain LRU).
- **A member that fails its checks** (its seal, checksums, another feature list than the
  default's, a graph that does not load) is refused: it is not retried until the deployment is
  reloaded, and its rows get the default's answer with reason ``family_member_refused`` (the
  log names the fault).
- A micro-batch is split by member: one model call per member present in it.

Metrics (per family): ``scoring_family_loads_total{outcome}``, ``scoring_family_evictions_total``,
``scoring_family_requests_total{result}`` (hit, loading, infrequent, refused, default),
``scoring_family_resident_bytes``, ``scoring_family_resident_members`` and
``scoring_family_load_seconds``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from scoring_service.core import metrics
from scoring_service.core.errors import ModelPackageInvalid
from scoring_service.deployments.packages import LoadedModel, same_inputs

logger = logging.getLogger(__name__)

HIT = "hit"
LOADING = "loading"
REFUSED = "refused"
DEFAULT = "default"
INFREQUENT = "infrequent"
MEMBER_LOADING = "family_member_loading"
MEMBER_REFUSED = "family_member_refused"
MEMBER_INFREQUENT = "family_member_infrequent"
LOAD_THREADS = 2
# Admission policies (SCORING_MODEL_ADMISSION): by frequency when the budget is full, or always.
FREQUENCY = "frequency"
RECENCY = "recency"
ADMISSIONS = (FREQUENCY, RECENCY)
# The admission counts are halved every this many rows per member of the family, and at least
# every AGING_MIN_ROWS rows; a count stops at COUNT_CAP, so that a segment once hot and now
# silent, its member the next to evict, blocks the admission of others for a few halvings at
# most. On the bench's family row (200 members, 50 fit, a Zipf mix) 50 rows per member made about
# a sixth of the loads that 10 did, at the same hit rate.
AGING_PER_MEMBER = 50
AGING_MIN_ROWS = 100
COUNT_CAP = 63


def resident_bytes(model: LoadedModel) -> int:
    """What a loaded member is counted for: the bytes of the graphs its sessions hold."""
    graphs = [model.manifest.graphs["cpu"]]
    if model.device == "cuda" and "gpu" in model.manifest.graphs:
        graphs.append(model.manifest.graphs["gpu"])
    return sum((model.path / g.file).stat().st_size for g in graphs)


@dataclass
class Resident:
    """A member in memory: its view over the deployment's feature read, and its size."""

    view: object  # live.ModelView (a family lives below the live deployment that owns it)
    package: str
    size: int
    shares_inputs: bool  # reads the default's inputs the same way (``packages.same_inputs``)
    in_use: int = 0


@dataclass
class Route:
    """The rows of one micro-batch answered by one member (or the default)."""

    rows: np.ndarray  # positions among the rows asked
    view: object
    package: str
    reason: str | None  # why the default answers a segment that has a member
    shares_inputs: bool = True  # the member reads the default's inputs the same way


class FamilyMembers:
    """One family's members: lookup, single-flight loads, LRU eviction within a budget."""

    def __init__(
        self,
        name: str,
        segment_field: str,
        members: dict[str, str],
        default: LoadedModel,
        *,
        view: Callable[[LoadedModel], object],
        load: Callable[[str], LoadedModel],
        budget_bytes: int | None,
        admission: str = FREQUENCY,
        segment_column: int | None = None,
    ) -> None:
        if admission not in ADMISSIONS:
            raise ValueError(f"admission must be one of {ADMISSIONS}, not {admission!r}")
        self.name = name
        self.segment_field = segment_field
        # Where the segment is a stored feature: its column in the deployment's feature batch.
        self.segment_column = segment_column
        self.members = dict(members)
        self.default = default
        self.default_package = default.version_label
        self.default_view = view(default)
        self.budget_bytes = budget_bytes  # None: no limit
        self._view = view
        self._load = load
        self._lock = threading.Lock()
        self._resident: OrderedDict[str, Resident] = OrderedDict()
        self._loading: dict[str, Future[None]] = {}
        self.refused: dict[str, str] = {}
        self.admission = admission
        self._asked: dict[str, int] = {}  # rows asked per member since the last halvings
        self._counted = 0
        self._aging_rows = max(AGING_MIN_ROWS, AGING_PER_MEMBER * len(self.members))
        self._sizes: dict[str, int] = {}  # the size of each member loaded before
        self._used = 0  # bytes of the resident members
        self._pool = ThreadPoolExecutor(LOAD_THREADS, thread_name_prefix=f"family-{name}")
        self._requests = {
            result: metrics.FAMILY_REQUESTS.labels(name, result)
            for result in (HIT, LOADING, INFREQUENT, REFUSED, DEFAULT)
        }
        self._bytes = metrics.FAMILY_RESIDENT_BYTES.labels(name)
        self._members = metrics.FAMILY_RESIDENT_MEMBERS.labels(name)
        self._evictions = metrics.FAMILY_EVICTIONS.labels(name)
        self._bytes.set(0)
        self._members.set(0)

    # --- what the request path asks ------------------------------------------------------------

    @contextmanager
    def routes(self, segments: Sequence[object]) -> Iterator[list[Route]]:
        """The rows of each member present among ``segments``; the members used stay resident
        until the block ends (a member in use is never evicted)."""
        groups: dict[object, list[int]] = {}
        for i, value in enumerate(segments):
            rows = groups.get(value)
            if rows is None:
                groups[value] = [i]
            else:
                rows.append(i)
        out: list[Route] = []
        held: list[Resident] = []
        default_rows: list[int] = []
        counted = dict.fromkeys(self._requests, 0)  # rows by result: one metric write each
        with self._lock:
            for value, rows in groups.items():
                package = self.members.get("" if value is None else str(value))
                if package is None:
                    default_rows += rows
                    counted[DEFAULT] += len(rows)
                    continue
                self._count(package, len(rows))
                resident = self._resident.get(package)
                if resident is not None:
                    self._resident.move_to_end(package)
                    resident.in_use += 1
                    held.append(resident)
                    counted[HIT] += len(rows)
                    out.append(
                        Route(
                            np.asarray(rows), resident.view, package, None, resident.shares_inputs
                        )
                    )
                    continue
                if package in self.refused:
                    reason = MEMBER_REFUSED
                    counted[REFUSED] += len(rows)
                elif package in self._loading or self._admits(package):
                    reason = MEMBER_LOADING
                    counted[LOADING] += len(rows)
                    self._start_load(package)
                else:
                    reason = MEMBER_INFREQUENT
                    counted[INFREQUENT] += len(rows)
                out.append(Route(np.asarray(rows), self.default_view, self.default_package, reason))
        for result, rows_counted in counted.items():
            if rows_counted:
                self._requests[result].inc(rows_counted)
        if default_rows:
            out.append(
                Route(
                    np.asarray(sorted(default_rows)), self.default_view, self.default_package, None
                )
            )
        try:
            yield out
        finally:
            with self._lock:
                for resident in held:
                    resident.in_use -= 1

    def resident(self) -> list[str]:
        """The members in memory, least recently used first."""
        with self._lock:
            return list(self._resident)

    def wait_loads(self, timeout: float | None = None) -> None:
        """Wait for the loads in flight (tests and the bench)."""
        with self._lock:
            pending = list(self._loading.values())
        for future in pending:
            future.result(timeout)

    def close(self) -> None:
        """Stop taking loads; the ones in flight finish in the background."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- admission, loading and eviction -------------------------------------------------------

    def _count(self, package: str, rows: int) -> None:
        """Under the lock: count a member's rows asked; every ``_aging_rows`` rows, halve all."""
        self._asked[package] = min(COUNT_CAP, self._asked.get(package, 0) + rows)
        self._counted += rows
        if self._counted >= self._aging_rows:
            self._counted = 0
            self._asked = {p: n // 2 for p, n in self._asked.items() if n > 1}

    def _admits(self, package: str) -> bool:
        """Under the lock: whether to load a member not resident (nor loading). Always while the
        budget has room for it and the loads in flight; when it is full, only if the member has
        been asked for more often than the least recently used member not in use (the one its
        arrival would evict)."""
        if self.admission == RECENCY or self.budget_bytes is None:
            return True
        typical = self._used // len(self._resident) if self._resident else 0
        needed = sum(self._sizes.get(p, typical) for p in (package, *self._loading))
        if self._used + needed <= self.budget_bytes:
            return True
        victim = next((p for p, r in self._resident.items() if not r.in_use), None)
        if victim is None:  # every resident member is in use: the load decides when it ends
            return True
        return self._asked.get(package, 0) > self._asked.get(victim, 0)

    def _start_load(self, package: str) -> None:
        """Under the lock: one load per member in flight (single flight)."""
        if package in self._loading:
            return
        try:
            self._loading[package] = self._pool.submit(self._load_member, package)
        except RuntimeError:  # the pool is shut down: the deployment is being replaced
            return

    def _load_member(self, package: str) -> None:
        started = time.perf_counter()
        cpu_started = time.thread_time()  # the load runs in this thread (ORT's session too)
        try:
            loaded = self._load(package)
            if loaded.manifest.features != self.default.manifest.features:
                raise ModelPackageInvalid(
                    f"member {package} reads other inputs than the family's default "
                    f"{self.default_package}"
                )
            view = self._view(loaded)
            size = resident_bytes(loaded)
            shares = same_inputs(loaded.manifest, self.default.manifest)
        except Exception as exc:  # refused: its rows keep the default's answer, with the reason
            if isinstance(exc, ModelPackageInvalid):
                reason = exc.message
                logger.error("family %s: member %s refused: %s", self.name, package, reason)
            else:
                reason = f"it does not load ({type(exc).__name__})"
                logger.exception("family %s: member %s refused", self.name, package)
            metrics.FAMILY_LOADS.labels(self.name, "refused").inc()
            with self._lock:
                self.refused[package] = reason
                self._loading.pop(package, None)
            return
        seconds = time.perf_counter() - started
        cpu_seconds = time.thread_time() - cpu_started
        metrics.FAMILY_LOAD_SECONDS.labels(self.name).observe(seconds)
        logger.info(
            "family %s: member %s loaded in %.1f ms (%.1f ms CPU, %d bytes)",
            self.name,
            package,
            seconds * 1000,
            cpu_seconds * 1000,
            size,
        )
        with self._lock:
            self._sizes[package] = size
            kept = self._make_room(size)
            if kept:
                self._resident[package] = Resident(view, package, size, shares)
                self._used += size
            self._loading.pop(package, None)
            self._publish()
        metrics.FAMILY_LOADS.labels(self.name, "loaded" if kept else "over_budget").inc()
        if not kept:
            logger.warning(
                "family %s: member %s (%d bytes) does not fit the memory budget while the "
                "resident members are in use; the default keeps answering its segment",
                self.name,
                package,
                size,
            )

    def _make_room(self, size: int) -> bool:
        """Under the lock: evict idle members, least recently used first, until ``size`` more
        bytes fit the budget; whether they do."""
        if self.budget_bytes is None:
            return True
        for package in list(self._resident):
            if self._used + size <= self.budget_bytes:
                break
            resident = self._resident[package]
            if resident.in_use:
                continue
            del self._resident[package]
            self._used -= resident.size
            self._evictions.inc()
            logger.info("family %s: evicted member %s", self.name, package)
        return self._used + size <= self.budget_bytes

    def _publish(self) -> None:
        self._bytes.set(self._used)
        self._members.set(len(self._resident))
