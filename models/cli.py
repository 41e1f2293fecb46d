"""Command line of the model lifecycle: ``python -m models dataset|train``."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Training sets, training and model packages.", no_args_is_help=True)

RepoOption = Annotated[Path, typer.Option(help="Feast feature repository.")]
YamlOption = Annotated[
    Path | None,
    typer.Option(help="Alternative feature_store.yaml (e.g. feature_store.redis.yaml)."),
]
ServiceOption = Annotated[str, typer.Option(help="FeatureService that defines the features.")]
TransactionsOption = Annotated[Path, typer.Option(help="Labelled transactions (parquet).")]


@app.callback()
def _configure(
    log_level: Annotated[str, typer.Option(help="Logging level.")] = "INFO",
) -> None:
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    # Feast logs every registry refresh at INFO; keep its warnings only.
    logging.getLogger("feast").setLevel(
        max(logging.WARNING, logging.getLevelName(log_level.upper()))
    )


@app.command()
def dataset(
    repo: RepoOption = Path("feature_repo"),
    transactions: TransactionsOption = Path("data/transactions.parquet"),
    feature_service: ServiceOption = "fraud_model_v1",
    start: Annotated[
        datetime | None, typer.Option(help="First transaction time (inclusive, UTC).")
    ] = None,
    end: Annotated[datetime | None, typer.Option(help="Last transaction time (exclusive).")] = None,
    out: Annotated[Path, typer.Option(help="Where to write the training set.")] = Path(
        "data/training_set.parquet"
    ),
    yaml: YamlOption = None,
) -> None:
    """Retrieve a point-in-time correct training set through a FeatureService."""
    from models.dataset import (
        entity_dataframe,
        load_transactions,
        open_store,
        retrieve_training_set,
    )

    store = open_store(repo, yaml)
    entity_df = entity_dataframe(
        load_transactions(transactions),
        start=_utc(start),
        end=_utc(end),
    )
    frame = retrieve_training_set(store, feature_service, entity_df)
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(out, index=False)
    typer.echo(
        f"wrote {len(frame)} rows x {frame.shape[1]} columns to {out} "
        f"(fraud rate {frame['is_fraud'].mean():.4f})"
    )


@app.command()
def train(
    repo: RepoOption = Path("feature_repo"),
    transactions: TransactionsOption = Path("data/transactions.parquet"),
    feature_service: ServiceOption = "fraud_model_v1",
    output: Annotated[Path, typer.Option(help="Root folder of model packages.")] = Path(
        "models/packages"
    ),
    name: Annotated[str, typer.Option(help="Model name.")] = "fraud_model",
    version: Annotated[
        str | None, typer.Option(help="Model version (default: the service's suffix).")
    ] = None,
    rounds: Annotated[int, typer.Option(help="Maximum boosting rounds.")] = 400,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 7,
    yaml: YamlOption = None,
) -> None:
    """Train LightGBM on the point-in-time training set and publish an ONNX model package."""
    from models.train import train as run_training

    result = run_training(
        repo_path=repo,
        transactions_path=transactions,
        output_root=output,
        feature_service=feature_service,
        model_name=name,
        model_version=version,
        yaml_path=yaml,
        num_boost_round=rounds,
        seed=seed,
    )
    typer.echo(result.summary())


def _utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    from datetime import UTC

    return value.replace(tzinfo=UTC)
