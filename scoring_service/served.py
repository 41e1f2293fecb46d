"""The domains one service process serves, from the settings, and what each holds while it runs.

``SCORING_DOMAINS`` lists domain folders (each a Feast repository with its ``domain.yaml``); unset,
``SCORING_FEATURE_REPO`` alone is served. :func:`served_domains` reads every domain file when the
app is built, so a faulty one stops the service before it starts, and resolves per domain:

- its feature_store.yaml: ``SCORING_FEATURE_STORE_YAML`` for the first domain;
  ``SCORING_FEATURE_STORE_VARIANT=<v>`` gives every domain ``<folder>/feature_store.<v>.yaml``
  (the first domain's explicit yaml still wins); otherwise the folder's own feature_store.yaml;
- its model package: ``SCORING_MODELS`` (``name/version`` per domain, in order), else for the
  first domain ``SCORING_MODEL_NAME`` (default: the domain's ``model_name``) at
  ``SCORING_MODEL_VERSION``, and for the others their domain's ``model_name`` at that version.

The first domain is the primary one: the app's lifespan opens it (with its deployment, and the
admin routes act on it); :func:`open_scoring` opens each other domain's store, model and scorer.
Every domain gets its prediction log (``<SCORING_PREDICTION_LOG_DIR>/<domain>/``) and explainer.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feast import FeatureStore

from feature_repo.domain import DomainSpecError, load_domain
from feature_repo.layout import open_store
from scoring_service.answer_log import AnswerLog, RecentAnswers
from scoring_service.domains import DomainApi
from scoring_service.errors import ConfigurationInvalid, FeatureStoreUnavailable
from scoring_service.explanations import Explainer
from scoring_service.features import FeastOnlineReader, OnlineFeatureReader
from scoring_service.prediction_log import PredictionLog
from scoring_service.redis.reader import RedisFeatureReader, open_fast_redis
from scoring_service.registry import ModelRegistry
from scoring_service.resilience import configure_online_store
from scoring_service.scoring import Scorer
from scoring_service.settings import Settings

logger = logging.getLogger(__name__)


@dataclass
class ServedDomain:
    """One served domain: its API (built with the app) and its live parts (in the lifespan)."""

    api: DomainApi
    folder: Path
    yaml: Path | None
    model_name: str
    model_version: str
    primary: bool
    scorer: Scorer | None = None  # other domains' scorer; the primary's is app.state.scorer
    answers: AnswerLog | None = None  # None: no prediction log
    explainer: Explainer | None = None

    @property
    def name(self) -> str:
        return self.api.name


def signing_key(settings: Settings) -> bytes | None:
    """The package signing key, when one is set."""
    key = settings.package_signing_key
    return key.get_secret_value().encode() if key is not None else None


def served_domains(settings: Settings) -> list[ServedDomain]:
    """The domains to serve, primary first; ConfigurationInvalid naming a faulty domain file."""
    served: list[ServedDomain] = []
    for i, folder in enumerate(settings.domain_folders):
        try:
            spec = load_domain(folder)
        except DomainSpecError as exc:
            raise ConfigurationInvalid(f"domain {folder} cannot be served: {exc}") from exc
        yaml: Path | None = None
        if i == 0 and settings.feature_store_yaml is not None:
            yaml = settings.feature_store_yaml
        elif settings.feature_store_variant is not None:
            yaml = Path(folder) / f"feature_store.{settings.feature_store_variant}.yaml"
        if i < len(settings.models):
            name, _, version = settings.models[i].partition("/")
        else:
            name = (settings.model_name if i == 0 else None) or spec.model_name
            version = settings.model_version
        served.append(
            ServedDomain(
                api=DomainApi.build(spec, settings.max_batch_size),
                folder=Path(folder),
                yaml=yaml,
                model_name=name,
                model_version=version,
                primary=i == 0,
            )
        )
    names = [d.name for d in served]
    paths = [p for d in served for p in (d.api.score_path, *(r.path for r in d.api.entity_routes))]
    if len(set(names)) != len(names) or len(set(paths)) != len(paths):
        raise ConfigurationInvalid(
            f"the domains served ({', '.join(names)}) must differ in name, resource and entity "
            "routes"
        )
    return served


def open_answers(domain: ServedDomain, settings: Settings) -> None:
    """Start the domain's prediction log (when configured) and its explainer."""
    root = settings.prediction_log_dir
    recent = None
    if root is not None:
        log = PredictionLog(
            root / domain.name,
            domain.api.spec.join_keys,
            sample_rate=settings.prediction_log_sample_rate,
            queue_size=settings.prediction_log_queue_size,
            roll_seconds=settings.prediction_log_roll_seconds,
        )
        log.start()  # turns a killed process's journal into parquet first
        recent = RecentAnswers(settings.explanation_index_size)
        domain.answers = AnswerLog(domain.name, log, recent)
    domain.explainer = Explainer(
        domain.api.spec,
        settings.model_root,
        root / domain.name if root is not None else None,
        recent,
        signing_key=signing_key(settings),
    )


def close_answers(domain: ServedDomain) -> None:
    """Drain and close the domain's prediction log (graceful shutdown loses nothing)."""
    answers, domain.answers = domain.answers, None
    if answers is not None:
        answers.close()


@dataclass
class OpenScoring:
    """A domain's store connections and scorer, opened by :func:`open_scoring`."""

    scorer: Scorer
    reader: OnlineFeatureReader
    redis_client: object | None

    async def aclose(self) -> None:
        """Finish the batches in progress, then close the store connections."""
        await self.scorer.aclose()
        self.reader.close()
        if self.redis_client is not None:
            self.redis_client.close()  # type: ignore[attr-defined]


def load_options(settings: Settings) -> dict[str, Any]:
    """How every model package of this process is opened: device, threads, signing key."""
    return {
        "device": settings.device,
        "intra_op_threads": settings.intra_op_threads,
        "gpu_min_batch": settings.gpu_min_batch,
        "gpu_device_id": settings.gpu_device_id,
        "signing_key": signing_key(settings),
    }


def open_registry(store: FeatureStore, settings: Settings) -> ModelRegistry:
    """The model registry of a domain's store, packages opened as ``load_options`` says."""
    return ModelRegistry(settings.model_root, store, **load_options(settings))


async def open_scoring(domain: ServedDomain, settings: Settings) -> OpenScoring:
    """Open a domain's feature store, model package and scorer (as the lifespan does for the
    primary domain, one package without a deployment)."""
    store = open_store(domain.folder, domain.yaml)
    configure_online_store(store, settings)
    registry = open_registry(store, settings)
    model = registry.load(domain.model_name, domain.model_version)
    redis_client = open_fast_redis(store, settings)
    reader: OnlineFeatureReader = (
        FeastOnlineReader(store, model.layout)
        if redis_client is None
        else RedisFeatureReader(model.layout, redis_client, store.config.project)
    )
    try:
        reader.ping()
        if isinstance(reader, RedisFeatureReader):
            await reader.ping_async()
    except FeatureStoreUnavailable:
        logger.warning(
            "online store of domain %s not reachable at start-up; not ready until it is",
            domain.name,
        )
    model.predictor.add_batch_session(settings.batch_intra_op_threads or os.cpu_count() or 1)
    scorer = Scorer(
        model,
        reader,
        micro_batching=settings.micro_batching,
        batch_max_rows=settings.batch_max_rows,
        batch_max_wait_s=settings.batch_max_wait_ms / 1000,
    )
    logger.info("domain %s: model %s on %s", domain.name, model.version_label, model.device)
    return OpenScoring(scorer, reader, redis_client)
