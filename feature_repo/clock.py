"""The platform's one wall clock: real UTC time, or the same time placed at another instant.

Everything that reads "now" for what data means (where generated history ends, the age of an
online row against its TTL, the default end of a materialization, the day of a log partition,
the instant a request's timestamp is checked against) reads it here, so a whole run of the
platform (its tests, a replay, a rehearsal of a month end) can be placed at another instant by
one setting, in every process at once:

- ``PLATFORM_CLOCK_AT``: an ISO-8601 instant (``2026-12-31T23:55:00Z``). The first process that
  reads the clock starts it there; from then on it runs in real time.
- ``PLATFORM_CLOCK_OFFSET_S``: seconds added to real time. The first process derives it from
  ``PLATFORM_CLOCK_AT`` and exports it, so the processes it starts (the Feast CLI, a service, a
  stream consumer) share its clock instead of starting their own at the same instant later.

An instant in the future of the real clock is exact. Feast itself reads the real clock in one
place that matters, the first window of ``materialize-incremental`` (each view's TTL before
*real* now); placed in the future, that window is only wider than needed, so the online store
ends the same. Durations (latency, deadlines, timeouts) are measured with ``time.monotonic``,
never with this clock.
"""

from __future__ import annotations

import os
import time as _time
from datetime import UTC, datetime

AT_ENV = "PLATFORM_CLOCK_AT"
OFFSET_ENV = "PLATFORM_CLOCK_OFFSET_S"

_offset: float | None = None


def parse_instant(text: str) -> datetime:
    """An ISO-8601 instant; ``Z`` or an offset gives its zone, a naive one is UTC."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(
            f"{AT_ENV}={text!r} is not an ISO-8601 instant; write e.g. 2026-12-31T23:55:00Z"
        ) from exc
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def offset_seconds() -> float:
    """Seconds this process's clock is ahead of real time (0.0 unless placed)."""
    global _offset
    if _offset is None:
        raw = os.environ.get(OFFSET_ENV, "").strip()
        if raw:
            try:
                _offset = float(raw)
            except ValueError as exc:
                raise ValueError(f"{OFFSET_ENV}={raw!r} is not a number of seconds") from exc
        elif os.environ.get(AT_ENV, "").strip():
            _offset = parse_instant(os.environ[AT_ENV]).timestamp() - _time.time()
            os.environ[OFFSET_ENV] = repr(_offset)
        else:
            _offset = 0.0
    return _offset


def place(at: datetime | str | None) -> None:
    """Place this process's clock (and the processes it starts) at ``at``; None: real time."""
    global _offset
    os.environ.pop(OFFSET_ENV, None)
    if at is None:
        os.environ.pop(AT_ENV, None)
        _offset = 0.0
        return
    moment = parse_instant(at) if isinstance(at, str) else at.astimezone(UTC)
    os.environ[AT_ENV] = moment.isoformat()
    _offset = None
    offset_seconds()


def reload() -> None:
    """Read the placement from the environment again (after a caller restored it there)."""
    global _offset
    _offset = None


def time() -> float:
    """Seconds since the epoch on the platform's clock."""
    return _time.time() + offset_seconds()


def now() -> datetime:
    """The platform's current instant, timezone-aware UTC."""
    return datetime.fromtimestamp(time(), UTC)
