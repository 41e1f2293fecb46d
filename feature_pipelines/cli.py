"""Command line of the feature pipelines: ``python -m feature_pipelines --help``.

Each pipeline step is one command of the ``app`` Typer application; a new step is a new
function decorated with ``@app.command(...)``.

Why one module of this length: one thin command per pipeline step; the length is the number of
steps, and each command only parses options and calls its step's module.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

import pandas as pd
import typer

from feature_pipelines.credit.cli import app as credit_app
from feature_pipelines.fraud import schema
from feature_pipelines.fraud.aggregate import aggregate
from feature_pipelines.fraud.events import STREAM
from feature_pipelines.fraud.generate import generate_transactions, write_transactions
from feature_pipelines.fraud.windows import STATE_PREFIX
from feature_pipelines.tables import write_feature_tables
from feature_repo import clock

app = typer.Typer(
    name="fraud-pipelines",
    help="Feature pipelines: synthetic transactions and batch features for the feature store.",
    no_args_is_help=True,
    add_completion=False,
)

# Each domain's jobs beyond fraud are a command group: `python -m feature_pipelines credit load`.
app.add_typer(credit_app, name="credit")

EndOption = Annotated[
    str | None,
    typer.Option(
        help="ISO-8601 end of the range, e.g. 2024-06-01T00:00:00Z (naive means UTC).",
        show_default=False,
    ),
]


def _parse_end(value: str | None) -> datetime | None:
    """Parse an ISO-8601 ``--end`` value; None passes through."""
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError as exc:
        raise typer.BadParameter(
            f"not an ISO-8601 datetime: {value!r}", param_hint="--end"
        ) from exc


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages.")] = False,
) -> None:
    """Feature pipelines: synthetic transactions and batch features for the feature store."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@app.command("generate")
def generate_command(
    rows: Annotated[int, typer.Option(min=1, help="Number of transactions.")] = 50_000,
    seed: Annotated[int, typer.Option(help="Random seed; same arguments, same data.")] = 7,
    days: Annotated[int, typer.Option(min=1, help="Days covered, ending at --end.")] = 35,
    end: EndOption = None,
    out: Annotated[Path, typer.Option(help="Output parquet file.")] = Path(
        "data/transactions.parquet"
    ),
    new_pattern_from_day: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="From this day of the range (0 = its first day) on, add the new fraud pattern "
            "(fraud_pattern 'account_takeover') that the batch features barely see.",
        ),
    ] = None,
) -> None:
    """Generate synthetic payment transactions with labelled fraud patterns."""
    started = time.perf_counter()
    if new_pattern_from_day is not None and new_pattern_from_day >= days:
        raise typer.BadParameter(
            f"day {new_pattern_from_day} is past the range: its days run from 0 to {days - 1}",
            param_hint="--new-pattern-from-day",
        )
    try:
        frame = generate_transactions(
            rows,
            seed=seed,
            days=days,
            end=_parse_end(end),
            new_pattern_from_day=new_pattern_from_day,
        )
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    write_transactions(frame, out)
    fraud_rate = float(frame[schema.IS_FRAUD].mean())
    typer.echo(
        f"wrote {len(frame):,} transactions ({fraud_rate:.2%} fraud) to {out} "
        f"in {time.perf_counter() - started:.1f}s"
    )


@app.command("aggregate")
def aggregate_command(
    transactions: Annotated[Path, typer.Option(help="Transactions parquet file.")] = Path(
        "data/transactions.parquet"
    ),
    out_dir: Annotated[Path, typer.Option(help="Directory for the feature tables.")] = Path(
        "feature_repo/fraud/data"
    ),
    end: EndOption = None,
    engine: Annotated[
        Literal["pandas", "spark"],
        typer.Option(help="pandas in process, or Spark (local, or the spark-submit session)."),
    ] = "pandas",
) -> None:
    """Compute hourly ip, card and merchant feature snapshots for the offline store."""
    if not transactions.is_file():
        raise typer.BadParameter(f"no such file: {transactions}", param_hint="--transactions")
    started = time.perf_counter()
    if engine == "spark":
        from feature_pipelines.fraud.aggregate_spark import aggregate_file
        from feature_pipelines.spark import spark_session

        rows = aggregate_file(spark_session(), transactions, out_dir, end=_parse_end(end))
        typer.echo(f"snapshots: {', '.join(f'{n:,} {entity}' for entity, n in rows.items())}")
        typer.echo(f"aggregated on Spark in {time.perf_counter() - started:.1f}s")
        return
    frame = pd.read_parquet(transactions)
    features = aggregate(frame, end=_parse_end(end))
    for path in write_feature_tables(features, out_dir, schema.TABLE_FILES):
        typer.echo(f"wrote {path}")
    counts = ", ".join(f"{len(table):,} {entity}" for entity, table in features.items())
    typer.echo(f"snapshots: {counts}")
    typer.echo(f"aggregated {len(frame):,} transactions in {time.perf_counter() - started:.1f}s")


@app.command("materialize")
def materialize_command(
    repo: Annotated[Path, typer.Option(help="Feast feature repository.")] = Path(
        "feature_repo/fraud"
    ),
    end: EndOption = None,
    start: Annotated[
        str | None,
        typer.Option(help="Reload [start, end] in full instead of incrementally (ISO-8601)."),
    ] = None,
    yaml: Annotated[
        Path | None,
        typer.Option(help="Alternative feature_store.yaml (e.g. feature_store.redis.yaml)."),
    ] = None,
    view: Annotated[
        list[str] | None, typer.Option(help="Only these feature views (repeatable).")
    ] = None,
    rebuild: Annotated[
        bool,
        typer.Option(
            help="Empty the views' online rows and reload each view's TTL window before the end: "
            "after the offline history was rewritten rather than appended to."
        ),
    ] = False,
) -> None:
    """Load feature snapshots into the online store (incremental by default, up to now)."""
    from feature_pipelines.materialize import materialize

    if rebuild and start is not None:
        raise typer.BadParameter("--rebuild chooses each view's window; drop --start")
    started = time.perf_counter()
    until = materialize(
        repo,
        end=_parse_end(end),
        start=_parse_end(start),
        yaml_path=yaml,
        views=view or None,
        rebuild=rebuild,
    )
    typer.echo(f"materialized up to {until.isoformat()} in {time.perf_counter() - started:.1f}s")


RedisOption = Annotated[
    str,
    typer.Option(
        envvar="REDIS_CONNECTION_STRING",
        help="Redis holding the stream and the window state: host:port[,password=..] or a "
        "redis:// URL (default: $REDIS_CONNECTION_STRING).",
    ),
]
StreamOption = Annotated[str, typer.Option(help="Redis Stream key of the transaction events.")]
RepoOption = Annotated[Path, typer.Option(help="Feast feature repository.")]
YamlOption = Annotated[
    Path | None,
    typer.Option(help="Alternative feature_store.yaml (e.g. feature_store.redis.yaml)."),
]
StatePrefixOption = Annotated[str, typer.Option(help="Key prefix of the window state in Redis.")]


def _open_store(repo: Path, yaml: Path | None):  # type: ignore[no-untyped-def]
    from feast import FeatureStore

    if yaml is not None:
        return FeatureStore(repo_path=str(repo), fs_yaml_file=yaml)
    return FeatureStore(repo_path=str(repo))


@app.command("replay")
def replay_command(
    transactions: Annotated[Path, typer.Option(help="Transactions parquet file.")] = Path(
        "data/transactions.parquet"
    ),
    out_dir: Annotated[Path, typer.Option(help="Directory for the stream tables.")] = Path(
        "feature_repo/fraud/data"
    ),
    seed_state: Annotated[
        str | None,
        typer.Option(
            help="Also load the history's last two hours into the window state of this Redis "
            "(host:port or URL), so a live consumer continues where the history ends."
        ),
    ] = None,
    state_prefix: StatePrefixOption = STATE_PREFIX,
) -> None:
    """Feed a transaction history through the streaming window code; write its offline rows.

    The rows are those the live consumer writes for the same events (same code, same
    timestamps), in bulk: what training reads for the streaming feature views.
    """
    from feature_pipelines.fraud.events import events_from_frame
    from feature_pipelines.fraud.windows import CATALOGUE
    from feature_pipelines.streaming.replay import stream_tables, write_stream_tables
    from feature_pipelines.streaming.source import redis_client
    from feature_pipelines.streaming.state import WindowState
    from feature_pipelines.streaming.windows import HOUR_US

    if not transactions.is_file():
        raise typer.BadParameter(f"no such file: {transactions}", param_hint="--transactions")
    started = time.perf_counter()
    frame = pd.read_parquet(transactions).sort_values(schema.EVENT_TIMESTAMP, kind="stable")
    tables = stream_tables(CATALOGUE, frame)
    for path in write_stream_tables(CATALOGUE, tables, out_dir):
        typer.echo(f"wrote {path}")
    counts = ", ".join(f"{len(t):,} {name}" for name, t in tables.items())
    typer.echo(
        f"rows: {counts}; replayed {len(frame):,} events in {time.perf_counter() - started:.1f}s"
    )
    if seed_state:
        state = WindowState(redis_client(seed_state), CATALOGUE, prefix=state_prefix)
        stamps = pd.to_datetime(frame[schema.EVENT_TIMESTAMP], utc=True)
        tail = frame[stamps > stamps.max() - pd.Timedelta(microseconds=state.retention_us)]
        state.add(events_from_frame(tail))
        typer.echo(
            f"seeded the window state with the last {len(tail):,} events "
            f"({state.retention_us // HOUR_US} h)"
        )


@app.command("stream")
def stream_command(
    repo: RepoOption = Path("feature_repo/fraud"),
    yaml: YamlOption = None,
    redis: RedisOption = "127.0.0.1:6379",
    stream: StreamOption = STREAM,
    group: Annotated[str, typer.Option(help="Consumer group.")] = "stream-features",
    consumer: Annotated[
        str,
        typer.Option(
            help="Consumer name; a restart under the same name resumes its pending events."
        ),
    ] = "consumer-1",
    batch_size: Annotated[int, typer.Option(min=1, help="Most events per batch.")] = 500,
    block_ms: Annotated[int, typer.Option(min=1, help="Longest wait for new events (ms).")] = 100,
    offline_flush_seconds: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Push offline rows at most this often (0: push online and offline per batch).",
        ),
    ] = 2.0,
    claim_idle_seconds: Annotated[
        float, typer.Option(min=0.0, help="Take over other consumers' events idle this long.")
    ] = 60.0,
    state_prefix: StatePrefixOption = STATE_PREFIX,
    max_events: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many events (default: never).")
    ] = None,
    idle_exit_seconds: Annotated[
        float | None, typer.Option(min=0.0, help="Stop after the stream is idle this long.")
    ] = None,
) -> None:
    """Consume transaction events: windowed aggregates per IP and card, pushed to Feast.

    Long-running; SIGINT or SIGTERM stops it after flushing and acknowledging what it wrote.
    """
    import signal
    import threading

    from feature_pipelines.fraud.events import TransactionEvent
    from feature_pipelines.fraud.windows import CATALOGUE
    from feature_pipelines.streaming.consumer import FeastPushWriter, StreamConsumer
    from feature_pipelines.streaming.source import RedisStreamSource, redis_client
    from feature_pipelines.streaming.state import WindowState

    client = redis_client(redis)
    source = RedisStreamSource(
        client,
        stream,
        group,
        consumer,
        decode=TransactionEvent.from_fields,
        claim_idle_ms=int(claim_idle_seconds * 1000),
    )
    stream_consumer = StreamConsumer(
        source,
        WindowState(client, CATALOGUE, prefix=state_prefix),
        FeastPushWriter(_open_store(repo, yaml), CATALOGUE),
        batch_size=batch_size,
        block_ms=block_ms,
        offline_flush_seconds=offline_flush_seconds,
        # Offline pushes run on a thread of their own: their own store object too.
        offline_writer=FeastPushWriter(_open_store(repo, yaml), CATALOGUE),
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    typer.echo(f"consuming {stream} as {group}/{consumer}")
    try:
        stats = stream_consumer.run(
            stop=stop, max_events=max_events, idle_exit_seconds=idle_exit_seconds
        )
    finally:
        source.close()
    typer.echo(f"stopped: {stats.summary()}")


@app.command("produce")
def produce_command(
    transactions: Annotated[Path, typer.Option(help="Transactions parquet file.")] = Path(
        "data/transactions.parquet"
    ),
    redis: RedisOption = "127.0.0.1:6379",
    stream: StreamOption = STREAM,
    last: Annotated[
        int | None, typer.Option(min=1, help="Only the latest N transactions (default: all).")
    ] = None,
    shift_to_now: Annotated[
        bool, typer.Option(help="Shift event times so that the latest one is now.")
    ] = False,
    rate: Annotated[
        float | None,
        typer.Option(min=0.0, help="Events per second (default: as fast as possible)."),
    ] = None,
    max_len: Annotated[
        int | None, typer.Option(min=1, help="Trim the stream to about this many entries.")
    ] = None,
) -> None:
    """Append transactions to the stream as events, in event-time order (demos, benchmarks)."""
    from feature_pipelines.fraud.events import events_from_frame
    from feature_pipelines.streaming.source import append_events, redis_client

    frame = pd.read_parquet(transactions).sort_values(schema.EVENT_TIMESTAMP, kind="stable")
    if last is not None:
        frame = frame.tail(last)
    if shift_to_now and len(frame):
        stamps = pd.to_datetime(frame[schema.EVENT_TIMESTAMP], utc=True)
        frame = frame.assign(
            **{schema.EVENT_TIMESTAMP: stamps + (pd.Timestamp(clock.now()) - stamps.max())}
        )
    events = events_from_frame(frame)
    client = redis_client(redis)
    started = time.perf_counter()
    if rate:
        for i, event in enumerate(events):
            delay = started + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            append_events(client, [event], stream=stream, max_len=max_len)
    else:
        append_events(client, events, stream=stream, max_len=max_len)
    client.close()
    typer.echo(
        f"appended {len(events):,} events to {stream} in {time.perf_counter() - started:.1f}s"
    )


@app.command("skew-check")
def skew_check_command(
    repo: RepoOption = Path("feature_repo/fraud"),
    yaml: YamlOption = None,
    feature_service: Annotated[str, typer.Option(help="FeatureService to check.")] = (
        "fraud_model_v2"
    ),
    transactions: Annotated[
        Path, typer.Option(help="Transactions to sample entities from (parquet).")
    ] = Path("data/transactions.parquet"),
    entity: Annotated[
        list[str] | None,
        typer.Option(help="Check this entity instead of sampling, as join_key=value (repeatable)."),
    ] = None,
    sample: Annotated[int, typer.Option(min=1, help="Entities sampled per join key.")] = 200,
    recent_hours: Annotated[
        float, typer.Option(min=0.0, help="Sample among entities active this long before T.")
    ] = 24.0,
    at: Annotated[
        str | None, typer.Option(help="Time T (ISO-8601, naive means UTC; default: now).")
    ] = None,
    rel_tol: Annotated[float, typer.Option(min=0.0, help="Relative tolerance.")] = 1e-6,
    abs_tol: Annotated[float, typer.Option(min=0.0, help="Absolute tolerance.")] = 1e-9,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 7,
) -> None:
    """Compare online feature vectors with offline point-in-time vectors at T; exit 1 on skew."""
    from datetime import UTC, timedelta

    from feature_pipelines.skew import sample_entities, skew_check
    from feature_repo.layout import feature_layout

    moment = _parse_end(at)
    moment = clock.now() if moment is None else moment
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
    store = _open_store(repo, yaml)
    if entity:
        chosen: dict[str, list[str]] = {}
        for item in entity:
            key, sep, value = item.partition("=")
            if not sep or not value:
                raise typer.BadParameter(
                    f"expected join_key=value, got {item!r}", param_hint="--entity"
                )
            chosen.setdefault(key, []).append(value)
    else:
        if not transactions.is_file():
            raise typer.BadParameter(f"no such file: {transactions}", param_hint="--transactions")
        join_keys = sorted(
            {spec.join_key for spec in feature_layout(store, feature_service).views.values()}
        )
        chosen = sample_entities(
            pd.read_parquet(transactions),
            join_keys,
            sample,
            moment,
            recent=timedelta(hours=recent_hours),
            seed=seed,
        )
    report = skew_check(store, feature_service, chosen, at=moment, rel_tol=rel_tol, abs_tol=abs_tol)
    typer.echo(report.summary())
    if not report.ok:
        raise typer.Exit(code=1)
