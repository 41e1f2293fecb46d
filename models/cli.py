"""Command line of the model lifecycle: ``python -m models dataset|train|report|monitor``."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from feature_repo import clock

app = typer.Typer(help="Training sets, training and model packages.", no_args_is_help=True)

DomainOption = Annotated[
    Path | None,
    typer.Option(
        help="Domain folder: its domain.yaml (what is scored, label, threshold rule) and its "
        "Feast repository, feature_repo/<domain> (default: the --repo folder)."
    ),
]
RepoOption = Annotated[
    Path | None, typer.Option(help="Feast feature repository (default: the domain folder).")
]
YamlOption = Annotated[
    Path | None,
    typer.Option(help="Alternative feature_store.yaml (e.g. feature_store.redis.yaml)."),
]
ServiceOption = Annotated[
    str | None,
    typer.Option(help="FeatureService that defines the features (default: the domain's)."),
]
EventsOption = Annotated[
    Path | None,
    typer.Option(help="Labelled events, parquet (default: the domain's training_data)."),
]


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


def _domain(domain: Path | None, repo: Path | None):  # type: ignore[no-untyped-def]
    """(domain spec, Feast repository): each defaults to the other's folder."""
    from feature_repo.domain import DomainSpecError, load_domain

    folder = domain or repo
    if folder is None:
        raise typer.BadParameter(
            "name the domain's folder: --domain feature_repo/<domain>", param_hint="--domain"
        )
    try:
        return load_domain(folder), repo or folder
    except DomainSpecError as exc:
        raise typer.BadParameter(str(exc), param_hint="--domain") from None


@app.command()
def dataset(
    domain: DomainOption = None,
    repo: RepoOption = None,
    events: EventsOption = None,
    feature_service: ServiceOption = None,
    start: Annotated[
        datetime | None, typer.Option(help="First event time (inclusive, UTC).")
    ] = None,
    end: Annotated[datetime | None, typer.Option(help="Last event time (exclusive).")] = None,
    out: Annotated[Path, typer.Option(help="Where to write the training set.")] = Path(
        "data/training_set.parquet"
    ),
    yaml: YamlOption = None,
) -> None:
    """Retrieve a point-in-time correct training set through a FeatureService."""
    from models.dataset import (
        entity_dataframe,
        feature_layout,
        load_events,
        open_store,
        retrieve_training_set,
    )

    spec, repo = _domain(domain, repo)
    service = feature_service or spec.feature_service
    store = open_store(repo, yaml)
    entity_df = entity_dataframe(
        load_events(events or spec.training_data_path, spec),
        spec,
        start=_utc(start),
        end=_utc(end),
        request_fields=feature_layout(store, service).request_fields,
    )
    frame = retrieve_training_set(store, service, entity_df, spec)
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(out, index=False)
    typer.echo(
        f"wrote {len(frame)} rows x {frame.shape[1]} columns to {out} "
        f"({spec.label_column} rate {frame[spec.label_column].mean():.4f})"
    )


@app.command()
def train(
    domain: DomainOption = None,
    repo: RepoOption = None,
    events: EventsOption = None,
    feature_service: Annotated[
        list[str] | None,
        typer.Option(
            help="FeatureService that defines the features (default: the domain's); repeat it "
            "to train several versions on the same time split and print their holdout metrics "
            "side by side.",
        ),
    ] = None,
    output: Annotated[Path, typer.Option(help="Root folder of model packages.")] = Path(
        "models/packages"
    ),
    name: Annotated[
        str | None, typer.Option(help="Model name (default: the domain's model_name).")
    ] = None,
    version: Annotated[
        str | None, typer.Option(help="Model version (default: the service's suffix).")
    ] = None,
    rounds: Annotated[int, typer.Option(help="Maximum boosting rounds.")] = 400,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 7,
    yaml: YamlOption = None,
    family_by: Annotated[
        str | None,
        typer.Option(
            help="Train a model family: the global model as its default member, and one "
            "member per value of this request field (e.g. card_country), or of this stored "
            "feature of the FeatureService (an entity's code or count), with enough rows, "
            "published only where it beats the global model on the segment's holdout.",
        ),
    ] = None,
    min_rows: Annotated[
        int, typer.Option(help="Family: training rows a segment needs for a member.")
    ] = 100,
    member_rounds: Annotated[
        int, typer.Option(help="Family: most trees a member adds to the global model's.")
    ] = 60,
) -> None:
    """Train LightGBM on the point-in-time training set and publish an ONNX model package.

    Prints the holdout ROC-AUC and PR-AUC of the model, of a decision tree on the same inputs
    and split, and of the domain's rules baseline; the package's manifest records them. With
    --family-by, trains a model family in one run and prints every segment's figures.
    """
    from models.train import compare_summary
    from models.train import train as run_training

    spec, repo = _domain(domain, repo)
    services = feature_service or [spec.feature_service]
    if family_by is not None:
        from models.family import train_family

        if len(services) > 1:
            raise typer.BadParameter(
                "a family is trained from one FeatureService", param_hint="--feature-service"
            )
        from models.dataset import open_store
        from models.family import segment_kind

        try:
            segment_kind(spec, open_store(repo, yaml), services[0], family_by)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--family-by") from exc
        family = train_family(
            repo_path=repo,
            events_path=events,
            output_root=output,
            segment_field=family_by,
            feature_service=services[0],
            model_name=name,
            version=version,
            yaml_path=yaml,
            num_boost_round=rounds,
            member_rounds=member_rounds,
            min_rows=min_rows,
            seed=seed,
            domain=spec,
        )
        typer.echo(family.default.summary())
        typer.echo("")
        typer.echo(family.summary())
        return
    if version is not None and len(services) > 1:
        raise typer.BadParameter(
            "--version names one package; leave it out when training several services",
            param_hint="--version",
        )
    results = []
    for service in services:
        result = run_training(
            repo_path=repo,
            events_path=events,
            output_root=output,
            feature_service=service,
            model_name=name,
            model_version=version,
            yaml_path=yaml,
            num_boost_round=rounds,
            seed=seed,
            domain=spec,
        )
        typer.echo(result.summary())
        typer.echo("")
        results.append(result)
    if len(results) > 1:
        typer.echo(compare_summary(results))


@app.command()
def report(
    package: Annotated[Path, typer.Option(help="Package folder <root>/<name>/<version>.")],
    training_set: Annotated[
        Path | None,
        typer.Option(help="Training set of the package's feature service (`models dataset`)."),
    ] = None,
    repo: Annotated[
        Path | None,
        typer.Option(
            help="Feast repository to retrieve the training set (and the previous "
            "version's inputs) from, when no --training-set is given."
        ),
    ] = None,
    events: Annotated[
        Path | None,
        typer.Option(help="Labelled events (default: the ones the package was trained on)."),
    ] = None,
    domain: Annotated[
        Path | None,
        typer.Option(help="Domain folder (default: the one the package was trained with)."),
    ] = None,
    yaml: YamlOption = None,
) -> None:
    """Regenerate a package's report.html from the package and its training set."""
    from models.reports.publish import regenerate
    from models.reports.training import REPORT_FILE

    try:
        path = regenerate(
            package,
            training_set=training_set,
            repo=repo,
            yaml=yaml,
            events=events,
            domain=domain,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    typer.echo(f"wrote {path / REPORT_FILE}")


@app.command()
def monitor(
    log: Annotated[Path, typer.Option(help="Prediction log folder (date=YYYY-MM-DD parquet).")],
    labels: Annotated[
        Path, typer.Option(help="Labels parquet: business id, label, label_available_at.")
    ],
    out: Annotated[Path, typer.Option(help="Folder for monitor.json and monitor.html.")] = Path(
        "data/monitor"
    ),
    as_of: Annotated[
        datetime | None,
        typer.Option(help="Use the labels known at this time (UTC; default now)."),
    ] = None,
    model_root: Annotated[
        Path, typer.Option(help="Root of the model packages (holdout figures, baselines).")
    ] = Path("models/packages"),
    alerts: Annotated[
        Path | None, typer.Option(help="YAML of alert rules (keys of models.monitor.AlertRules).")
    ] = None,
    max_precision_drop: Annotated[
        float | None,
        typer.Option(
            help="Alert when a label's precision falls this far below its holdout precision."
        ),
    ] = None,
    max_score_psi: Annotated[float | None, typer.Option(help="Alert above this score PSI.")] = None,
    max_feature_psi: Annotated[
        float | None, typer.Option(help="Alert above this PSI of any input.")
    ] = None,
    id_column: Annotated[
        str | None,
        typer.Option(help="Labels column holding the business id (default: the domain's)."),
    ] = None,
    label_column: Annotated[
        str | None,
        typer.Option(help="Labels column, 1 positive, 0 not (default: the domain's)."),
    ] = None,
) -> None:
    """Performance on matured labels and drift per model version, variant and day.

    Exits 1 when a declared alert fires (after writing the reports), so a scheduler can page.
    """
    import pandas as pd

    from models.monitor import AlertRules
    from models.monitor import monitor as run_monitor
    from models.reports.monitoring import write

    rules = AlertRules.from_yaml(alerts) if alerts is not None else AlertRules()
    overrides = {
        "max_precision_drop": max_precision_drop,
        "max_score_psi": max_score_psi,
        "max_feature_psi": max_feature_psi,
    }
    rules = rules.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    result = run_monitor(
        log,
        pd.read_parquet(labels),
        _utc(as_of) or clock.now(),
        model_root=model_root,
        rules=rules,
        id_column=id_column,
        label_column=label_column,
    )
    json_path, html_path = write(result, rules, out)
    typer.echo(f"wrote {json_path} and {html_path} ({len(result.groups)} groups)")
    for note in result.notes:
        typer.echo(f"note: {note}")
    for alert in result.alerts:
        typer.echo(f"ALERT {alert.message}", err=True)
    if result.alerts:
        raise typer.Exit(code=1)


def _utc(value: datetime | None) -> datetime | None:
    """Naive times are UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)
