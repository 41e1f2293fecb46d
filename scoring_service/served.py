"""The domains one service process serves: resolved from the settings, then opened, all one way.

``SCORING_DOMAINS`` lists domain folders (each a Feast repository with its ``domain.yaml``); unset,
``SCORING_FEATURE_REPO`` alone is served. :func:`served_domains` reads every domain file when the
app is built, so a faulty one stops the service before it starts, and resolves per domain:

- its feature_store.yaml: ``SCORING_FEATURE_STORE_YAML`` for the first domain;
  ``SCORING_FEATURE_STORE_VARIANT=<v>`` gives every domain ``<folder>/feature_store.<v>.yaml``
  (the first domain's explicit yaml still wins); otherwise the folder's own feature_store.yaml;
- its model package: ``SCORING_MODELS`` (``name/version`` per domain, in order), else for the
  first domain ``SCORING_MODEL_NAME`` (default: the domain's ``model_name``) at
  ``SCORING_MODEL_VERSION``, and for the others their domain's ``model_name`` at that version;
- its deployment: ``SCORING_DEPLOYMENT`` for the first domain (the primary one, which the admin
  routes act on); every other domain is a deployment of its one package.

:func:`open_domain` opens any of them the same way (store, model registry, live deployment and
its manager, scorer, prediction log and explainer) and :func:`close_domain` closes it; the app's
lifespan calls them for every domain, primary first. The app factory (``scoring_service.api``)
receives these domains and lays out their routes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from feast import FeatureStore

from feature_repo import prediction_log as prediction_log_format
from feature_repo.domain import DomainSpec, DomainSpecError, load_domain
from feature_repo.layout import open_store
from scoring_service.core.errors import (
    ConfigurationInvalid,
    DeploymentRefused,
    FeatureStoreUnavailable,
)
from scoring_service.core.settings import Settings
from scoring_service.deployments.live import LiveDeployment
from scoring_service.deployments.packages import LoadedModel, ModelRegistry, domain_of
from scoring_service.deployments.rollout import DeploymentManager
from scoring_service.deployments.spec import (
    DeploymentInvalid,
    DeploymentSpec,
    load_deployment,
    single_model,
)
from scoring_service.monitoring.answers import AnswerLog, RecentAnswers
from scoring_service.monitoring.explanations import Explainer
from scoring_service.monitoring.prediction_log import PredictionLog
from scoring_service.redis.reader import RedisFeatureReader, open_fast_redis
from scoring_service.scoring.resilience import configure_online_store
from scoring_service.scoring.scorer import Scorer
from scoring_service.stages.features import FeastOnlineReader, OnlineFeatureReader, StoreLayout

if TYPE_CHECKING:  # its HTTP models belong to the API layer, which sets them
    from scoring_service.api.domain_api import DomainApi

logger = logging.getLogger(__name__)


@dataclass
class ServedDomain:
    """One served domain: how the settings resolve it, and its live parts while the app runs.

    ``scorer`` is the live deployment's scorer: its ``DeploymentManager`` (``deployments``)
    swaps it, and the routes read it per call.
    """

    spec: DomainSpec
    folder: Path
    yaml: Path | None
    model_name: str
    model_version: str
    primary: bool
    deployment_file: Path | None = None
    # Its request and answer models: set by the app factory before any route is built.
    api: DomainApi = field(default=None, repr=False)  # type: ignore[assignment]
    scorer: Scorer | None = None
    deployments: DeploymentManager | None = None
    registry: ModelRegistry | None = None
    build_scorer: Callable[[LoadedModel], Scorer] | None = None  # a reloaded package's scorer
    answers: AnswerLog | None = None  # None: no prediction log
    explainer: Explainer | None = None
    _close: list[Callable[[], Any]] = field(default_factory=list, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name


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
                spec=spec,
                folder=Path(folder),
                yaml=yaml,
                model_name=name,
                model_version=version,
                primary=i == 0,
                deployment_file=settings.deployment if i == 0 else None,
            )
        )
    names = [d.name for d in served]
    resources = [d.spec.resource for d in served]
    if len(set(names)) != len(names) or len(set(resources)) != len(resources):
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
            domain.spec.join_keys,
            sample_rate=settings.prediction_log_sample_rate,
            queue_size=settings.prediction_log_queue_size,
            roll_seconds=settings.prediction_log_roll_seconds,
            id_key=log_id_key(root / domain.name, settings),
            retention_days=settings.prediction_log_retention_days,
        )
        log.start()  # turns a killed process's journal into parquet first
        recent = RecentAnswers(settings.explanation_index_size)
        domain.answers = AnswerLog(domain.name, log, recent)
    domain.explainer = Explainer(
        domain.spec,
        settings.model_root,
        root / domain.name if root is not None else None,
        recent,
        signing_key=signing_key(settings),
    )


def log_id_key(folder: Path, settings: Settings) -> bytes | None:
    """The key of the log's entity-id hash (None: raw ids, only when configured so)."""
    if settings.prediction_log_raw_ids:
        return None
    if settings.prediction_log_id_key is not None:
        return settings.prediction_log_id_key.get_secret_value().encode()
    try:
        return prediction_log_format.pseudonym_key(folder)
    except (OSError, ValueError) as exc:
        raise ConfigurationInvalid(f"prediction log of {folder.name}: {exc}") from exc


def close_answers(domain: ServedDomain) -> None:
    """Drain and close the domain's prediction log (graceful shutdown loses nothing)."""
    answers, domain.answers = domain.answers, None
    if answers is not None:
        answers.close()


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


async def open_domain(domain: ServedDomain, settings: Settings) -> None:
    """Open a domain: its feature store, model registry and package, live deployment (its
    deployment file, else its one package) and the manager that swaps it, the scorer, the
    prediction log and the explainer. ``DeploymentRefused`` when the deployment is invalid."""
    store = open_store(domain.folder, domain.yaml)
    configure_online_store(store, settings)
    registry = open_registry(store, settings)
    model = registry.load(domain.model_name, domain.model_version)
    # Redis is read by the fast reader (Feast's layout, pipelined); other stores by Feast.
    redis_client = open_fast_redis(store, settings)
    if redis_client is not None:
        domain._close.append(redis_client.close)

    def open_reader(layout: StoreLayout) -> OnlineFeatureReader:
        if redis_client is None:
            return FeastOnlineReader(store, layout)
        return RedisFeatureReader(layout, redis_client, store.config.project)

    def new_scorer(
        loaded: LoadedModel,
        reader: OnlineFeatureReader | None = None,
        deployment: LiveDeployment | None = None,
    ) -> Scorer:
        # score-batch's model call uses every core (a second session; small calls keep one).
        loaded.predictor.add_batch_session(settings.batch_intra_op_threads or os.cpu_count() or 1)
        layout = deployment.layout if deployment is not None else loaded.layout
        return Scorer(
            loaded,
            reader or open_reader(layout),
            micro_batching=settings.micro_batching,
            batch_max_rows=settings.batch_max_rows,
            batch_max_wait_s=settings.batch_max_wait_ms / 1000,
            deployment=deployment,
            shadow_time_share=settings.shadow_time_share,
        )

    declared = domain_of(store)

    def load_live(spec: DeploymentSpec) -> LiveDeployment:
        return LiveDeployment.load(
            spec,
            str(settings.model_root),
            store,
            request_fields=list(declared.request_fields) if declared is not None else None,
            model_memory_mb=settings.model_memory_mb,
            model_admission=settings.model_admission,
            **load_options(settings),
        )

    def scorer_of(live: LiveDeployment) -> Scorer:
        return new_scorer(live.champion.members[0].model, deployment=live)

    if domain.deployment_file is not None:
        try:
            live = load_live(load_deployment(domain.deployment_file))
        except DeploymentInvalid as exc:
            raise DeploymentRefused(str(exc)) from exc
    else:
        sticky = next(iter(model.manifest.entity_mapping))
        live = load_live(single_model(model.version_label, sticky))
    manager = DeploymentManager(
        domain, load_live, scorer_of, model.manifest.domain, domain.deployment_file
    )
    reader = open_reader(live.layout)
    domain._close.insert(0, reader.close)
    try:
        reader.ping()
        if isinstance(reader, RedisFeatureReader):
            await reader.ping_async()  # opens the event loop's connection before traffic
    except FeatureStoreUnavailable:
        logger.warning(
            "online store of domain %s not reachable at start-up; not ready until it is",
            domain.name,
        )
    first = new_scorer(live.champion.members[0].model, reader, live)
    first.start()
    manager.start(live, first)
    domain.deployments, domain.registry, domain.build_scorer = manager, registry, new_scorer
    open_answers(domain, settings)
    logger.info(
        "domain %s: model %s on %s, store %s",
        domain.name,
        model.version_label,
        model.device,
        store.config.online_store.type,
    )


async def close_domain(domain: ServedDomain) -> None:
    """Close a domain: batches in progress finish, then the store connections close, then its
    prediction log drains (so the answers of the last calls are in it)."""
    scorer, domain.scorer = domain.scorer, None
    if scorer is not None:
        await scorer.aclose()
    domain.deployments = domain.registry = domain.build_scorer = None
    closers, domain._close = domain._close, []
    for close in closers:
        close()
    close_answers(domain)
