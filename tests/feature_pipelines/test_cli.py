"""The pipelines' command line: each command on tiny inputs in tmp_path, its exit code and output.

Exit code 2 is a refused option (typer's usage error) with a message naming the option; the
commands that talk to Redis run against the session's real redis-server.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import pandas as pd
import pytest
import redis
from typer.testing import CliRunner, Result

from feature_pipelines.cli import app
from feature_pipelines.fraud import schema
from feature_pipelines.fraud.aggregate import aggregate
from feature_pipelines.fraud.events import TransactionEvent, events_from_frame
from feature_pipelines.fraud.generate import generate_transactions
from feature_pipelines.fraud.windows import CATALOGUE
from feature_pipelines.streaming.replay import stream_tables
from feature_pipelines.streaming.source import append_events
from feature_pipelines.streaming.state import WindowState
from feature_repo import clock
from tests.conftest import RedisServer, StreamRig

END = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
DAY = pd.Timedelta(days=1)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def message(result: Result) -> str:
    """The output as one line: words only, without the error box's borders and wrapping."""
    return " ".join(result.output.replace("│", " ").split())


def planted(*rows: tuple[str, str | pd.Timestamp, float, str, str, str]) -> pd.DataFrame:
    """Transactions in the generator's schema from (id, time, amount, ip, card, ip country);
    naive times are UTC."""
    records = []
    for tid, at, amount, ip, card, ip_country in rows:
        stamp = pd.Timestamp(at)
        stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
        records.append(
            {
                schema.TRANSACTION_ID: tid,
                schema.EVENT_TIMESTAMP: stamp,
                schema.AMOUNT: amount,
                schema.CURRENCY: "USD",
                schema.IP_ADDRESS: ip,
                schema.CARD_ID: card,
                schema.MERCHANT_ID: "m_1",
                schema.CARD_COUNTRY: "US",
                schema.IP_COUNTRY: ip_country,
                schema.MERCHANT_COUNTRY: "US",
                schema.MERCHANT_CATEGORY: "grocery",
                schema.IS_FRAUD: 0,
                schema.FRAUD_PATTERN: schema.FRAUD_PATTERN_NONE,
                schema.LABEL_AVAILABLE_AT: stamp + 5 * DAY,
            }
        )
    return pd.DataFrame.from_records(records).astype(dict(schema.TRANSACTION_DTYPES))


def three_payments() -> pd.DataFrame:
    """Two cards and two IPs over two hours of 2024-03-10, not in time order."""
    return planted(
        ("tx_1", "2024-03-10 10:45", 12.5, "198.51.100.7", "card_a", "US"),
        ("tx_2", "2024-03-10 11:40", 3.0, "198.51.100.7", "card_b", "US"),
        ("tx_3", "2024-03-10 11:20", 40.0, "203.0.113.9", "card_a", "DE"),
    )


@pytest.fixture
def payments(tmp_path: Path) -> Path:
    path = tmp_path / "tx.parquet"
    three_payments().to_parquet(path, index=False)
    return path


# --- the application -------------------------------------------------------------------------


def listed(output: str) -> set[str]:
    """Command names listed in a help text, framed by a box or not."""
    return set(re.findall(r"^[│ ]*([a-z][a-z-]*)  ", output, flags=re.MULTILINE))


def test_help_lists_every_step() -> None:
    result = invoke("--help")
    assert result.exit_code == 0, result.output
    steps = {"generate", "aggregate", "materialize", "replay", "stream", "produce", "skew-check"}
    assert steps | {"credit"} <= listed(result.output)
    credit = invoke("credit", "--help")
    assert credit.exit_code == 0 and "load" in listed(credit.output)


def test_no_command_shows_the_help_as_a_usage_error() -> None:
    result = invoke()
    assert result.exit_code == 2
    assert "generate" in listed(result.output)


# --- generate --------------------------------------------------------------------------------


def test_cli_writes_parquet(tmp_path) -> None:
    out = tmp_path / "nested" / "tx.parquet"
    args = ["generate", "--rows", "3000", "--seed", "4", "--days", "5"]
    args += ["--end", "2024-06-01T12:00:00Z", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "3,000 transactions" in result.output
    written = pd.read_parquet(out)
    expected = generate_transactions(3000, seed=4, days=5, end=END)
    # Files carry microsecond timestamps (lossless: event times have millisecond precision).
    for column in (schema.EVENT_TIMESTAMP, schema.LABEL_AVAILABLE_AT):
        assert str(written[column].dtype) == "datetime64[us, UTC]"
        written[column] = written[column].dt.as_unit("ns")
    pd.testing.assert_frame_equal(written, expected)


def test_cli_rejects_bad_end(tmp_path) -> None:
    result = CliRunner().invoke(
        app, ["generate", "--end", "yesterday", "--out", str(tmp_path / "x")]
    )
    assert result.exit_code == 2
    assert not (tmp_path / "x").exists()
    assert "Invalid value for --end: not an ISO-8601 datetime: 'yesterday'" in message(result)


@pytest.mark.parametrize(("option", "value"), [("--rows", "0"), ("--days", "0")])
def test_generate_refuses_an_empty_range(tmp_path: Path, option: str, value: str) -> None:
    result = invoke("generate", option, value, "--out", str(tmp_path / "x.parquet"))
    assert result.exit_code == 2
    assert f"Invalid value for '{option}': Input should be greater than or equal to 1" in (
        message(result)
    )
    assert not (tmp_path / "x.parquet").exists()


def test_cli_adds_the_new_pattern_from_a_day(tmp_path: Path) -> None:
    out = tmp_path / "tx.parquet"
    result = invoke(
        "generate", "--rows", "3000", "--seed", "4", "--days", "10",
        "--end", "2024-06-01T12:00:00Z", "--new-pattern-from-day", "6", "--out", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    written = pd.read_parquet(out)
    expected = generate_transactions(3000, seed=4, days=10, end=END, new_pattern_from_day=6)
    for column in (schema.EVENT_TIMESTAMP, schema.LABEL_AVAILABLE_AT):
        written[column] = written[column].dt.as_unit("ns")
    pd.testing.assert_frame_equal(written, expected)
    assert (written[schema.FRAUD_PATTERN] == schema.FRAUD_PATTERN_NEW).sum() >= 3


def test_cli_refuses_a_new_pattern_day_past_the_range(tmp_path: Path) -> None:
    out = tmp_path / "x.parquet"
    result = invoke("generate", "--days", "10", "--new-pattern-from-day", "10", "--out", str(out))
    assert result.exit_code == 2
    assert (
        "Invalid value for --new-pattern-from-day: day 10 is past the range: its days run "
        "from 0 to 9" in message(result)
    )
    assert not out.exists()


# --- aggregate -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def generated() -> pd.DataFrame:
    return generate_transactions(4_000, seed=21, days=12, end=datetime(2024, 3, 20, tzinfo=UTC))


def test_cli_writes_feature_tables(tmp_path, generated: pd.DataFrame) -> None:
    duckdb = pytest.importorskip("duckdb")
    source = tmp_path / "tx.parquet"
    generated.to_parquet(source, index=False)
    out_dir = tmp_path / "features"
    args = ["aggregate", "--transactions", str(source), "--out-dir", str(out_dir)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    expected = aggregate(generated)
    for entity in ("ip", "card", "merchant"):
        path = out_dir / f"{entity}_features.parquet"
        written = pd.read_parquet(path)
        # Files carry microseconds so that Feast's DuckDB offline store can cast them.
        for column in (schema.EVENT_TIMESTAMP, schema.CREATED_TIMESTAMP):
            assert str(written[column].dtype) == "datetime64[us, UTC]"
            written[column] = written[column].dt.as_unit("ns")
        pd.testing.assert_frame_equal(written, expected[entity])
        query = f"SELECT CAST(event_timestamp AS TIMESTAMP) FROM read_parquet('{path}')"
        assert len(duckdb.sql(query).fetchall()) == len(written)


def test_cli_rejects_missing_input(tmp_path) -> None:
    result = CliRunner().invoke(
        app, ["aggregate", "--transactions", str(tmp_path / "none.parquet")]
    )
    assert result.exit_code == 2
    assert "Invalid value for --transactions: no such file:" in message(result)


def test_aggregate_reports_the_snapshots_it_wrote(payments: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "tables"
    result = invoke("aggregate", "--transactions", str(payments), "--out-dir", str(out_dir))
    assert result.exit_code == 0, result.output
    # An hour with an event gives a snapshot at the next hour boundary; labels mature after
    # the default end (the hour after the latest event), so they add none.
    assert "snapshots: 3 ip, 3 card, 2 merchant" in result.output
    assert "aggregated 3 transactions in " in result.output
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(schema.TABLE_FILES.values())
    card = pd.read_parquet(out_dir / "card_features.parquet").set_index(
        [schema.CARD_ID, schema.EVENT_TIMESTAMP]
    )
    noon = card.loc[("card_a", pd.Timestamp("2024-03-10 12:00", tz="UTC"))]
    assert noon["card_txn_count_1h"] == 1
    assert noon["card_txn_count_24h"] == 2
    assert noon["card_amount_max_30d"] == 40.0
    assert noon["card_amount_mean_30d"] == pytest.approx(26.25)
    assert noon["card_distinct_countries_24h"] == 2


def test_aggregate_end_drops_later_snapshots(payments: Path, tmp_path: Path) -> None:
    result = invoke(
        "aggregate",
        "--transactions",
        str(payments),
        "--out-dir",
        str(tmp_path / "tables"),
        "--end",
        "2024-03-10T11:30:00",
    )
    assert result.exit_code == 0, result.output
    assert "snapshots: 1 ip, 1 card, 1 merchant" in result.output
    ip = pd.read_parquet(tmp_path / "tables" / "ip_features.parquet")
    assert ip[schema.EVENT_TIMESTAMP].tolist() == [pd.Timestamp("2024-03-10 11:00", tz="UTC")]


def test_aggregate_refuses_an_unknown_engine(payments: Path, tmp_path: Path) -> None:
    result = invoke("aggregate", "--transactions", str(payments), "--engine", "dask")
    assert result.exit_code == 2
    assert "'dask' is not one of 'pandas', 'spark'" in message(result)


# --- materialize, skew-check: refusals before any store is read -------------------------------


def test_materialize_rebuild_refuses_a_start(tmp_path: Path) -> None:
    result = invoke(
        "materialize", "--repo", str(tmp_path), "--rebuild", "--start", "2024-03-01T00:00:00"
    )
    assert result.exit_code == 2
    assert "--rebuild chooses each view's window; drop --start" in message(result)


@pytest.fixture
def empty_repo(tmp_path: Path) -> Path:
    """A feature repository without definitions: a store opens, nothing is registered."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "feature_store.yaml").write_text(
        "project: cli_test\nprovider: local\nregistry: data/registry.db\n"
        "online_store:\n  type: sqlite\n  path: data/online.db\n"
        "offline_store:\n  type: duckdb\nentity_key_serialization_version: 3\n"
    )
    return repo


def test_skew_check_refuses_an_entity_without_a_value(empty_repo: Path) -> None:
    result = invoke("skew-check", "--repo", str(empty_repo), "--entity", "card_id")
    assert result.exit_code == 2
    assert "Invalid value for --entity: expected join_key=value, got 'card_id'" in message(result)


def test_skew_check_without_entities_needs_the_transactions(
    empty_repo: Path, tmp_path: Path
) -> None:
    result = invoke(
        "skew-check", "--repo", str(empty_repo), "--transactions", str(tmp_path / "no.parquet")
    )
    assert result.exit_code == 2
    assert "Invalid value for --transactions: no such file:" in message(result)


# --- replay ----------------------------------------------------------------------------------


def test_replay_writes_the_stream_tables_in_event_order(payments: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "data"
    result = invoke("replay", "--transactions", str(payments), "--out-dir", str(out_dir))
    assert result.exit_code == 0, result.output
    assert "rows: 3 ip_stream, 3 card_stream; replayed 3 events in " in result.output
    ordered = three_payments().sort_values(schema.EVENT_TIMESTAMP, kind="stable")
    expected = stream_tables(CATALOGUE, ordered)
    for table, kind in CATALOGUE.tables.items():
        written = pd.read_parquet(out_dir / kind.table_file)
        assert f"wrote {out_dir / kind.table_file}" in result.output
        for column in (schema.EVENT_TIMESTAMP, schema.CREATED_TIMESTAMP):
            written[column] = written[column].dt.as_unit("us")
            expected[table][column] = expected[table][column].dt.as_unit("us")
        pd.testing.assert_frame_equal(written, expected[table], check_dtype=False)
    cards = pd.read_parquet(out_dir / "card_stream_features.parquet").set_index(schema.CARD_ID)
    # card_a's second payment (11:20) sees its first (10:45) within the hour, not within 5 min.
    last_a = cards.loc["card_a"].iloc[-1]
    assert (last_a["card_rt_txn_count_1h"], last_a["card_rt_amount_sum_1h"]) == (2, 52.5)
    assert (last_a["card_rt_txn_count_5m"], last_a["card_rt_distinct_ips_10m"]) == (1, 1)
    assert cards.loc["card_b", "card_rt_small_txn_count_1h"] == 1


def test_replay_refuses_a_missing_history(tmp_path: Path) -> None:
    result = invoke("replay", "--transactions", str(tmp_path / "no.parquet"))
    assert result.exit_code == 2
    assert "Invalid value for --transactions: no such file:" in message(result)


@pytest.mark.redis
def test_replay_seeds_the_window_state_with_the_last_two_hours(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    history = planted(
        ("s_1", "2024-03-10 08:00:00", 5.0, "198.51.100.1", "card_s", "US"),
        ("s_2", "2024-03-10 09:00:00", 6.0, "198.51.100.1", "card_s", "US"),
        ("s_3", "2024-03-10 09:00:01", 7.0, "198.51.100.2", "card_s", "US"),
        ("s_4", "2024-03-10 11:00:00", 8.25, "198.51.100.1", "card_s", "US"),
    )
    history.to_parquet(tmp_path / "tx.parquet", index=False)
    prefix = "test_cli_replay:rt"
    client = redis.Redis(port=redis_server.port)
    try:
        result = invoke(
            "replay",
            "--transactions",
            str(tmp_path / "tx.parquet"),
            "--out-dir",
            str(tmp_path / "data"),
            "--seed-state",
            redis_server.connection_string,
            "--state-prefix",
            prefix,
        )
        assert result.exit_code == 0, result.output
        assert "seeded the window state with the last 2 events (2 h)" in result.output
        state = WindowState(client, CATALOGUE, prefix=prefix)
        t = {e.transaction_id: e.event_time_us for e in events_from_frame(history)}
        assert state.members("card", "card_s") == [
            ("s_3|700|198.51.100.2", t["s_3"]),
            ("s_4|825|198.51.100.1", t["s_4"]),
        ]
        assert state.members("ip", "198.51.100.1") == [("s_4|825|card_s", t["s_4"])]
    finally:
        for key in client.scan_iter(f"{prefix}:*"):
            client.delete(key)
        client.close()


# --- produce, stream -------------------------------------------------------------------------


@pytest.fixture
def stream_key(redis_server: RedisServer) -> Iterator[tuple[str, redis.Redis]]:
    client = redis.Redis(port=redis_server.port)
    key = "test_cli:transactions"
    client.delete(key)
    try:
        yield key, client
    finally:
        client.delete(key)
        client.close()


@pytest.mark.redis
def test_produce_appends_the_latest_events_in_time_order(
    payments: Path, redis_server: RedisServer, stream_key: tuple[str, redis.Redis]
) -> None:
    key, client = stream_key
    result = invoke(
        "produce",
        "--transactions",
        str(payments),
        "--redis",
        redis_server.connection_string,
        "--stream",
        key,
        "--last",
        "2",
    )
    assert result.exit_code == 0, result.output
    assert f"appended 2 events to {key} in " in result.output
    sent = [TransactionEvent.from_fields(fields) for _, fields in client.xrange(key)]
    ordered = three_payments().sort_values(schema.EVENT_TIMESTAMP, kind="stable")
    assert sent == events_from_frame(ordered.tail(2))
    assert [e.transaction_id for e in sent] == ["tx_3", "tx_2"]


@pytest.mark.redis
def test_produce_can_shift_the_latest_event_to_now(
    payments: Path, redis_server: RedisServer, stream_key: tuple[str, redis.Redis]
) -> None:
    key, client = stream_key
    before = clock.now()
    result = invoke(
        "produce",
        "--transactions",
        str(payments),
        "--redis",
        redis_server.connection_string,
        "--stream",
        key,
        "--shift-to-now",
    )
    after = clock.now()
    assert result.exit_code == 0, result.output
    sent = [TransactionEvent.from_fields(fields) for _, fields in client.xrange(key)]
    assert [e.transaction_id for e in sent] == ["tx_1", "tx_3", "tx_2"]
    assert before - timedelta(milliseconds=1) <= sent[-1].event_time <= after
    # Shifted together: the gaps between events stay.
    gaps = [b.event_time_us - a.event_time_us for a, b in pairwise(sent)]
    assert gaps == [35 * 60 * 1_000_000, 20 * 60 * 1_000_000]


@pytest.fixture
def own_signal_handlers() -> Iterator[None]:
    """The stream command installs SIGINT/SIGTERM handlers; the test process gets its own back."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


@pytest.mark.redis
@pytest.mark.usefixtures("own_signal_handlers")
def test_stream_consumes_events_into_the_store_and_stops_after_max_events(
    stream_rig: StreamRig,
) -> None:
    rig = stream_rig
    rig.reset()
    key, prefix = "test_cli:stream", "test_cli_stream:rt"
    now = pd.Timestamp(clock.now()).floor("s")
    history = planted(
        ("st_1", now - pd.Timedelta(minutes=3), 2.0, "198.51.100.3", "card_st", "US"),
        ("st_2", now - pd.Timedelta(minutes=2), 4.5, "198.51.100.4", "card_st", "US"),
        ("st_3", now - pd.Timedelta(minutes=1), 30.0, "198.51.100.3", "card_st", "US"),
    )
    append_events(rig.client, events_from_frame(history), stream=key)
    result = invoke(
        "stream",
        "--repo",
        str(rig.repo),
        "--yaml",
        str(rig.yaml),
        "--redis",
        rig.server.connection_string,
        "--stream",
        key,
        "--state-prefix",
        prefix,
        "--offline-flush-seconds",
        "0",
        "--max-events",
        "3",
    )
    assert result.exit_code == 0, result.output
    assert f"consuming {key} as stream-features/consumer-1" in result.output
    assert "stopped: 3 events in " in result.output and "0 dead letters" in result.output
    # The window state lives under the prefix given.
    assert len(WindowState(rig.client, CATALOGUE, prefix=prefix).members("card", "card_st")) == 3
    online = (
        rig.store()
        .get_online_features(
            features=[
                "card_stream_features:card_rt_txn_count_5m",
                "card_stream_features:card_rt_amount_sum_5m",
                "card_stream_features:card_rt_small_txn_count_1h",
                "card_stream_features:card_rt_distinct_ips_10m",
            ],
            entity_rows=[{"card_id": "card_st"}],
        )
        .to_dict()
    )
    assert online["card_rt_txn_count_5m"] == [3]
    assert online["card_rt_amount_sum_5m"] == [36.5]
    assert online["card_rt_small_txn_count_1h"] == [2]
    assert online["card_rt_distinct_ips_10m"] == [2]
