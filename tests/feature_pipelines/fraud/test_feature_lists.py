"""The pipelines write exactly the features the Feast definitions declare.

``feature_repo/fraud/`` is the source of feature names and types. The fraud jobs declare what
they compute (``schema.ENTITY_FEATURES`` for the hourly batch tables, ``windows.CATALOGUE`` for
the stream windows); these tests read the Feast repository as ``feast apply`` does and hold the
pipelines' output tables (columns, dtypes, join keys, files, push sources) equal to it, so a
feature renamed or retyped on either side fails here rather than in training or serving.
"""

from __future__ import annotations

import pandas as pd
import pytest

from feature_pipelines.fraud import schema
from feature_pipelines.fraud.aggregate import aggregate
from feature_pipelines.fraud.generate import generate_transactions
from feature_pipelines.fraud.windows import CATALOGUE
from feature_pipelines.streaming.replay import empty_stream_tables, stream_tables
from tests.conftest import FEATURE_REPO
from tests.feast_definitions import ViewDefinition, feature_views

TIMESTAMPS = [schema.EVENT_TIMESTAMP, schema.CREATED_TIMESTAMP]


@pytest.fixture(scope="module")
def views() -> dict[str, ViewDefinition]:
    return feature_views(FEATURE_REPO)


@pytest.fixture(scope="module")
def sample() -> pd.DataFrame:
    return generate_transactions(3_000, seed=3, days=3)


def view_of_table(views: dict[str, ViewDefinition], table_file: str) -> ViewDefinition:
    (view,) = [v for v in views.values() if v.table_file == table_file]
    return view


def assert_table_matches(frame: pd.DataFrame, view: ViewDefinition) -> None:
    (join_key,) = view.join_keys
    assert list(frame.columns) == [join_key, *TIMESTAMPS, *view.feature_names], view.name
    dtypes = {name: str(frame[name].dtype) for name in view.feature_names}
    assert dtypes == view.pandas_dtypes, view.name


def test_batch_tables_are_the_batch_views(views, sample: pd.DataFrame) -> None:
    tables = aggregate(sample)
    assert set(tables) == set(schema.TABLE_FILES) == set(schema.ENTITY_FEATURES)
    for entity, file_name in schema.TABLE_FILES.items():
        view = view_of_table(views, file_name)
        assert view.join_keys == [schema.ENTITY_JOIN_KEYS[entity]]
        assert schema.ENTITY_FEATURES[entity] == view.feature_names
        assert {f: schema.feature_dtype(f) for f in view.feature_names} == view.pandas_dtypes
        assert_table_matches(tables[entity], view)


def test_stream_tables_are_the_streaming_views(views, sample: pd.DataFrame) -> None:
    replayed = stream_tables(CATALOGUE, sample)
    empty = empty_stream_tables(CATALOGUE)
    for table, kind in CATALOGUE.tables.items():
        view = views[kind.view]
        assert view.table_file == kind.table_file
        assert view.push_source == kind.push_source
        assert view.join_keys == [kind.join_key]
        # A row is usable for as long as its longest window runs, no longer.
        assert view.ttl_seconds == max(f.window_us for f in kind.features) / 1e6
        assert_table_matches(replayed[table], view)
        assert_table_matches(empty[table].astype({kind.join_key: object}), view)


def test_every_view_with_a_pipeline_is_covered(views) -> None:
    """A new view over a pipeline table needs its side here too (or is written elsewhere)."""
    written = {*schema.TABLE_FILES.values(), *(k.table_file for k in CATALOGUE.kinds)}
    assert {v.table_file for v in views.values()} == written
