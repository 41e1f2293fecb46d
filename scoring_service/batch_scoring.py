"""Offline batch scoring: business objects -> point-in-time features -> the served model -> labels.

    python -m scoring_service batch-score --input X.parquet --out scores.parquet --repo <domain>

The domain comes from the repository's ``domain.yaml``: the input holds its request fields
(entity keys, request features, the fields on-demand views read), its business id and its event
time column; the output is ``<business id>, score, label``. The same model package the service
serves (verified against the live FeatureService, as the service does), the same features
(``get_historical_features`` through the package's FeatureService, point in time: each object's
own time, or one ``as_of`` time for all), the
same predictor (the standard-operator graph on the GPU when one is usable, else the CPU
TreeEnsemble graph) and the same label policy (``scoring_service.stages.labels.LabelPolicy``). An
entity's status comes from the same rule as online (``feature_repo.online``): a view's row is
there when the offline store has a snapshot within the view's TTL, as the online store's row is
for the service. The input is read and scored in chunks, so
millions of rows fit in memory; the output keeps the input's order.

Scored online at time T and offline with ``as_of=T``, an object gets the same features
(for entities whose latest snapshot is materialized), hence the same score and label; the GPU
graph agrees with the CPU graph within the 1e-5 parity tolerance, not bit for bit.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from feast import FeatureService, FeatureStore

from feature_repo.domain import DomainSpec
from feature_repo.layout import feature_layout, open_store
from feature_repo.online import Row, assemble
from models.package import package_dir
from scoring_service.core.errors import ModelPackageInvalid
from scoring_service.deployments.packages import LoadedModel, domain_of, load_package
from scoring_service.stages.predictor import DEFAULT_GPU_MIN_BATCH

logger = logging.getLogger(__name__)

TIME_COLUMN = "event_timestamp"  # Feast's entity-dataframe time column
_ROW = "__batch_row"


def output_schema(id_column: str) -> pa.Schema:
    """``<business id>, score, label``."""
    return pa.schema(
        [
            pa.field(id_column, pa.string()),
            pa.field("score", pa.float64()),
            pa.field("label", pa.string()),
        ]
    )


@dataclass(frozen=True)
class ChunkProgress:
    """Where a run stands after a chunk."""

    rows_done: int
    rows_total: int
    seconds: float

    @property
    def rows_per_s(self) -> float:
        """Average throughput so far, features included."""
        return self.rows_done / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        """One human-readable progress line."""
        share = self.rows_done / self.rows_total if self.rows_total else 1.0
        left = (self.rows_total - self.rows_done) / self.rows_per_s if self.rows_per_s else 0.0
        return (
            f"scored {self.rows_done:,}/{self.rows_total:,} rows ({share:.0%}) in "
            f"{self.seconds:.1f} s, {self.rows_per_s:,.0f} rows/s, about {left:.0f} s left"
        )


@dataclass
class BatchScoreResult:
    """What a run wrote."""

    out_path: Path
    rows: int
    seconds: float
    model_version: str
    device: str
    graph: str
    labels: Counter[str] = field(default_factory=Counter)

    def summary(self) -> str:
        """Human-readable summary."""
        counts = ", ".join(f"{label} {n:,}" for label, n in sorted(self.labels.items()))
        rate = self.rows / self.seconds if self.seconds > 0 else 0.0
        return (
            f"wrote {self.rows:,} scores to {self.out_path} in {self.seconds:.1f} s "
            f"({rate:,.0f} rows/s) with model {self.model_version} on {self.device} "
            f"(graphs {self.graph})\nlabels: {counts or 'none'}"
        )


def batch_score(
    input_path: Path,
    out_path: Path,
    *,
    repo_path: Path,
    yaml_path: Path | None = None,
    model_root: Path = Path("models/packages"),
    model_name: str | None = None,
    model_version: str = "v1",
    device: str = "auto",
    chunk_rows: int = 100_000,
    as_of: datetime | None = None,
    gpu_min_batch: int = DEFAULT_GPU_MIN_BATCH,
    intra_op_threads: int = 1,
    progress: Callable[[ChunkProgress], None] | None = None,
) -> BatchScoreResult:
    """Score every object of a parquet file and write ``<business id>, score, label``.

    The repository's domain names the business id and the event time column, and its model
    (``model_name`` default). ``as_of`` (timezone-aware, or naive UTC) reads features as of that
    time for every row; otherwise each object's event time. Raises ModelPackageInvalid like the
    service (wrong package, ``device="cuda"`` without usable CUDA, no domain file), ValueError
    for missing columns.
    """
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be at least 1")
    started = time.perf_counter()
    store = open_store(repo_path, yaml_path)
    domain = domain_of(store)
    if domain is None:
        raise ModelPackageInvalid(
            f"{repo_path} has no domain.yaml: batch scoring reads the business id from it"
        )
    id_column, time_column = domain.business_id, domain.timestamp_field
    model = load_package(
        package_dir(model_root, model_name or domain.model_name, model_version),
        store,
        device=device,
        intra_op_threads=intra_op_threads,
        gpu_min_batch=gpu_min_batch,
    )
    manifest = model.manifest
    service = store.get_feature_service(manifest.feature_service)
    # Request fields on-demand views read (their inputs travel in the entity dataframe).
    odfv_fields: list[str] = list(
        getattr(feature_layout(store, manifest.feature_service), "request_fields", [])
    )
    fields = list(
        dict.fromkeys([*manifest.entity_mapping, *manifest.request_features, *odfv_fields])
    )
    source = pq.ParquetFile(input_path)
    columns = [id_column, *fields] + ([] if as_of is not None else [time_column])
    missing = [c for c in columns if c not in source.schema_arrow.names]
    if missing:
        raise ValueError(f"{input_path} lacks column(s) {missing} that scoring needs")
    as_of_ts = None if as_of is None else _utc(pd.Timestamp(as_of))
    total = source.metadata.num_rows
    logger.info(
        "batch scoring %d %ss from %s with %s on %s (graphs %s), features %s",
        total,
        domain.object_words,
        input_path,
        model.version_label,
        model.device,
        model.graph,
        f"as of {as_of_ts}" if as_of_ts is not None else "at each object's time",
    )

    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(f".{out_path.name}.partial")
    metadata = {
        b"model_version": model.version_label.encode(),
        b"device": model.device.encode(),
        b"features_as_of": str(as_of_ts or "event time").encode(),
    }
    schema = output_schema(id_column)
    result = BatchScoreResult(out_path, 0, 0.0, model.version_label, model.device, model.graph)
    try:
        with pq.ParquetWriter(partial, schema.with_metadata(metadata)) as writer:
            for batch in source.iter_batches(batch_size=chunk_rows, columns=columns):
                chunk = batch.to_pandas()
                scored = _score_chunk(model, store, service, chunk, as_of_ts, domain)
                writer.write_table(pa.Table.from_pandas(scored, schema, preserve_index=False))
                result.rows += len(scored)
                result.labels.update(scored["label"])
                step = ChunkProgress(result.rows, total, time.perf_counter() - started)
                if progress is not None:
                    progress(step)
                else:
                    logger.info("%s", step.line())
        partial.replace(out_path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    result.seconds = time.perf_counter() - started
    return result


def _utc(ts: pd.Timestamp) -> pd.Timestamp:
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _score_chunk(
    model: LoadedModel,
    store: FeatureStore,
    service: FeatureService,
    chunk: pd.DataFrame,
    as_of: pd.Timestamp | None,
    domain: DomainSpec,
) -> pd.DataFrame:
    """Features, scores and labels for one chunk of objects, in input order."""
    manifest = model.manifest
    n = len(chunk)
    id_column = domain.business_id
    entity_df = chunk.drop(columns=[id_column]).rename(
        columns={f: k for f, k in manifest.entity_mapping.items() if f != k}
    )
    times = (
        pd.Series([as_of] * n, dtype="datetime64[ns, UTC]")
        if as_of is not None
        else pd.to_datetime(chunk[domain.timestamp_field], utc=True)
    )
    if domain.timestamp_field in entity_df and domain.timestamp_field != TIME_COLUMN:
        entity_df = entity_df.drop(columns=[domain.timestamp_field])
    entity_df[TIME_COLUMN] = times
    entity_df[_ROW] = np.arange(n, dtype=np.int64)
    frame = (
        store.get_historical_features(entity_df=entity_df, features=service)
        .to_df()
        .sort_values(_ROW)
        .reset_index(drop=True)
    )
    if len(frame) != n or not np.array_equal(frame[_ROW].to_numpy(), np.arange(n)):
        raise RuntimeError("the offline store returned a different set of rows than it was given")
    matrix = np.empty((n, len(manifest.features)), dtype=np.float32)
    for j, name in enumerate(manifest.features):
        matrix[:, j] = pd.to_numeric(frame[name], errors="coerce").to_numpy(
            dtype=np.float32, na_value=np.nan
        )
    # A view's row is there when the join found a snapshot within the TTL (all-NaN: none), as
    # online a row is there when the store has it within the TTL; the status rule is shared.
    reads: dict[str, tuple[list[int], list[Row]]] = {}
    everyone = list(range(n))
    for view in model.layout.views:
        block = matrix[:, view.offset : view.offset + len(view.features)]
        found: list[bool] = np.asarray(~np.isnan(block).all(axis=1)).tolist()
        rows = block.tolist()
        reads[view.name] = (
            everyone,
            [(0.0, row) if hit else (np.nan, ()) for hit, row in zip(found, rows, strict=True)],
        )
    statuses = assemble(model.layout, n, reads, now=0.0).status
    scores = model.predictor.predict(np.ascontiguousarray(matrix))
    policy = model.policy
    labels = [
        policy.decide(float(score), matrix[i], {k: int(s[i]) for k, s in statuses.items()})[0]
        for i, score in enumerate(scores)
    ]
    return pd.DataFrame(
        {id_column: chunk[id_column].astype(str).to_numpy(), "score": scores, "label": labels}
    )
