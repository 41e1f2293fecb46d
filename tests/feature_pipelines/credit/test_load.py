"""The credit loader: the tutorial's source files become the credit repository's offline tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from feature_pipelines.cli import app
from feature_pipelines.credit.load import (
    DEFAULT_REPO,
    DEFAULT_SOURCE,
    HISTORY_FILE,
    LOANS_FILE,
    SOURCE_ENV,
    ZIPCODES_FILE,
    clean_applications,
    history_table,
    load,
    source_dir,
)
from feature_repo.domain import load_domain

SPEC = load_domain(DEFAULT_REPO)


def definitions_copy(target: Path) -> Path:
    """The credit repository's definitions (not its data) in a folder of its own."""
    target.mkdir(parents=True)
    for item in DEFAULT_REPO.iterdir():
        if item.suffix in (".py", ".yaml") or item.name == ".feastignore":
            (target / item.name).write_bytes(item.read_bytes())
    return target


def application(**changes: object) -> dict[str, object]:
    """One loan application row as the tutorial's loan table holds it."""
    row: dict[str, object] = {
        "loan_id": 10000,
        "dob_ssn": "19530219_5179",
        "zipcode": 76104,
        "person_age": 22,
        "person_income": 59000,
        "person_home_ownership": "RENT",
        "person_emp_length": 5.0,
        "loan_intent": "PERSONAL",
        "loan_amnt": 35000,
        "loan_int_rate": 16.02,
        "loan_status": 1,
        "event_timestamp": pd.Timestamp("2021-08-25 20:34:41", tz="UTC"),
        "created_timestamp": pd.Timestamp("2021-08-25 20:34:41", tz="UTC"),
    }
    row.update(changes)
    return row


def test_source_folder_comes_from_the_option_then_the_environment(monkeypatch) -> None:
    monkeypatch.delenv(SOURCE_ENV, raising=False)
    assert source_dir() == DEFAULT_SOURCE
    monkeypatch.setenv(SOURCE_ENV, "/elsewhere")
    assert source_dir() == Path("/elsewhere")
    assert source_dir(Path("/given")) == Path("/given")


def test_the_source_data_loads_cleaned(tmp_path: Path) -> None:
    repo = definitions_copy(tmp_path / "credit")
    result = load(None, repo)
    assert (result.n_applications, result.n_zipcodes, result.n_histories) == (28_638, 28_844, 1000)
    assert result.cleared == {"person_age": 4, "person_emp_length": 2}
    assert 0.03 < result.history_coverage < 0.04
    assert result.applications == repo / "data" / "loan_applications.parquet"

    apps = pd.read_parquet(result.applications)
    assert list(apps.columns[:3]) == ["loan_id", "event_timestamp", "dob_ssn"]
    assert str(apps["event_timestamp"].dtype) == "datetime64[us, UTC]"
    assert apps["person_age"].max() <= 100 and apps["person_age"].isna().sum() == 4
    assert apps["person_emp_length"].max() <= 100
    assert apps["zipcode"].str.fullmatch(r"[0-9]{5}").all()
    assert apps["event_timestamp"].is_monotonic_increasing
    assert set(apps["person_home_ownership"]) <= set(
        SPEC.request_fields["person_home_ownership"].constraints.values or []
    )

    zips = pd.read_parquet(result.zipcodes)
    assert "00501" in set(zips["zipcode"])  # leading zeros kept
    assert zips["zipcode"].is_unique
    histories = pd.read_parquet(result.histories)
    assert str(histories["event_timestamp"].dtype) == "datetime64[us, UTC]"
    # Every application can see the history snapshot (point in time).
    assert histories["event_timestamp"].max() < apps["event_timestamp"].min()


def test_quirks_and_declared_treatments() -> None:
    loans = pd.DataFrame(
        [
            application(loan_id=1, zipcode=501, person_age=144, person_emp_length=123.0),
            application(loan_id=2, person_home_ownership="CONDO", loan_intent="CRYPTO"),
        ]
    )
    frame, cleared = clean_applications(loans, SPEC)
    assert cleared == {"person_age": 1, "person_emp_length": 1}
    first, second = frame.to_dict("records")
    assert first["loan_id"] == "1" and first["zipcode"] == "00501"
    assert np.isnan(first["person_age"]) and np.isnan(first["person_emp_length"])
    # Declared in domain.yaml: unknown home ownership counts as OTHER, unknown intent as missing.
    assert second["person_home_ownership"] == "OTHER"
    assert second["loan_intent"] is None


def test_a_value_against_its_declaration_is_refused() -> None:
    loans = pd.DataFrame([application(), application(loan_id=10001, person_income=-5)])
    with pytest.raises(
        ValueError, match=r"1 application breaks the declaration of 'person_income'"
    ):
        clean_applications(loans, SPEC)


def test_history_without_time_is_dated_before_the_first_application() -> None:
    history = pd.DataFrame(
        {
            "dob_ssn": ["19530219_5179"],
            **{c: [1] for c in ("credit_card_due", "mortgage_due", "student_loan_due")},
            **{c: [0] for c in ("vehicle_loan_due", "hard_pulls", "bankruptcies")},
            **{f"missed_payments_{p}": [0] for p in ("2y", "1y", "6m")},
        }
    )
    first = pd.Timestamp("2020-08-25 20:34:41", tz="UTC")
    table = history_table(history, first)
    assert table["event_timestamp"].tolist() == [first - pd.Timedelta(days=1)]
    assert table["created_timestamp"].tolist() == table["event_timestamp"].tolist()


def test_cli_names_the_setting_when_files_are_missing(tmp_path: Path) -> None:
    repo = definitions_copy(tmp_path / "credit")
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(
        app, ["credit", "load", "--repo", str(repo)], env={SOURCE_ENV: str(empty)}
    )
    assert result.exit_code == 1
    for word in (str(empty), LOANS_FILE, ZIPCODES_FILE, HISTORY_FILE, SOURCE_ENV):
        assert word in result.output
