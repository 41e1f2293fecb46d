"""The benchmark's world: generated transactions, features in Redis, a model, request bodies.

1. ``generate`` + ``aggregate`` (the project's own pipelines) produce transactions ending now and
   their hourly feature snapshots, in a copy of the feature repository under the work folder.
2. ``feast apply`` with the Redis yaml registers the repository against the benchmark's Redis.
3. A model package is trained through the real pipeline, once: it is kept in the work folder
   and reused while the generator arguments and the repository's definitions are unchanged.
4. The online store is filled through Feast's own ``online_write_batch``, so the layout is
   exactly Feast's: each entity's latest snapshot (what materialization leaves in the store;
   entities whose snapshot is older than the view's TTL read as stale, as in production). The
   generated world has fewer entities than a production store, so each view is topped up to
   ``entities`` keys with copies of real snapshots under new ids.
5. Request bodies: flagship transactions whose three entities are drawn from the loaded keys,
   with amounts, currencies and countries of generated transactions; the same entities as
   Feast feature-server requests for the same features.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import redis
from feast import FeatureStore, FeatureView
from feast.infra.online_stores.helpers import _redis_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.type_map import python_values_to_proto_values

from feature_pipelines.fraud.aggregate import aggregate
from feature_pipelines.fraud.generate import generate_transactions
from feature_pipelines.fraud.schema import TABLE_FILES
from feature_pipelines.tables import write_feature_tables
from feature_repo import clock

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
FEATURE_REPO = ROOT / "feature_repo" / "fraud"
REDIS_YAML = "feature_store.redis.yaml"
FEATURE_SERVICE = "fraud_model_v1"
WRITE_CHUNK = 20_000


@dataclass
class BenchWorld:
    """What the scenarios need."""

    repo: Path
    yaml: Path
    model_root: Path
    feature_refs: list[str]  # view:feature, the model's stored features
    bodies: list[dict]  # business API bodies
    feast_bodies: list[dict]  # feature server bodies for the same entities
    entities_per_view: dict[str, int]
    stale_share: dict[str, float]
    timings: dict[str, float]


def _step(timings: dict[str, float], name: str, started: float) -> float:
    now = time.perf_counter()
    timings[name] = round(now - started, 2)
    logger.info("%s: %.1f s", name, now - started)
    return now


def _copy_repo(target: Path) -> Path:
    """The feature repository's definitions, without its data or registries."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for item in FEATURE_REPO.iterdir():
        if item.suffix in (".py", ".yaml") or item.name == ".feastignore":
            shutil.copy(item, target / item.name)
    return target


def _layout_hash(repo: Path, yaml: Path) -> str:
    """What the model depends on: its FeatureService's views, join keys, TTLs and features."""
    from models.dataset import feature_layout

    store = FeatureStore(repo_path=str(repo), fs_yaml_file=yaml)
    layout = feature_layout(store, FEATURE_SERVICE)
    text = json.dumps([layout.views, sorted(layout.on_demand)], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _feast(repo: Path, *args: str, env: dict[str, str]) -> None:
    feast = Path(sys.executable).parent / "feast"
    result = subprocess.run(
        [str(feast), "-f", REDIS_YAML, *args],
        cwd=repo,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=600,
    )
    if result.returncode != 0:
        raise RuntimeError(f"feast {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")


def _train(repo: Path, yaml: Path, transactions: Path, root: Path, key: str) -> None:
    """Train the benchmark's model unless one trained on the same world is there."""
    stamp = root / "world.json"
    manifest = root / "fraud_model" / "v1" / "manifest.json"
    if manifest.is_file() and stamp.is_file() and json.loads(stamp.read_text())["key"] == key:
        logger.info("reusing the model in %s", root)
        return
    from models.train import train

    if root.exists():
        shutil.rmtree(root)
    result = train(
        repo_path=repo,
        events_path=transactions,
        output_root=root,
        feature_service=FEATURE_SERVICE,
        yaml_path=yaml,
    )
    logger.info("trained:\n%s", result.summary())
    stamp.write_text(json.dumps({"key": key}))


def _clone_id(join_key: str, i: int) -> str:
    """A new id for the i-th copy, of the same kind as the real ones."""
    if join_key == "ip_address":
        return str(ipaddress.IPv4Address(0x0A000000 + i))  # 10/8: never generated
    prefix = {"card_id": "card_x", "merchant_id": "m_x"}.get(join_key, f"{join_key}_x")
    return f"{prefix}{i:07d}"


def _load_view(
    store: FeatureStore, view: FeatureView, table: pd.DataFrame, entities: int, now: datetime
) -> tuple[list[str], float]:
    """Write the view's latest snapshots, topped up to ``entities`` keys; (ids, stale share).

    Real entities go through Feast's ``online_write_batch`` (its conversion, keys and hash
    fields). Top-up entities are server-side copies (Redis COPY) of those hashes under keys that
    Feast's own ``_redis_key`` computes for the new ids: the same bytes, written in seconds.
    """
    join_key = view.join_keys[0]
    latest = (
        table[table.event_timestamp <= pd.Timestamp(now)]
        .sort_values("event_timestamp")
        .groupby(join_key, sort=False)
        .tail(1)
        .reset_index(drop=True)
    )
    # Feast's own conversion of Python values to ValueProto, per feature column.
    columns = {
        f.name: python_values_to_proto_values(latest[f.name].tolist(), f.dtype.to_value_type())
        for f in view.features
    }
    stamps = [ts.to_pydatetime() for ts in latest.event_timestamp]
    real_ids = latest[join_key].tolist()
    config = store.config
    provider = store._get_provider()

    def entity_key(entity_id: str) -> EntityKeyProto:
        return EntityKeyProto(
            join_keys=[join_key], entity_values=[ValueProto(string_val=entity_id)]
        )

    for start in range(0, len(real_ids), WRITE_CHUNK):
        rows = range(start, min(start + WRITE_CHUNK, len(real_ids)))
        data: list[tuple[EntityKeyProto, dict[str, ValueProto], datetime, datetime | None]] = [
            (entity_key(real_ids[i]), {n: c[i] for n, c in columns.items()}, stamps[i], None)
            for i in rows
        ]
        provider.online_write_batch(config, view, data, progress=None)

    clone_ids = [_clone_id(join_key, i) for i in range(len(real_ids), entities)]
    version = config.entity_key_serialization_version
    client = redis.Redis.from_url(f"redis://{os.environ['REDIS_CONNECTION_STRING']}")
    try:
        for start in range(0, len(clone_ids), WRITE_CHUNK):
            with client.pipeline(transaction=False) as pipe:
                for j, clone in enumerate(clone_ids[start : start + WRITE_CHUNK], start=start):
                    source = real_ids[j % len(real_ids)]
                    pipe.copy(
                        _redis_key(config.project, entity_key(source), version),  # type: ignore[arg-type]
                        _redis_key(config.project, entity_key(clone), version),  # type: ignore[arg-type]
                        replace=True,
                    )
                pipe.execute()
    finally:
        client.close()
    ttl = view.ttl.total_seconds() if view.ttl else None
    ids = real_ids + clone_ids
    ages = np.array([(now - stamps[i % len(stamps)]).total_seconds() for i in range(len(ids))])
    stale = float(np.mean(ages > ttl)) if ttl else 0.0
    return ids, stale


def build_world(
    workdir: Path,
    redis_url: str,
    *,
    rows: int = 100_000,
    days: int = 35,
    seed: int = 7,
    entities: int = 100_000,
    n_bodies: int = 20_000,
) -> BenchWorld:
    """Generate, aggregate, apply, train (once), load Redis, and draw request bodies."""
    timings: dict[str, float] = {}
    workdir.mkdir(parents=True, exist_ok=True)
    env = {"REDIS_CONNECTION_STRING": redis_url}
    os.environ.update(env)  # FeatureStore objects in this process expand it too
    now = clock.now().replace(second=0, microsecond=0)

    started = time.perf_counter()
    transactions = generate_transactions(n_rows=rows, seed=seed, days=days, end=now)
    tx_path = workdir / "transactions.parquet"
    transactions.to_parquet(tx_path, index=False)
    tables = aggregate(transactions, end=now)
    repo = _copy_repo(workdir / "feature_repo")
    write_feature_tables(tables, repo / "data", TABLE_FILES)
    started = _step(timings, "generate_aggregate_s", started)

    _feast(repo, "apply", env=env)
    started = _step(timings, "feast_apply_s", started)

    yaml = repo / REDIS_YAML
    key = f"rows={rows} days={days} seed={seed} layout={_layout_hash(repo, yaml)}"
    _train(repo, yaml, tx_path, workdir / "packages", key)
    started = _step(timings, "train_s", started)

    store = FeatureStore(repo_path=str(repo), fs_yaml_file=yaml)
    service = store.get_feature_service(FEATURE_SERVICE)
    ids: dict[str, list[str]] = {}
    stale: dict[str, float] = {}
    refs: list[str] = []
    for projection in service.feature_view_projections:
        view = store.get_feature_view(projection.name)
        join_key = view.join_keys[0]
        table = next(t for t in tables.values() if join_key in t.columns)
        ids[join_key], stale[view.name] = _load_view(store, view, table, entities, now)
        refs += [f"{view.name}:{f.name}" for f in view.features]
    started = _step(timings, "load_online_s", started)

    rng = np.random.default_rng(seed)
    sample = transactions.iloc[rng.integers(0, len(transactions), n_bodies)]
    picks = {k: rng.integers(0, len(v), n_bodies) for k, v in ids.items()}
    bodies, feast_bodies = [], []
    for j, row in enumerate(sample.itertuples(index=False)):
        entity = {k: ids[k][picks[k][j]] for k in ids}
        bodies.append(
            {
                "transaction_id": f"bench_{j:07d}",
                "amount": round(float(row.amount), 2),
                "currency": row.currency,
                "ip_address": entity["ip_address"],
                "card_id": entity["card_id"],
                "merchant_id": entity["merchant_id"],
                "card_country": row.card_country,
                "ip_country": row.ip_country,
                "merchant_country": row.merchant_country,
            }
        )
        feast_bodies.append({"features": refs, "entities": {k: [v] for k, v in entity.items()}})
    _step(timings, "bodies_s", started)
    return BenchWorld(
        repo=repo,
        yaml=yaml,
        model_root=workdir / "packages",
        feature_refs=refs,
        bodies=bodies,
        feast_bodies=feast_bodies,
        entities_per_view={v: len(k) for v, k in ids.items()},
        stale_share=stale,
        timings=timings,
    )
