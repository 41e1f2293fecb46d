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
        feature_layout,
        load_transactions,
        open_store,
        retrieve_training_set,
    )

    store = open_store(repo, yaml)
    entity_df = entity_dataframe(
        load_transactions(transactions),
        start=_utc(start),
        end=_utc(end),
        request_fields=feature_layout(store, feature_service).request_fields,
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
    feature_service: Annotated[
        list[str] | None,
        typer.Option(
            help="FeatureService that defines the features; repeat it to train several "
            "versions on the same time split and print their holdout metrics side by side.",
        ),
    ] = None,
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
    from models.train import compare_summary
    from models.train import train as run_training

    services = feature_service or ["fraud_model_v1"]
    if version is not None and len(services) > 1:
        raise typer.BadParameter(
            "--version names one package; leave it out when training several services",
            param_hint="--version",
        )
    results = []
    for service in services:
        result = run_training(
            repo_path=repo,
            transactions_path=transactions,
            output_root=output,
            feature_service=service,
            model_name=name,
            model_version=version,
            yaml_path=yaml,
            num_boost_round=rounds,
            seed=seed,
        )
        typer.echo(result.summary())
        typer.echo("")
        results.append(result)
    if len(results) > 1:
        typer.echo(compare_summary(results))


@app.command("batch-score")
def batch_score(
    transactions: Annotated[
        Path, typer.Option(help="Transactions to score (parquet; any number of rows).")
    ],
    out: Annotated[Path, typer.Option(help="Where to write transaction_id, score, label.")],
    device: Annotated[
        str,
        typer.Option(help="auto (GPU graph when CUDA is usable), cpu or cuda (fail without it)."),
    ] = "auto",
    repo: RepoOption = Path("feature_repo"),
    yaml: YamlOption = None,
    model_root: Annotated[Path, typer.Option(help="Root folder of model packages.")] = Path(
        "models/packages"
    ),
    name: Annotated[str, typer.Option(help="Model name.")] = "fraud_model",
    version: Annotated[str, typer.Option(help="Model version.")] = "v1",
    as_of: Annotated[
        datetime | None,
        typer.Option(help="Read every row's features as of this time (UTC); default: its own."),
    ] = None,
    chunk_rows: Annotated[
        int, typer.Option(min=1, help="Transactions per feature read and model call.")
    ] = 100_000,
) -> None:
    """Score a parquet of transactions offline with the served model package and label policy."""
    from models.batch_score import batch_score as run_batch_score

    if device not in ("auto", "cpu", "cuda"):
        raise typer.BadParameter("must be auto, cpu or cuda", param_hint="--device")
    result = run_batch_score(
        transactions,
        out,
        repo_path=repo,
        yaml_path=yaml,
        model_root=model_root,
        model_name=name,
        model_version=version,
        device=device,
        chunk_rows=chunk_rows,
        as_of=_utc(as_of),
        progress=lambda step: typer.echo(step.line(), err=True),
    )
    typer.echo(result.summary())


def _utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    from datetime import UTC

    return value.replace(tzinfo=UTC)
