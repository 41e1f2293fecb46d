"""A model family trained in one `python -m models train --family-by card_country` run on the
session's generated data: a member per card country with enough rows, each published member
beating the global model on its own segment's holdout (checked here again from the sealed
packages, not from the run's own figures), the others listed with their figures, and the
family's deployment entry naming exactly the published members."""

from __future__ import annotations

import json
import traceback
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from feature_repo.domain import load_domain
from models.cli import app
from models.dataset import (
    entity_dataframe,
    feature_layout,
    feature_matrix,
    load_events,
    open_store,
    retrieve_training_set,
)
from models.family import HOLDOUT_SHARE, VALID_SHARE, log_loss, member_version
from models.package import package_dir, read_manifest, verify_package
from models.train import BOOSTER_FILE, split_by_time

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

SEGMENT = "card_country"
VERSION = "v1-by-country"
MIN_ROWS = 60  # of the session's 20,000 payments, all 25 card countries have that many


def train_family_cli(
    root: Path, repo: Path, events: Path, segment: str, version: str, rounds: int
) -> tuple[Path, dict, str]:
    """`python -m models train --family-by <segment>`: (package root, figures, output)."""
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--repo",
            str(repo),
            "--events",
            str(events),
            "--output",
            str(root),
            "--feature-service",
            "fraud_model_v1",
            "--version",
            version,
            "--rounds",
            str(rounds),
            "--family-by",
            segment,
            "--min-rows",
            str(MIN_ROWS),
        ],
    )
    if result.exit_code != 0:
        trace = "".join(traceback.format_exception(*result.exc_info)) if result.exc_info else ""
        pytest.fail(f"family training failed:\n{result.output}\n{trace}")
    figures = json.loads((root / "fraud_model" / f"{version}.family.json").read_text())
    return root, figures, result.output


@pytest.fixture(scope="module")
def family(
    tmp_path_factory: pytest.TempPathFactory, sqlite_repo: Path, transactions_path: Path
) -> tuple[Path, dict, str]:
    """(package root, the family's figures, the command's output)."""
    root = tmp_path_factory.mktemp("family")
    return train_family_cli(root, sqlite_repo, transactions_path, SEGMENT, VERSION, 80)


def training_set(repo: Path, events: Path, request_fields: list[str]) -> pd.DataFrame:
    """fraud_model_v1's point-in-time training set of the events, as the family trains on."""
    spec = load_domain(repo)
    store = open_store(repo)
    layout = feature_layout(store, "fraud_model_v1")
    return retrieve_training_set(
        store,
        "fraud_model_v1",
        entity_dataframe(
            load_events(events, spec),
            spec,
            request_fields=[*layout.request_fields, *request_fields],
        ),
        spec,
    )


def check_published(
    root: Path, version: str, figures: dict, holdout: pd.DataFrame, column: pd.Series, label: str
) -> None:
    """Each published member, read back from its sealed package, beats the global model on its
    segment's holdout rows (``column``: each holdout row's segment key)."""
    published = [s for s in figures["segments"] if s["published"]]
    assert published, "no member beat the global model"
    default = package_dir(root, "fraud_model", version)
    global_model = lgb.Booster(model_file=str(default / BOOSTER_FILE))
    features = read_manifest(default).features
    for s in published:
        path = package_dir(root, "fraud_model", member_version(version, s["segment"]))
        assert s["package"] == f"fraud_model/{path.name}"
        verify_package(path)  # sealed
        manifest = read_manifest(path)
        assert manifest.features == features
        rows = holdout[column == s["segment"]]
        x = feature_matrix(rows, features).astype(np.float64)
        y = rows[label].to_numpy()
        member = lgb.Booster(model_file=str(path / BOOSTER_FILE))
        ours, theirs = log_loss(y, member.predict(x)), log_loss(y, global_model.predict(x))
        assert ours < theirs, s["segment"]
        assert ours == pytest.approx(s["member_log_loss"], rel=1e-9)


def test_every_country_with_enough_rows_gets_a_member_trained(family, transactions) -> None:
    _, figures, output = family
    segments = {s["segment"]: s for s in figures["segments"]}
    assert set(segments) == set(transactions[SEGMENT].astype(str))
    trained = [s for s in segments.values() if s["member_log_loss"] is not None]
    assert len(trained) >= 20, output
    for s in segments.values():
        assert (s["member_log_loss"] is not None) == (s["train_rows"] >= MIN_ROWS), s
    # Published and rejected members alike are listed with their figures by the command.
    for s in trained:
        line = next(line for line in output.splitlines() if line.startswith(f"{s['segment']} "))
        assert f"{s['member_log_loss']:.4f} / {s['global_log_loss']:.4f}" in line
        assert ("published" in line) == s["published"]


def test_each_published_member_beats_the_global_model_on_its_holdout(
    family, sqlite_repo: Path, transactions_path: Path
) -> None:
    root, figures, _ = family
    frame = training_set(sqlite_repo, transactions_path, [SEGMENT])
    holdout = split_by_time(frame, VALID_SHARE, HOLDOUT_SHARE)[2]
    label = load_domain(sqlite_repo).label_column
    check_published(root, VERSION, figures, holdout, holdout[SEGMENT].astype(str), label)


def test_rejected_members_are_not_published_and_the_entry_names_the_published(family) -> None:
    root, figures, _ = family
    entry = yaml.safe_load((root / "fraud_model" / f"{VERSION}.family.yaml").read_text())
    assert entry["segment_field"] == SEGMENT
    assert entry["default"] == f"fraud_model/{VERSION}"
    published = {s["segment"]: s["package"] for s in figures["segments"] if s["published"]}
    assert entry["members"] == published
    for s in figures["segments"]:
        path = package_dir(root, "fraud_model", member_version(VERSION, s["segment"]))
        assert path.exists() == s["published"], s
        if not s["published"] and s["member_log_loss"] is not None:
            assert s["why"] and s["global_log_loss"] is not None


def test_a_segment_field_outside_the_request_is_refused(sqlite_repo: Path, tmp_path) -> None:
    result = CliRunner().invoke(
        app,
        ["train", "--repo", str(sqlite_repo), "--output", str(tmp_path), "--family-by", "shoe"],
    )
    assert result.exit_code != 0
    assert "'shoe' is not a request field" in result.output


# --- segments by a stored feature ---------------------------------------------------------------

STORED = "merchant_chargeback_count_30d"  # the merchant's chargebacks of the last 30 days
STORED_VERSION = "v1-by-chargebacks"


@pytest.fixture(scope="module")
def stored_family(
    tmp_path_factory: pytest.TempPathFactory, sqlite_repo: Path, transactions_path: Path
) -> tuple[Path, dict, str]:
    root = tmp_path_factory.mktemp("stored_family")
    return train_family_cli(root, sqlite_repo, transactions_path, STORED, STORED_VERSION, 40)


def test_a_family_by_a_stored_feature_segments_by_its_point_in_time_values(
    stored_family, sqlite_repo: Path, transactions_path: Path
) -> None:
    """The segments are the integer values the training set holds at each event's instant (the
    value serving reads for the row), each member trained on its segment's rows."""
    root, figures, output = stored_family
    frame = training_set(sqlite_repo, transactions_path, [])
    train, _, holdout = split_by_time(frame, VALID_SHARE, HOLDOUT_SHARE)
    values = frame[STORED].dropna()
    assert len(values) > len(frame) / 2 and values.nunique() > 3
    assert {s["segment"] for s in figures["segments"]} == {str(int(v)) for v in values}
    counts = train[STORED].dropna().astype(int).astype(str).value_counts()
    for s in figures["segments"]:
        assert s["train_rows"] == counts.get(s["segment"], 0), s
    entry = yaml.safe_load((root / "fraud_model" / f"{STORED_VERSION}.family.yaml").read_text())
    assert entry == {
        "segment_feature": STORED,
        "default": f"fraud_model/{STORED_VERSION}",
        "members": {s["segment"]: s["package"] for s in figures["segments"] if s["published"]},
    }
    assert f"segments by stored feature {STORED}" in output
    label = load_domain(sqlite_repo).label_column
    keys = holdout[STORED].map(lambda v: None if pd.isna(v) else str(int(v)))
    check_published(root, STORED_VERSION, figures, holdout, keys, label)
    first = next(s for s in figures["segments"] if s["published"])
    member = read_manifest(
        package_dir(root, "fraud_model", member_version(STORED_VERSION, first["segment"]))
    )
    assert member.training["family_segment"] == {STORED: first["segment"]}
    assert member.metrics["family"]["segment_feature"] == STORED
