"""The command line: ``hash-key`` and ``dev-key`` (the key settings' form, a local key file),
``batch-score``'s checks, and ``score-sample`` against a real uvicorn server.

``serve`` runs a process of its own: the scenario tests start it (tests/scenarios/), as does
``batch-score``'s own test of its output (test_batch_scoring.py).
"""

from __future__ import annotations

import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from click.testing import Result
from typer.testing import CliRunner

from scoring_service.api.app import create_app
from scoring_service.cli import app
from scoring_service.core.security import hash_key
from tests.conftest import free_port
from tests.fixtures.service import API_KEY, settings_for


def run(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(app, list(args), input=input, env=env)


def test_hash_key_prints_the_digest_of_the_key_on_stdin() -> None:
    result = run("hash-key", input="  my-secret-key \n")
    assert result.exit_code == 0, result.output
    assert result.output == hash_key("my-secret-key") + "\n"
    assert "my-secret-key" not in result.output
    empty = run("hash-key", input="")
    assert empty.exit_code == 1 and empty.output == "no key on standard input\n"


def test_dev_key_makes_a_private_key_file_once(tmp_path: Path) -> None:
    file = tmp_path / "keys" / "dev_api_key"
    first = run("dev-key", "--file", str(file))
    assert first.exit_code == 0, first.output
    key = file.read_text().strip()
    assert len(key) >= 32
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert first.output == hash_key(key) + "\n"
    again = run("dev-key", "--file", str(file))
    assert again.output == first.output and file.read_text().strip() == key  # kept


def test_batch_score_refuses_an_unknown_device(tmp_path: Path) -> None:
    inputs, out = str(tmp_path / "in.parquet"), str(tmp_path / "o")
    result = run("batch-score", "--input", inputs, "--out", out, "--device", "gpu")
    assert result.exit_code == 2
    assert "Invalid value for --device: must be auto, cpu or cuda" in result.output
    assert not (tmp_path / "o").exists()


def test_score_sample_needs_a_key(tmp_path: Path, sqlite_repo: Path) -> None:
    missing = tmp_path / "no_key_here"
    options = ["--domain", str(sqlite_repo), "--api-key-file", str(missing)]
    result = run("score-sample", *options, env={"SCORING_API_KEY": ""})
    assert result.exit_code == 1
    assert result.output == (
        f"no API key: set SCORING_API_KEY or create {missing} (`make serve` does)\n"
    )


@pytest.fixture(scope="module")
def live_url(sqlite_repo: Path, model_root: Path) -> Iterator[str]:
    """The service under a real uvicorn server in a background thread."""
    config = uvicorn.Config(
        create_app(settings_for(sqlite_repo, model_root)),
        host="127.0.0.1",
        port=free_port(),
        log_config=None,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_score_sample_scores_a_negative_and_a_positive(
    live_url: str, sqlite_repo: Path, transactions_path: Path, tmp_path: Path
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(API_KEY + "\n")
    options = ["--url", live_url, "--domain", str(sqlite_repo), "--wait", "30"]
    options += ["--data", str(transactions_path), "--api-key-file", str(key_file)]
    result = run("score-sample", *options, env={"SCORING_API_KEY": ""})
    assert result.exit_code == 0, result.output
    out = result.output
    assert "transaction with is_fraud=0 (negative ground truth):" in out
    assert "transaction with is_fraud=1 (positive ground truth):" in out
    assert out.count("POST /v1/transactions/score {") == 2
    assert out.count("-> 200 {") == 2
    labels = [line for line in out.splitlines() if line.startswith("label=")]
    assert len(labels) == 2
    for line in labels:
        label, score = line.split()
        assert label.removeprefix("label=") in {
            "not_fraud",
            "suspicious",
            "highly_suspicious",
            "uncertain",
        }
        assert 0.0 <= float(score.removeprefix("score=")) <= 1.0
