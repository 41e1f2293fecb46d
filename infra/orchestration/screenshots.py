"""The Dagster UI pictures of docs/continuous-training.md, taken again from the definitions.

    .venv/bin/python infra/orchestration/screenshots.py --out docs/

Builds a throwaway platform root in a temporary folder, as tests/orchestration/conftest.py
does (the fraud repository's definitions, 20,000 generated transactions as the raw events),
starts ``dagster dev -m orchestration.definitions`` on a free loopback port over it, with
``DAGSTER_HOME`` a temporary folder holding infra/orchestration/dagster.yaml, and launches runs
through Dagster's GraphQL API, one after the other:

1. ``feature_definitions_job`` and ``batch_features_job`` (the offline tables, the registry, the
   online store); then the champion ``fraud_model/v1`` is trained in this process on the
   ``fraud_model_v1`` FeatureService (``models.train.train``, as the tests' ``model_root``);
2. ``retraining_job``: a candidate, its gates, its rollout stopping at "ready for rollout" (no
   live service is configured). It runs with lenient quality gates, as the first run of
   tests/orchestration/test_graph.py does: the champion was trained on every event, those of the
   evaluation window too, so on the declared gates an honest candidate may well fail;
3. ``batch_scoring_job`` and ``monitoring_job``;
4. a candidate trained on shuffled labels (``candidate_package`` and ``candidate_evaluation``, on
   the declared gates), stopped at the ``pr_auc_vs_champion`` gate.

Then headless Chromium takes the global asset lineage (``/asset-groups``), the Runs page
(``/runs``) and the failed gate (``/assets/candidate_evaluation?view=checks&...``) into
``continuous-training-asset-graph.png``, ``continuous-training-runs.png`` and
``continuous-training-gate.png`` under ``--out``. Everything it started is stopped, and the
temporary folders are removed, however it ends.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: the repository's packages

from feature_repo import clock  # noqa: E402

logger = logging.getLogger("screenshots")

FEATURE_REPO = ROOT / "feature_repo" / "fraud"
DAGSTER_YAML = ROOT / "infra" / "orchestration" / "dagster.yaml"
DAGSTER = Path(sys.executable).parent / "dagster"
ROWS = 20_000
SEED = 11
DAYS = 35
CHAMPION_ROUNDS = 80
TRAINING_ROUNDS = 60  # the candidates' boosting rounds (ORCHESTRATION_TRAINING_ROUNDS)
FEATURE_SERVICE = "fraud_model_v1"
WINDOW = "1600,1000"
# The graph judges the pipeline, not the candidate (tests/orchestration/test_graph.py LENIENT).
LENIENT_GATES = {
    "pr_auc_tolerance": 1.0,
    "max_recall_drop": 1.0,
    "max_calibration_error": 1.0,
    "max_segment_recall_drop": 1.0,
}
RUN_TIMEOUT_S = 900.0
DONE = {"SUCCESS", "FAILURE", "CANCELED"}

LOCATION_QUERY = """
query { repositoriesOrError { __typename
  ... on RepositoryConnection { nodes { name location { name } } }
  ... on PythonError { message } } }
"""
LAUNCH_MUTATION = """
mutation Launch($params: ExecutionParams!) { launchRun(executionParams: $params) { __typename
  ... on LaunchRunSuccess { run { runId } }
  ... on PythonError { message }
  ... on InvalidSubsetError { message }
  ... on RunConfigValidationInvalid { errors { message } } } }
"""
NUX_MUTATION = "mutation { setNuxSeen }"
STATUS_QUERY = """
query Status($id: ID!) { runOrError(runId: $id) { __typename ... on Run { status } } }
"""


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def build_root(root: Path) -> None:
    """The repository's definitions (no tables, no registry: the jobs write and apply them)
    and the generated raw events, as tests/orchestration/conftest.py lays them out."""
    from feature_pipelines.fraud.generate import generate_transactions

    repo = root / "feature_repo" / "fraud"
    repo.mkdir(parents=True)
    for item in FEATURE_REPO.iterdir():
        if item.suffix in (".py", ".yaml") or item.name == ".feastignore":
            shutil.copy(item, repo / item.name)
    (root / "data").mkdir()
    end = clock.now().replace(second=0, microsecond=0)
    events = generate_transactions(n_rows=ROWS, seed=SEED, days=DAYS, end=end)
    events.to_parquet(root / "data" / "transactions.parquet", index=False)
    logger.info("platform root %s: %d transactions ending %s", root, len(events), end)


def train_champion(root: Path) -> None:
    """The champion package, trained on the features the first jobs wrote and applied."""
    from models.train import train

    train(
        repo_path=root / "feature_repo" / "fraud",
        events_path=root / "data" / "transactions.parquet",
        output_root=root / "models" / "packages",
        feature_service=FEATURE_SERVICE,
        num_boost_round=CHAMPION_ROUNDS,
    )
    logger.info("champion trained under %s", root / "models" / "packages")


def shuffle_training_labels(root: Path) -> None:
    """A corrupted label feed, as tests/orchestration/test_graph.py makes one."""
    from orchestration.assets import TRAINING_FILE, TRAINING_SET_DIR

    path = root / "data" / "orchestration" / TRAINING_SET_DIR / TRAINING_FILE
    events = pd.read_parquet(path)
    events["is_fraud"] = np.random.default_rng(3).permutation(events["is_fraud"].to_numpy())
    events.to_parquet(path, index=False)


def asset_groups() -> list[str]:
    """The groups of the definitions' assets."""
    from orchestration.assets import ASSETS

    return sorted({group for a in ASSETS for group in a.group_names_by_key.values()})


class Dagster:
    """``dagster dev`` over a platform root, driven through its GraphQL API."""

    def __init__(self, root: Path, home: Path, log: Path) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "DAGSTER_HOME": str(home),
            "ORCHESTRATION_ROOT": str(root),
            "ORCHESTRATION_TRAINING_ROUNDS": str(TRAINING_ROUNDS),
            "ORCHESTRATION_SCHEDULES": "stopped",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        self.log = log.open("w")
        self.process = subprocess.Popen(
            [
                str(DAGSTER),
                "dev",
                "-m",
                "orchestration.definitions",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            cwd=root,  # a path left relative lands in the throwaway root, never in the repository
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its webserver, daemon and code server stop with it
        )
        self.location = ("", "")

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(
            f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
        if answer.get("errors"):
            raise RuntimeError(f"GraphQL errors: {answer['errors']}")
        return dict(answer["data"])

    def wait_ready(self, timeout_s: float = 300.0) -> None:
        """Until the webserver answers and the code location has loaded."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"dagster dev exited with {self.process.returncode}")
            with contextlib.suppress(OSError, RuntimeError, urllib.error.URLError):
                found = self.graphql(LOCATION_QUERY)["repositoriesOrError"]
                nodes = found.get("nodes") or []
                if nodes:
                    self.location = (nodes[0]["location"]["name"], nodes[0]["name"])
                    logger.info("dagster dev on %s: location %s", self.url, self.location[0])
                    # The "join the community" dialog would cover every picture.
                    self.graphql(NUX_MUTATION)
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"dagster dev did not load its definitions in {timeout_s}s")
            time.sleep(2)

    def launch(
        self, job: str, assets: list[str] | None = None, config: dict[str, Any] | None = None
    ) -> str:
        """Launch a job (or, with ``assets``, a selection of the asset graph); its run id."""
        location, repository = self.location
        selector: dict[str, Any] = {
            "repositoryLocationName": location,
            "repositoryName": repository,
            "jobName": job,
        }
        if assets:
            selector["assetSelection"] = [{"path": [name]} for name in assets]
        params = {"selector": selector, "mode": "default", "runConfigData": config or {}}
        result = self.graphql(LAUNCH_MUTATION, {"params": params})["launchRun"]
        if result["__typename"] != "LaunchRunSuccess":
            raise RuntimeError(f"launching {job} {assets or ''} failed: {result}")
        return str(result["run"]["runId"])

    def wait(self, run_id: str) -> str:
        """The run's final status."""
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while True:
            status = self.graphql(STATUS_QUERY, {"id": run_id})["runOrError"].get("status")
            if status in DONE:
                return str(status)
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} still {status} after {RUN_TIMEOUT_S}s")
            time.sleep(2)

    def run(
        self,
        job: str,
        assets: list[str] | None = None,
        config: dict[str, Any] | None = None,
        expect: str = "SUCCESS",
    ) -> str:
        """Launch and wait; a run that does not end as expected is logged with its decisions."""
        started = time.monotonic()
        run_id = self.launch(job, assets, config)
        status = self.wait(run_id)
        logger.info(
            "%s %s: %s in %.0fs (run %s)",
            job,
            ",".join(assets or []),
            status,
            time.monotonic() - started,
            run_id[:8],
        )
        if status != expect:
            logger.warning("%s ended %s, not %s; its decisions:", job, status, expect)
            decisions = self.root / "data" / "orchestration" / "decisions.jsonl"
            for line in decisions.read_text().splitlines() if decisions.is_file() else []:
                record = json.loads(line)
                if record.get("run_id") == run_id:
                    logger.warning("  %s %s", record.get("subject"), record.get("message"))
            for line in Path(self.log.name).read_text(errors="replace").splitlines():
                if run_id in line and "FAILURE" in line:
                    logger.warning("  %s", line[-1500:])
        return status

    def stop(self) -> None:
        """SIGINT, as Ctrl-C: dagster dev stops its webserver, daemon and code server; then
        whatever of its session is left is killed."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.log.close()


@contextlib.contextmanager
def dagster_dev(root: Path, home: Path) -> Iterator[Dagster]:
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(DAGSTER_YAML, home / "dagster.yaml")
    dagster = Dagster(root, home, home / "dagster-dev.log")
    try:
        dagster.wait_ready()
        yield dagster
    except BaseException:
        logger.error("dagster dev output:\n%s", (home / "dagster-dev.log").read_text()[-4000:])
        raise
    finally:
        dagster.stop()


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise SystemExit("headless Chromium is missing: apt-get install -y chromium")


def screenshot(url: str, target: Path, profile: Path, budget_ms: int) -> None:
    """One page, rendered for ``budget_ms`` of virtual time, into a PNG."""
    command = [
        chromium(),
        "--headless",
        "--no-sandbox",  # as root in a container
        "--disable-gpu",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--window-size={WINDOW}",
        f"--virtual-time-budget={budget_ms}",
        f"--screenshot={target}",
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    if done.returncode != 0 or not target.is_file():
        raise RuntimeError(f"chromium could not take {url}: {done.stderr[-2000:]}")
    logger.info("%s -> %s", url, target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="Folder of the PNGs.")
    parser.add_argument(
        "--budget-ms", type=int, default=20_000, help="Virtual time Chromium renders each page."
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("feast").setLevel(logging.WARNING)  # a line per registry refresh
    args.out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="orchestration-screenshots-") as tmp:
        work = Path(tmp)
        root = work / "platform"
        build_root(root)
        with dagster_dev(root, work / "dagster_home") as dagster:
            dagster.run("feature_definitions_job")
            dagster.run("batch_features_job")
            train_champion(root)
            # Run config replaces the resource's whole configuration: root and rounds again.
            platform = {
                "root": str(root),
                "training_rounds": TRAINING_ROUNDS,
                "gates": LENIENT_GATES,
            }
            lenient = {"resources": {"platform": {"config": platform}}}
            dagster.run("retraining_job", config=lenient)
            dagster.run("batch_scoring_job")
            dagster.run("monitoring_job")
            shuffle_training_labels(root)
            candidate = ["candidate_package", "candidate_evaluation"]
            dagster.run("__ASSET_JOB", candidate, expect="FAILURE")
            # Every group expanded (the graph collapses them when there are several).
            expanded = ",".join(f"global@global:{group}" for group in asset_groups())
            pages = {
                "continuous-training-asset-graph.png": "/asset-groups?"
                + urllib.parse.urlencode({"expanded": expanded}),
                "continuous-training-runs.png": "/runs",
                "continuous-training-gate.png": "/assets/candidate_evaluation"
                "?view=checks&checkDetail=pr_auc_vs_champion",
            }
            for name, page in pages.items():
                screenshot(dagster.url + page, args.out / name, work / "chromium", args.budget_ms)


if __name__ == "__main__":
    main()
