"""Command line of the feature pipelines: ``python -m feature_pipelines --help``.

Each pipeline step is one command of the ``app`` Typer application; a new step is a new
function decorated with ``@app.command(...)``.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer

from feature_pipelines import schema
from feature_pipelines.aggregate import aggregate
from feature_pipelines.generate import generate_transactions, write_transactions
from feature_pipelines.tables import write_feature_tables

app = typer.Typer(
    name="fraud-pipelines",
    help="Feature pipelines: synthetic transactions and batch features for the feature store.",
    no_args_is_help=True,
    add_completion=False,
)

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
) -> None:
    """Generate synthetic payment transactions with labelled fraud patterns."""
    started = time.perf_counter()
    frame = generate_transactions(rows, seed=seed, days=days, end=_parse_end(end))
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
        "feature_repo/data"
    ),
    end: EndOption = None,
) -> None:
    """Compute hourly ip, card and merchant feature snapshots for the offline store."""
    if not transactions.is_file():
        raise typer.BadParameter(f"no such file: {transactions}", param_hint="--transactions")
    started = time.perf_counter()
    frame = pd.read_parquet(transactions)
    features = aggregate(frame, end=_parse_end(end))
    for path in write_feature_tables(features, out_dir):
        typer.echo(f"wrote {path}")
    counts = ", ".join(f"{len(table):,} {entity}" for entity, table in features.items())
    typer.echo(f"snapshots: {counts}")
    typer.echo(f"aggregated {len(frame):,} transactions in {time.perf_counter() - started:.1f}s")


@app.command("materialize")
def materialize_command(
    repo: Annotated[Path, typer.Option(help="Feast feature repository.")] = Path("feature_repo"),
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
) -> None:
    """Load feature snapshots into the online store (incremental by default, up to now)."""
    from feature_pipelines.materialize import materialize

    started = time.perf_counter()
    until = materialize(
        repo, end=_parse_end(end), start=_parse_end(start), yaml_path=yaml, views=view or None
    )
    typer.echo(f"materialized up to {until.isoformat()} in {time.perf_counter() - started:.1f}s")
