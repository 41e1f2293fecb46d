"""Every server a fixture starts is stopped, however the run ends.

Each case runs pytest in a subprocess on a small module written to a folder of its own, with
the project's real fixtures (tests/conftest.py and the PostgreSQL and nginx fixtures, loaded as
plugins), and ends that run badly: a failing test under ``-x``, a fixture whose set-up fails
after starting its server, Ctrl-C (SIGINT), SIGTERM, SIGKILL. The run's folder tells its
processes from those of other runs on the same machine: each works in it (redis-server in its
``--dir``, PostgreSQL in its data folder, nginx where pytest runs) or has it in its environment.
The environment alone would not do: redis-server, nginx and PostgreSQL write their process
titles over it. Spark's JVM is counted too (it exits when its stdin from the test process
closes); starting one here would take longer than every other case together.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.fixtures import processes

pytestmark = [
    pytest.mark.redis,
    pytest.mark.postgres,
    pytest.mark.nginx,
    pytest.mark.skipif(
        not sys.platform.startswith("linux"),
        reason="reads /proc; servers die with the test process through Linux's prctl",
    ),
]

SERVERS = ("redis-server", "postgres", "nginx", "java")
RUN_VARIABLE = "FIXTURE_CLEANUP_RUN"
WAIT_S = 180.0
"""Limit of every wait: far above what a run needs (imports, initdb), even on a busy machine."""

CONFTEST = """\
pytest_plugins = ["tests.conftest", "tests.fixtures.postgres", "tests.fixtures.nginx"]
"""

MODULE = '''\
"""Servers from the project's fixtures, then a run that ends badly."""

import json
import os
import time
from pathlib import Path

import pytest

from tests.test_fixture_cleanup import servers_of_run

REPORT = Path(os.environ["FIXTURE_CLEANUP_REPORT"])


def record(**extra) -> None:
    """The run's servers now, for the test outside to compare with what is left."""
    data = {"servers": servers_of_run(os.environ["FIXTURE_CLEANUP_RUN"]), **extra}
    REPORT.with_suffix(".part").write_text(json.dumps(data))
    REPORT.with_suffix(".part").replace(REPORT)


class Unreadable(dict):
    """Tables whose first read, stream_rig's after it has started its redis-server, fails."""

    def __getitem__(self, key):
        record()
        raise KeyError(key)


@pytest.fixture(scope="session")
def feature_tables():
    return Unreadable()


def test_fails(redis_server, postgres_server, nginx_for):
    nginx_for([redis_server.connection_string])
    record(postgres_root=str(postgres_server.root))
    assert False, "deliberately"


def test_not_run_after_the_failure(redis_server):
    pass


def test_rig_set_up_fails(redis_server, stream_rig):
    pass


def test_waits_for_a_signal(redis_server, postgres_server, nginx_for):
    nginx_for([redis_server.connection_string])
    record(postgres_root=str(postgres_server.root))
    time.sleep(600)
'''


def _processes_of_run(run: str) -> list[tuple[int, str]]:
    """(pid, name) of every live process (not a zombie) working in the run's folder or with it
    in its environment."""
    marker = f"{RUN_VARIABLE}={run}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cwd = os.readlink(entry / "cwd")
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        name, state = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2]
        ours = cwd == run or cwd.startswith(f"{run}/") or marker in environ.split(b"\0")
        if state != "Z" and ours:
            found.append((int(entry.name), name))
    return found


def servers_of_run(run: str) -> dict[str, int]:
    """Processes of the run by server name: redis-server, postgres, nginx, java."""
    return dict(Counter(name for _, name in _processes_of_run(run) if name in SERVERS))


class Run:
    """``pytest -x`` in a subprocess on some tests of the module above, in a folder of its own."""

    def __init__(self, *tests: str) -> None:
        # Outside pytest's private temporary folders: under root, PostgreSQL runs as `postgres`
        # and must reach its own folder (made in TMPDIR) through this one.
        self.root = Path(tempfile.mkdtemp(prefix="fixture-cleanup-"))
        folder, temporary = self.root / "run", self.root / "tmp"
        for path in (self.root, folder, temporary):
            path.mkdir(exist_ok=True)
            path.chmod(0o755)
        (folder / "conftest.py").write_text(CONFTEST)
        (folder / "test_servers.py").write_text(MODULE)
        (folder / "pytest.ini").write_text("[pytest]\n")
        self.report = self.root / "report.json"
        self.output = self.root / "output.txt"
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "TMPDIR": str(temporary),
            RUN_VARIABLE: str(self.root),
            "FIXTURE_CLEANUP_REPORT": str(self.report),
        }
        env.pop("PYTEST_ADDOPTS", None)
        args = [sys.executable, "-m", "pytest", "-x", "-p", "no:cacheprovider"]
        args += ["--basetemp", str(self.root / "basetemp")]
        args += [f"test_servers.py::{test}" for test in tests]
        with self.output.open("wb") as out:
            # Started as a server is: if this test process dies, the run dies, and its servers.
            self.process = processes.start(
                args,
                stop_signal=signal.SIGKILL,
                cwd=folder,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def log(self) -> str:
        return self.output.read_text(errors="replace")

    def recorded(self) -> dict:
        """What the run recorded while its servers were up (waits for it)."""
        deadline = time.monotonic() + WAIT_S
        while not self.report.exists():
            assert self.process.poll() is None, f"the run ended first:\n{self.log()}"
            assert time.monotonic() < deadline, f"nothing recorded:\n{self.log()}"
            time.sleep(0.05)
        return json.loads(self.report.read_text())

    def wait(self) -> int:
        try:
            return self.process.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the run did not end:\n{self.log()}")

    def left(self) -> list[tuple[int, str]]:
        return _processes_of_run(str(self.root))

    def stop(self) -> None:
        processes.stop(self.process)
        # A failed check must not leave the run's servers behind either.
        for pid, _ in self.left():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def run_in() -> Iterator[Callable[..., Run]]:
    """Start runs of the module above; each is killed and removed at the end."""
    runs: list[Run] = []

    def start(*tests: str) -> Run:
        runs.append(Run(*tests))
        return runs[-1]

    yield start
    for run in runs:
        run.stop()


def test_a_failing_test_under_x_leaves_no_server(run_in: Callable[..., Run]) -> None:
    run = run_in("test_fails", "test_not_run_after_the_failure")
    returncode = run.wait()
    up = run.recorded()["servers"]
    log = run.log()
    assert returncode == pytest.ExitCode.TESTS_FAILED, log
    assert "1 failed" in log and "passed" not in log, log
    assert up.get("redis-server") == 1 and up.get("postgres", 0) >= 1, up
    assert up.get("nginx", 0) >= 2, up  # master and workers
    assert run.left() == [], f"left running: {run.left()} (up during the run: {up})"


def test_a_set_up_failing_after_its_server_started_leaves_no_server(
    run_in: Callable[..., Run],
) -> None:
    run = run_in("test_rig_set_up_fails", "test_not_run_after_the_failure")
    returncode = run.wait()
    up = run.recorded()["servers"]
    log = run.log()
    assert returncode == pytest.ExitCode.TESTS_FAILED, log
    assert "1 error" in log and "KeyError" in log, log
    assert up.get("redis-server") == 2, up  # the session's and the rig's
    assert run.left() == [], f"left running: {run.left()} (up during the run: {up})"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_run_leaves_no_server(
    run_in: Callable[..., Run], signum: signal.Signals
) -> None:
    run = run_in("test_waits_for_a_signal")
    up = run.recorded()["servers"]
    assert up.get("redis-server") == 1 and up.get("postgres") and up.get("nginx"), up
    os.kill(run.process.pid, signum)
    returncode = run.wait()
    log = run.log()
    assert returncode == pytest.ExitCode.INTERRUPTED, log
    assert "KeyboardInterrupt" in log, log
    assert run.left() == [], f"left running: {run.left()} (up during the run: {up})"


def test_a_killed_run_leaves_no_server(run_in: Callable[..., Run]) -> None:
    """SIGKILL runs no code in the test process: the kernel signals each server (PostgreSQL
    gets its fast shutdown), and they go shortly after."""
    run = run_in("test_waits_for_a_signal")
    recorded = run.recorded()
    up = recorded["servers"]
    assert up.get("redis-server") == 1 and up.get("postgres") and up.get("nginx"), up
    os.kill(run.process.pid, signal.SIGKILL)
    assert run.wait() == -signal.SIGKILL
    deadline = time.monotonic() + WAIT_S
    while run.left():
        assert time.monotonic() < deadline, f"left running: {run.left()} (up: {up})"
        time.sleep(0.05)
    # The fixture's own clean-up never ran: its folder (and the server's log) is still there.
    log = (Path(recorded["postgres_root"]) / "postgres.log").read_text(errors="replace")
    assert "database system is shut down" in log, log
