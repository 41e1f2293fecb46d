"""Run the time-sensitive tests (marker ``clock``) with the platform's clock placed at several
instants: over a day, across a month end and across a year end (``make test-clock``).

Each instant is one pytest session in a subprocess with ``PLATFORM_CLOCK_AT`` set, so the data
every fixture generates ends there and every process of the run reads the same clock
(``feature_repo/clock.py``). The instants are the next occurrences of fixed times, always ahead
of the real clock: Feast reads the real clock for the first window of
``materialize-incremental``, which is exact for an instant ahead of it.

    python -m tests.clock_runs                 # all 8 instants
    python -m tests.clock_runs --set ci        # 3 of them (CI)
    python -m tests.clock_runs --list          # print the instants only
    python -m tests.clock_runs -- -k realtime  # extra pytest arguments after --
"""

from __future__ import annotations

import argparse
import calendar
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

# Times of day spread over a day; 17:58 runs across an hour boundary (a new hourly snapshot).
TIMES_OF_DAY = ("00:25", "03:10", "06:45", "09:30", "13:05", "17:58")
CI_NAMES = ("09:30", "00:25", "year end")


def next_time_of_day(hhmm: str, after: datetime) -> datetime:
    """The first instant at ``hhmm`` UTC later than ``after``."""
    hour, minute = (int(x) for x in hhmm.split(":"))
    moment = after.replace(hour=hour, minute=minute, second=0, microsecond=0)
    return moment if moment > after else moment + timedelta(days=1)


def month_end(after: datetime) -> datetime:
    """23:50 on the last day of the month after ``after``'s (the run crosses into a new month);
    the month after next when that one is December, so it never coincides with the year end."""
    year, month = (after.year, after.month + 1) if after.month < 12 else (after.year + 1, 1)
    if month == 12:
        year, month = year + 1, 1
    last = calendar.monthrange(year, month)[1]
    return datetime(year, month, last, 23, 50, tzinfo=UTC)


def year_end(after: datetime) -> datetime:
    """23:55 on the next 31 December (the run crosses into a new year)."""
    moment = datetime(after.year, 12, 31, 23, 55, tzinfo=UTC)
    return moment if moment > after else moment.replace(year=after.year + 1)


def instants(after: datetime) -> dict[str, datetime]:
    """Name -> instant, each ahead of ``after`` by at least five minutes."""
    start = after + timedelta(minutes=5)
    named = {hhmm: next_time_of_day(hhmm, start) for hhmm in TIMES_OF_DAY}
    named["month end"] = month_end(start)
    named["year end"] = year_end(start)
    return named


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", choices=("all", "ci"), default="all")
    parser.add_argument("--list", action="store_true", help="print the instants and stop")
    parser.add_argument("pytest_args", nargs="*", help="after --: extra pytest arguments")
    args = parser.parse_args(argv)
    chosen = instants(datetime.now(UTC))
    if args.set == "ci":
        chosen = {name: chosen[name] for name in CI_NAMES}
    if args.list:
        for name, at in chosen.items():
            print(f"{at.isoformat()}  {name}")
        return 0
    verdicts: list[tuple[str, datetime, int, float]] = []
    for name, at in chosen.items():
        env = {k: v for k, v in os.environ.items() if not k.startswith("PLATFORM_CLOCK_")}
        env["PLATFORM_CLOCK_AT"] = at.isoformat()
        print(f"== clock placed at {at.isoformat()} ({name})", flush=True)
        started = time.monotonic()
        code = subprocess.call(
            [sys.executable, "-m", "pytest", "-q", "-m", "clock", *args.pytest_args], env=env
        )
        verdicts.append((name, at, code, time.monotonic() - started))
    print("\nclock placed at                  verdict  seconds")
    for name, at, code, seconds in verdicts:
        verdict = "passed" if code == 0 else f"FAILED ({code})"
        print(f"{at.isoformat():<32} {verdict:<8} {seconds:7.0f}  {name}")
    return 0 if all(code == 0 for _, _, code, _ in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
