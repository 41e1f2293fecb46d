"""Command line of the service: ``python -m scoring_service <command>``.

``serve`` runs the service; ``score-sample`` scores a recent negative and positive object through
a running one; ``batch-score`` scores a parquet of objects offline with the served package;
``stream-score`` scores a stream's events as a consumer-group member (decisions to a stream);
``online-learn`` teaches an online learner the labels matured since its last pass and writes its
next sealed snapshot (a deployment's challenger or shadow serves the newest one);
``hash-key`` prints an API key's sha256 (the form the key settings take); ``dev-key`` makes a
local development key.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="The scoring service.", no_args_is_help=True)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface (default SCORING_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default SCORING_PORT).")] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Worker processes (default SCORING_WORKERS).")
    ] = None,
) -> None:
    """Run the service with uvicorn (settings from SCORING_* variables).

    With several workers (SCORING_WORKERS or --workers), uvicorn starts that many processes on
    one socket, each building the app with ``scoring_service.api.app:create_app_from_env``; their
    Prometheus metrics are aggregated through PROMETHEUS_MULTIPROC_DIR (a temporary directory
    unless set; see scoring_service/core/process.py).
    """
    import uvicorn

    from scoring_service.core.logs import configure_logging, log_config
    from scoring_service.core.settings import Settings

    settings = Settings()
    count = workers or settings.workers
    if count == 1:
        # One process keeps its metrics in memory. A parent that imported Feast (whose metrics
        # module sets these) must not put it in multiprocess mode, with files on every update.
        for name in ("PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROCESS_DIR"):
            os.environ.pop(name, None)
    from scoring_service.core.process import prepare_metrics_dir, remove_metrics_dir

    configure_logging(settings.log_level)
    metrics_dir = prepare_metrics_dir(count)  # before anything imports the service's metrics
    # Imported only now: the protocol's admission imports the metrics, whose counters need
    # the multiprocess directory when there are several workers.
    from scoring_service.api.server import BoundedHttpToolsProtocol

    # Slow clients bounded: header and body time limits, a cap on open connections.
    BoundedHttpToolsProtocol.configure(settings)
    if count > 1:
        target: object = "scoring_service.api.app:create_app_from_env"
    else:
        from scoring_service.api.app import create_app

        target = create_app(settings)
    try:
        uvicorn.run(
            target,  # type: ignore[arg-type]
            factory=count > 1,
            workers=count,
            host=host or settings.host,
            port=port or settings.port,
            # Records are written by a thread, never on the event loop (core/logs.py).
            log_config=log_config(settings.log_level),
            access_log=False,
            loop="uvloop",
            http=BoundedHttpToolsProtocol,
            timeout_keep_alive=settings.keep_alive_s,  # type: ignore[arg-type]
            timeout_graceful_shutdown=10,
        )
    finally:
        remove_metrics_dir(metrics_dir)


@app.command("score-sample")
def score_sample(
    url: Annotated[str, typer.Option(help="Base URL of a running service.")] = (
        "http://127.0.0.1:8000"
    ),
    domain: Annotated[
        Path | None,
        typer.Option(
            help="Domain folder to sample (default: the first domain the settings serve)."
        ),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(help="Labelled data to sample from (default: the domain's training data)."),
    ] = None,
    wait: Annotated[float, typer.Option(help="Seconds to wait for readiness.")] = 60.0,
    api_key_file: Annotated[
        Path,
        typer.Option(help="File holding the API key (SCORING_API_KEY, when set, wins)."),
    ] = Path("data/dev_api_key"),
) -> None:
    """Wait for a running service, then score a recent negative and a recent positive object of
    a domain's labelled data (by the domain's label column) and print the answers.

    Bodies are the data's columns taken by the domain's request fields (domain.yaml), sent to
    POST /v1/<resource>/score.
    """
    import httpx
    import pandas as pd

    from feature_repo.domain import load_domain
    from scoring_service.api.domain_api import request_body
    from scoring_service.core.settings import Settings

    spec = load_domain(domain or Settings().domain_folders[0])
    key = os.environ.get("SCORING_API_KEY") or (
        api_key_file.read_text().strip() if api_key_file.is_file() else ""
    )
    if not key:
        raise SystemExit(
            f"no API key: set SCORING_API_KEY or create {api_key_file} (`make serve` does)"
        )
    path = f"/v1/{spec.resource}/score"
    label = spec.label_column
    frame = pd.read_parquet(data or spec.training_data_path).sort_values(spec.timestamp_field)
    # Rows a request can be made of: every required request field known.
    required = [n for n, f in spec.request_fields.items() if f.required and n in frame]
    frame = frame.dropna(subset=required)
    recent = frame.tail(max(len(frame) // 10, 1))
    picks = [("negative", recent[recent[label] == 0].tail(1))]
    picks.append(("positive", recent[recent[label] == 1].tail(1)))
    deadline = time.monotonic() + wait
    with httpx.Client(base_url=url, timeout=5.0, headers={"X-API-Key": key}) as client:
        while True:
            try:
                if client.get("/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise typer.Exit(f"service at {url} not ready after {wait:.0f} s")  # type: ignore[arg-type]
            time.sleep(0.5)
        for kind, rows in picks:
            if rows.empty:
                continue
            row = rows.iloc[0]
            body = request_body(spec, row.to_dict())
            answer = client.post(path, json=body)
            for _ in range(2):  # a well-behaved caller retries a 503 after its Retry-After
                if answer.status_code != 503 or "retry-after" not in answer.headers:
                    break
                time.sleep(min(float(answer.headers["retry-after"]), 1.0))
                answer = client.post(path, json=body)
            typer.echo(f"\n{spec.object_words} with {label}={row[label]} ({kind} ground truth):")
            typer.echo(f"POST {path} " + json.dumps(body))
            typer.echo(f"-> {answer.status_code} " + json.dumps(answer.json(), indent=2))
            if answer.status_code == 200:
                result = answer.json()
                typer.echo(f"label={result['label']} score={result['score']:.4f}")


@app.command("batch-score")
def batch_score_command(
    input_path: Annotated[
        Path,
        typer.Option(
            "--input", help="Objects to score (parquet of the domain's fields; any number of rows)."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Where to write <business id>, score, label.")],
    device: Annotated[
        str,
        typer.Option(help="auto (GPU graph when CUDA is usable), cpu or cuda (fail without it)."),
    ] = "auto",
    repo: Annotated[
        Path | None,
        typer.Option(
            help="Domain folder: its Feast repository and domain.yaml (default: the "
            "first domain the settings serve)."
        ),
    ] = None,
    yaml: Annotated[
        Path | None, typer.Option(help="Another feature_store.yaml (e.g. the Redis one).")
    ] = None,
    model_root: Annotated[Path, typer.Option(help="Root folder of model packages.")] = Path(
        "models/packages"
    ),
    name: Annotated[
        str | None, typer.Option(help="Model name (default: the domain's model_name).")
    ] = None,
    version: Annotated[str, typer.Option(help="Model version.")] = "v1",
    as_of: Annotated[
        datetime | None,
        typer.Option(help="Read every row's features as of this time (UTC); default: its own."),
    ] = None,
    chunk_rows: Annotated[
        int, typer.Option(min=1, help="Objects per feature read and model call.")
    ] = 100_000,
) -> None:
    """Score a parquet of a domain's objects offline with the served model package and label
    policy."""
    from scoring_service.batch_scoring import batch_score
    from scoring_service.core.settings import Settings

    if device not in ("auto", "cpu", "cuda"):
        raise typer.BadParameter("must be auto, cpu or cuda", param_hint="--device")
    if as_of is not None and as_of.tzinfo is None:
        as_of = as_of.replace(tzinfo=UTC)
    result = batch_score(
        input_path,
        out,
        repo_path=repo or Settings().domain_folders[0],
        yaml_path=yaml,
        model_root=model_root,
        model_name=name,
        model_version=version,
        device=device,
        chunk_rows=chunk_rows,
        as_of=as_of,
        progress=lambda step: typer.echo(step.line(), err=True),
    )
    typer.echo(result.summary())


@app.command("stream-score")
def stream_score_command(
    stream: Annotated[str, typer.Option(help="Input stream of events.")],
    decisions: Annotated[str, typer.Option(help="Output stream the decisions are appended to.")],
    redis: Annotated[
        str, typer.Option(help="Redis of the streams (URL or host:port).", envvar="STREAM_REDIS")
    ] = "127.0.0.1:6379",
    group: Annotated[str, typer.Option(help="Consumer group.")] = "stream-scoring",
    consumer: Annotated[
        str,
        typer.Option(
            help="Member name; a restart under the same name resumes its pending entries.",
            envvar="STREAM_CONSUMER",
        ),
    ] = "scorer-1",
    batch_size: Annotated[int, typer.Option(min=1, help="Most entries per batch.")] = 256,
    max_in_flight: Annotated[
        int, typer.Option(min=1, help="Most entries read and not yet acknowledged.")
    ] = 2_048,
    block_ms: Annotated[int, typer.Option(min=1, help="Longest wait for new entries (ms).")] = 100,
    claim_idle_seconds: Annotated[
        float, typer.Option(min=0.0, help="Take over other members' entries idle this long.")
    ] = 30.0,
    dedup_days: Annotated[
        float, typer.Option(min=0.001, help="How long a decided business id is remembered.")
    ] = 7.0,
    windows: Annotated[
        str | None,
        typer.Option(
            help="Window catalogue (module:attribute) whose state absorbs each event, e.g. "
            "feature_pipelines.<domain>.windows:CATALOGUE (default: none)."
        ),
    ] = None,
    state_prefix: Annotated[
        str,
        typer.Option(
            help="Key prefix of the window state (default: the catalogue module's STATE_PREFIX)."
        ),
    ] = "",
    metrics_port: Annotated[
        int, typer.Option(min=0, help="Port of the Prometheus metrics (0: none).")
    ] = 0,
    max_events: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many entries (default: never).")
    ] = None,
    idle_exit_seconds: Annotated[
        float | None, typer.Option(min=0.0, help="Stop after the stream is idle this long.")
    ] = None,
) -> None:
    """Score a stream's events as one consumer-group member; decisions to an output stream.

    The domain, model and deployment come from the SCORING_* settings, as for ``serve``. Each
    decision is written once per business id; SIGTERM stops after the batch in hand.
    """
    import asyncio

    from scoring_service.core.logs import configure_logging
    from scoring_service.core.settings import Settings
    from scoring_service.stream_scoring.process import serve_stream
    from scoring_service.stream_scoring.runner import StreamOptions

    settings = Settings()
    configure_logging(settings.log_level)
    try:
        options = StreamOptions(
            stream=stream,
            decisions=decisions,
            group=group,
            consumer=consumer,
            batch_size=batch_size,
            block_ms=block_ms,
            max_in_flight=max_in_flight,
            claim_idle_ms=int(claim_idle_seconds * 1000),
            dedup_ttl_seconds=max(1, int(dedup_days * 86_400)),
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--max-in-flight") from exc
    stats = asyncio.run(
        serve_stream(
            settings,
            options,
            connection=redis,
            windows=windows,
            state_prefix=state_prefix,
            metrics_port=metrics_port,
            max_events=max_events,
            idle_exit_seconds=idle_exit_seconds,
        )
    )
    typer.echo(f"stopped: {stats.summary()}")


@app.command("online-learn")
def online_learn_command(
    name: Annotated[str, typer.Option(help="The learner (snapshots under the model root).")],
    labels: Annotated[
        Path,
        typer.Option(help="Labels parquet: business id, label (1 positive), label_available_at."),
    ],
    log: Annotated[
        Path,
        typer.Option(help="The domain's prediction log folder (date=YYYY-MM-DD parquet)."),
    ],
    base: Annotated[
        str | None,
        typer.Option(
            help="Base package name/version whose logged vectors it learns (needed to start a "
            "learner; checked against the snapshot after)."
        ),
    ] = None,
    model_root: Annotated[
        Path | None, typer.Option(help="Root of the model packages (default SCORING_MODEL_ROOT).")
    ] = None,
    id_column: Annotated[str, typer.Option(help="Labels column of the business id.")] = "",
    label_column: Annotated[str, typer.Option(help="Labels column, 1 positive, 0 not.")] = "",
    available_column: Annotated[
        str, typer.Option(help="Labels column: when the label became known (UTC).")
    ] = "label_available_at",
    snapshot_every: Annotated[
        int, typer.Option(min=1, help="Write a snapshot each time this many labels are learned.")
    ] = 1_000,
    every: Annotated[
        float | None,
        typer.Option(min=1.0, help="Repeat the pass every this many seconds (default: once)."),
    ] = None,
) -> None:
    """Teach an online learner the labels matured by now whose answers are in the prediction log.

    Only matured labels are learned (``label_available_at`` at or before the platform clock),
    each business id once, on the vector serving logged with its answer. A sealed snapshot is
    written after each pass that learned anything (and every ``--snapshot-every`` labels);
    a service serving the learner picks the newest one up within seconds.
    """
    import pandas as pd

    from feature_repo.domain import load_domain
    from models.package import package_dir, read_manifest
    from scoring_service.core.settings import Settings
    from scoring_service.deployments.online import (
        LabelEvent,
        OnlineLearnerError,
        learn_from_labels,
        log_answers,
    )
    from scoring_service.served import signing_key

    settings = Settings()
    root = model_root or settings.model_root
    key = signing_key(settings)
    domain = load_domain(settings.domain_folders[0])
    id_column = id_column or domain.business_id
    label_column = label_column or domain.label_column
    feature_names = None
    if base is not None:
        try:
            feature_names = read_manifest(package_dir(root, *base.split("/", 1))).features
        except (OSError, ValueError, TypeError) as exc:
            raise typer.BadParameter(
                f"{base} is not a readable model package under {root}: {exc}", param_hint="--base"
            ) from exc
    answers = log_answers(log, feature_names=feature_names)
    while True:
        try:
            frame = pd.read_parquet(labels, columns=[id_column, label_column, available_column])
        except (OSError, ValueError, KeyError) as exc:
            raise typer.BadParameter(f"{labels}: {exc}", param_hint="--labels") from exc
        events = [
            LabelEvent(str(b), int(y), t.to_pydatetime())
            for b, y, t in zip(
                frame[id_column],
                frame[label_column],
                pd.to_datetime(frame[available_column], utc=True),
                strict=True,
            )
        ]
        try:
            result = learn_from_labels(
                root,
                name,
                events,
                answers,
                base_package=base,
                feature_names=feature_names,
                snapshot_every=snapshot_every,
                signing_key=key,
            )
        except OnlineLearnerError as exc:
            typer.echo(f"online-learn: {exc}", err=True)
            raise typer.Exit(code=2) from exc
        typer.echo(
            f"{name}: {result.learned} labels learned this pass ({result.labels_learned} in all, "
            f"{result.pending} waiting to mature or for their answer); snapshot "
            f"{result.snapshot or 'unchanged'}"
        )
        if every is None:
            return
        time.sleep(every)


@app.command("hash-key")
def hash_key_command() -> None:
    """Read an API key on standard input, print its sha256 hex digest: the form
    SCORING_API_KEY_HASHES and SCORING_ADMIN_KEY_HASHES take (the key never enters argv)."""
    from scoring_service.core.security import hash_key

    key = sys.stdin.readline().strip()
    if not key:
        raise SystemExit("no key on standard input")
    typer.echo(hash_key(key))


@app.command("dev-key")
def dev_key(
    file: Annotated[Path, typer.Option(help="Key file; created (mode 0600) when missing.")] = Path(
        "data/dev_api_key"
    ),
) -> None:
    """Make a local development key file once and print its sha256 hex digest, so that
    `make serve` works out of the box without ever running the service open."""
    from scoring_service.core.security import hash_key, new_key

    if not file.is_file():
        file.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(new_key() + "\n")
    typer.echo(hash_key(file.read_text().strip()))
