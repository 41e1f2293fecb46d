"""Offline sources follow the feature_store yaml in use: FileSource for the file-based stores,
SparkSource for Spark, over the same parquet file (no Spark session is started here)."""

from __future__ import annotations

from pathlib import Path

import pytest
from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource
from feast.infra.offline_stores.file_source import FileSource

from feature_repo.sources import (
    FS_YAML_ENV,
    feature_store_yaml,
    offline_store_type,
    parquet_source,
)
from tests.conftest import FEATURE_REPO


@pytest.fixture(autouse=True)
def no_yaml_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FS_YAML_ENV, raising=False)


def test_the_repositorys_own_yaml_without_the_variable(tmp_path: Path) -> None:
    assert feature_store_yaml(tmp_path) == tmp_path / "feature_store.yaml"


def test_the_variable_chooses_the_yaml_as_feast_resolves_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, cwd = tmp_path / "repo", tmp_path / "cwd"
    repo.mkdir()
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    absolute = tmp_path / "elsewhere.yaml"
    monkeypatch.setenv(FS_YAML_ENV, str(absolute))
    assert feature_store_yaml(repo) == absolute
    # Relative: to the working directory where such a file exists, else to the repository.
    monkeypatch.setenv(FS_YAML_ENV, "feature_store.spark.yaml")
    assert feature_store_yaml(repo) == repo / "feature_store.spark.yaml"
    (cwd / "feature_store.spark.yaml").write_text("offline_store: spark\n")
    assert feature_store_yaml(repo) == Path("feature_store.spark.yaml")


@pytest.mark.parametrize(
    ("text", "store"),
    [
        (None, "dask"),  # no yaml at all: Feast's default
        ("", "dask"),
        ("project: p\n", "dask"),
        ("offline_store: spark\n", "spark"),
        ("offline_store:\n  type: duckdb\n", "duckdb"),
        ("offline_store:\n  type: spark\n  spark_conf: {}\n", "spark"),
        ("offline_store:\n  spark_conf: {}\n", "dask"),
    ],
)
def test_offline_store_type_reads_the_yaml_in_use(
    tmp_path: Path, text: str | None, store: str
) -> None:
    if text is not None:
        (tmp_path / "feature_store.yaml").write_text(text)
    assert offline_store_type(tmp_path) == store


def test_the_fraud_repositorys_yamls(monkeypatch: pytest.MonkeyPatch) -> None:
    assert offline_store_type(FEATURE_REPO) == "duckdb"
    monkeypatch.setenv(FS_YAML_ENV, "feature_store.spark.yaml")
    assert offline_store_type(FEATURE_REPO) == "spark"
    monkeypatch.setenv(FS_YAML_ENV, "feature_store.redis.yaml")
    assert offline_store_type(FEATURE_REPO) == "duckdb"


def source(repo: Path):  # type: ignore[no-untyped-def]
    return parquet_source(
        repo,
        name="card_features_source",
        path=repo / "data" / "card_features.parquet",
        timestamp_field="event_timestamp",
        created_timestamp_column="created_timestamp",
        description="Hourly card aggregates.",
    )


def test_a_file_based_store_gets_a_file_source(tmp_path: Path) -> None:
    (tmp_path / "feature_store.yaml").write_text("offline_store:\n  type: duckdb\n")
    made = source(tmp_path)
    assert type(made) is FileSource
    assert made.path == str(tmp_path / "data" / "card_features.parquet")
    assert (made.name, made.timestamp_field, made.created_timestamp_column) == (
        "card_features_source",
        "event_timestamp",
        "created_timestamp",
    )
    assert made.description == "Hourly card aggregates."


def test_spark_gets_a_spark_source_over_the_same_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "feature_store.yaml").write_text("offline_store:\n  type: duckdb\n")
    (tmp_path / "feature_store.spark.yaml").write_text("offline_store:\n  type: spark\n")
    monkeypatch.setenv(FS_YAML_ENV, str(tmp_path / "feature_store.spark.yaml"))
    made = source(tmp_path)
    assert type(made) is SparkSource
    assert made.path == str(tmp_path / "data" / "card_features.parquet")
    assert made.file_format == "parquet"
    assert (made.name, made.timestamp_field, made.created_timestamp_column) == (
        "card_features_source",
        "event_timestamp",
        "created_timestamp",
    )
