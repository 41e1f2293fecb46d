"""The platform's one clock: real time by default, placed at another instant for every process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from feature_repo import clock

pytestmark = pytest.mark.clock


@pytest.fixture
def restored() -> Iterator[None]:
    """Put the clock back where the session placed it."""
    saved = {k: os.environ.get(k) for k in (clock.AT_ENV, clock.OFFSET_ENV)}
    offset = clock.offset_seconds()
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    clock._offset = offset


def test_placed_at_an_instant_it_reads_that_instant_and_runs_on(restored: None) -> None:
    clock.place("2031-12-31T23:59:58Z")
    first = clock.now()
    assert datetime(2031, 12, 31, 23, 59, 58, tzinfo=UTC) <= first
    assert (first - datetime(2031, 12, 31, 23, 59, 58, tzinfo=UTC)).total_seconds() < 60
    assert first.tzinfo is UTC
    time.sleep(0.01)
    assert clock.now() > first
    assert clock.time() == pytest.approx(clock.now().timestamp(), abs=5)


def test_processes_it_starts_share_its_clock_not_a_later_start(restored: None) -> None:
    clock.place("2031-06-30T12:00:00Z")
    time.sleep(0.2)
    parent = clock.time()
    child = float(
        subprocess.run(
            [sys.executable, "-c", "from feature_repo import clock; print(clock.time())"],
            capture_output=True,
            text=True,
            check=True,
            env=os.environ.copy(),
        ).stdout
    )
    # The child inherits the offset: its clock is the parent's, not the instant again.
    assert child >= parent
    assert child - datetime(2031, 6, 30, 12, tzinfo=UTC).timestamp() >= 0.2


def test_unplaced_it_is_real_time(restored: None) -> None:
    clock.place(None)
    assert clock.offset_seconds() == 0.0
    assert abs(clock.time() - time.time()) < 1


def test_a_naive_instant_is_utc_and_an_offset_is_honoured() -> None:
    assert clock.parse_instant("2030-01-01T00:00:00") == datetime(2030, 1, 1, tzinfo=UTC)
    assert clock.parse_instant("2030-01-01T01:00:00+01:00") == datetime(2030, 1, 1, tzinfo=UTC)


def test_a_malformed_setting_says_how_to_write_it(restored: None) -> None:
    with pytest.raises(ValueError, match="ISO-8601 instant; write e"):
        clock.parse_instant("next tuesday")
    os.environ.pop(clock.AT_ENV, None)
    os.environ[clock.OFFSET_ENV] = "soon"
    clock._offset = None
    with pytest.raises(ValueError, match="not a number of seconds"):
        clock.offset_seconds()
