"""Service configuration: one Settings object, read from SCORING_* environment variables."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class StoreConnection:
    """How every Redis client of the service connects: timeouts and pool bound.

    Built from the ``store_*`` settings (``Settings.store_connection``); their defaults are the
    only ones, so a client made without settings connects like the service does.
    """

    timeout_s: float
    connect_timeout_s: float
    pool_size: int

    @classmethod
    def defaults(cls) -> StoreConnection:
        """The settings' defaults, without reading the environment."""
        return Settings.model_construct().store_connection

    def redis_py_options(self, redis_type: str = "redis") -> dict[str, object]:
        """The same as redis-py client options (``redis.Redis`` or ``RedisCluster`` kwargs)."""
        options: dict[str, object] = {
            "socket_timeout": self.timeout_s,
            "socket_connect_timeout": self.connect_timeout_s,
            "max_connections": self.pool_size,
        }
        if redis_type == "redis":
            # redis-py's default retries 3 times with backoff of up to seconds: far past any
            # deadline. Fail fast instead; the pool still replaces dead connections on checkout,
            # so the client reconnects on its own when the store is back.
            options["retry"] = None
        return options


class Settings(BaseSettings):
    """Everything the scoring service can be told; each field is SCORING_<NAME> in the env."""

    model_config = SettingsConfigDict(
        env_prefix="SCORING_",
        extra="ignore",
        use_attribute_docstrings=True,
        protected_namespaces=(),
        # Errors must not echo values: a key pasted where its hash belongs would reach the log.
        hide_input_in_errors=True,
    )

    feature_repo: Path = Path("feature_repo/fraud")
    """Feast feature repository of the domain served when `domains` is unset (its folder holds
    the domain.yaml and the registry the service validates models against)."""

    feature_store_yaml: Path | None = None
    """feature_store.yaml of the first domain; default is the repository's own (embedded
    SQLite). Point it at feature_repo/fraud/feature_store.redis.yaml for Redis."""

    domains: Annotated[tuple[Path, ...], NoDecode] = ()
    """Domain folders to serve, comma-separated (each a Feast repository with its domain.yaml,
    e.g. feature_repo/fraud,feature_repo/credit); each domain gets its own routes, model,
    label vocabulary and metrics. Unset: feature_repo alone. The first is the primary domain:
    feature_store_yaml, model_name and the deployment apply to it, /admin reloads its model."""

    feature_store_variant: str | None = Field(default=None, pattern=r"^[a-z0-9_]+$")
    """Store of every domain by convention: each reads <folder>/feature_store.<variant>.yaml
    (e.g. redis). feature_store_yaml, when set, still wins for the first domain."""

    models: Annotated[tuple[str, ...], NoDecode] = ()
    """Model package per domain, `name/version`, comma-separated in the order of `domains`;
    a domain without an entry serves its domain.yaml's model_name at model_version."""

    model_root: Path = Path("models/packages")
    """Root folder of model packages (<root>/<name>/<version>/manifest.json)."""

    model_name: str | None = None
    """Name of the first domain's model (default: its domain.yaml's model_name)."""

    model_version: str = "v1"
    """Version of the model to serve."""

    deployment: Path | None = None
    """Deployment file (YAML): which packages are live and how each answer is decided
    (champion, challengers, shadows, fallback chain, ensembles;
    scoring_service/deployments/spec.py).
    Unset: the package SCORING_MODEL_NAME / SCORING_MODEL_VERSION answers alone. Reloaded on
    SIGHUP and replaced through POST /admin/deployments."""

    shadow_time_share: float = Field(default=0.2, ge=0.0, le=1.0)
    """Most of the process's time that shadow models may take, on average: past it, a batch's
    shadow scoring is dropped (counted in scoring_shadow_dropped_total), so shadows never cost
    a busy service more than this share of its answers. 1 scores every batch whatever the load;
    0 turns shadows off."""
    model_memory_mb: float | None = Field(default=None, gt=0.0)
    """Memory budget of a model family's members loaded on demand (the bytes of their graphs; a
    family's default is always loaded and not counted): past it, the least recently used member
    not in use is evicted (scoring_service/deployments/family.py). Unset: no limit."""

    model_admission: Literal["frequency", "recency"] = "frequency"
    """Which family members are loaded when the memory budget is full: ``frequency`` loads a
    member only if its segment has been asked for more often, lately, than the segment of the
    member it would evict (the others get the default's answer, reason
    family_member_infrequent); ``recency`` loads every member asked for."""

    host: str = "127.0.0.1"
    """Interface to listen on."""

    port: int = Field(default=8000, ge=1, le=65535)
    """TCP port to listen on."""

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Logging level."""

    max_batch_size: int = Field(default=10_000, ge=1, le=10_000)
    """Most objects accepted by one score-batch call."""

    intra_op_threads: int = Field(default=1, ge=1, le=64)
    """ONNX Runtime intra-op threads per session (1 is best for small batches)."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to predict: auto (CUDA when ONNX Runtime offers it, it really initializes and the
    package has a GPU graph; else the CPU), cpu, or cuda (refuse to start without usable CUDA)."""

    gpu_min_batch: int = Field(default=256, ge=1, le=10_000_000)
    """On CUDA, batches of at least this many rows run the standard-operator graph on the GPU;
    smaller ones run the TreeEnsemble graph on the CPU, which answers them sooner. 256 is where an
    H100 was 6.8x faster than one Xeon thread (1 row: 25x slower; `make bench-predict`, README's
    GPU section). 1 sends everything to the GPU."""

    gpu_device_id: int = Field(default=0, ge=0, le=63)
    """CUDA device ordinal used when predicting on a GPU."""

    # Performance: the fast path (see scoring_service/scoring/micro_batching.py and redis/, `make
    # bench`).

    redis_reader: Literal["fast", "feast"] = "fast"
    """How to read a Redis online store: fast (pipelined HMGETs of Feast's own layout on the
    event loop, proven equal to Feast's get_online_features; on a Redis Cluster one pipeline
    per master) or feast (Feast's SDK). Other stores (SQLite) and Redis Sentinel always read
    through Feast's SDK."""

    micro_batching: bool = True
    """Gather concurrent scoring calls into one feature read and one model call."""

    batch_max_wait_ms: float = Field(default=1.0, ge=0.0, le=100.0)
    """Longest a call waits for others to join its micro-batch. An idle service does not wait:
    a batch leaves at once when none is in progress."""

    batch_max_rows: int = Field(default=64, ge=1, le=10_000)
    """Rows at which a micro-batch leaves without waiting; calls of this many rows or more
    (score-batch) are scored on their own."""

    batch_intra_op_threads: int = Field(default=0, ge=0, le=64)
    """ONNX Runtime intra-op threads of a second CPU session that scores large calls
    (score-batch, from 1,024 rows), so one batch uses every core; 0: one per CPU core, 1: no
    second session. Small calls keep intra_op_threads."""

    workers: int = Field(default=1, ge=1, le=64)
    """Worker processes serving on one socket (`python -m scoring_service serve`). Each loads
    the model and opens its own store connections; their Prometheus metrics are aggregated
    (multiprocess mode, see scoring_service/core/process.py)."""

    gc_freeze: bool = True
    """After warm-up, collect the start-up garbage and freeze the rest, so that garbage
    collections never walk the start-up heap again (scoring_service/core/process.py)."""

    gc_thresholds: tuple[int, int, int] = (10_000, 10, 10)
    """Collector thresholds set with gc_freeze, generations 0, 1 and 2 (JSON in the
    environment, e.g. [10000,10,10]); CPython's default is (700, 10, 10)."""

    # Reliability: deadlines, outage policy, overload (see scoring_service/scoring/resilience.py).

    deadline_ms: int = Field(default=50, ge=1, le=60_000)
    """Time budget of one request, from arrival to answer. A caller may ask for less with the
    X-Deadline-Ms header, never for more."""

    batch_deadline_ms: int = Field(default=2_000, ge=1, le=600_000)
    """Time budget of one score-batch call (up to max_batch_size objects, one read and
    one model call); X-Deadline-Ms may shorten it too."""

    outage_policy: Literal["fail", "degrade"] = "fail"
    """What to answer when the online store is unreachable or too slow for the deadline:
    fail (503 feature_store_unavailable with Retry-After) or degrade (200, label uncertain,
    reason feature_store_unavailable, score = fallback_score)."""

    fallback_score: float | None = Field(default=None, ge=0.0, le=1.0)
    """Score reported by degraded answers (label stays uncertain); None reports no score."""

    retry_after_s: int = Field(default=1, ge=1, le=3600)
    """Retry-After (seconds) sent with 503 answers (store unavailable, overloaded)."""

    store_timeout_ms: int = Field(default=50, ge=1, le=60_000)
    """Socket read/write timeout of online-store calls: it bounds how long a read abandoned at
    its deadline keeps its worker thread. Every Redis reader of the service honours it."""

    store_connect_timeout_ms: int = Field(default=100, ge=1, le=60_000)
    """Connect timeout of online-store connections (every Redis reader of the service)."""

    store_pool_size: int = Field(default=16, ge=1, le=1024)
    """Most connections to the online store per process (Redis connection pool size; per
    node on a Redis Cluster)."""

    max_in_flight: int = Field(default=64, ge=1, le=100_000)
    """Most scoring calls waiting for their answer at once; past it the service answers 503
    overloaded at once instead of queueing. Also the ceiling of the learned admission limit."""

    admission_enabled: bool = True
    """Admission by priority under a concurrency limit learned from latency, and per-key
    quotas (scoring_service/api/admission.py); off, only max_in_flight bounds scoring calls."""

    admission_initial_limit: int = Field(default=64, ge=1, le=100_000)
    """The learned concurrency limit's value at start (calls in flight per process)."""

    admission_min_limit: int = Field(default=32, ge=1, le=100_000)
    """The learned concurrency limit never goes below this: a client's next call can arrive
    before the server has counted its previous one out, so a floor near the callers' own
    concurrency would refuse calls on a service that is not overloaded."""

    admission_tolerance: float = Field(default=2.0, ge=1.0, le=10.0)
    """How much slower than their long-run average real-time calls may get before the limit
    shrinks (Gradient2's tolerance)."""

    admission_max_wait_ms: int = Field(default=40, ge=0, le=60_000)
    """Longest a request at its class's limit waits for a slot before it is refused 503
    overloaded (never so long that its deadline leaves less than twice a real-time call's
    time; newest first). 0: refuse at once."""

    admission_max_waiting: int = Field(default=1024, ge=1, le=1_000_000)
    """Most requests waiting for a slot per process; past it the oldest waiting one of the
    lowest class is refused."""

    admission_shares: dict[Literal["batch", "explain", "entity"], float] = Field(
        default={"batch": 0.5, "explain": 0.35, "entity": 0.25}
    )
    """Share of the concurrency limit each lower class may fill (JSON); real-time score calls
    may fill all of it, admin and health are never refused. A class is refused 503 overloaded
    once the calls in flight reach its share, so the lowest shares are shed first."""

    breaker_failures: int = Field(default=5, ge=1, le=1000)
    """Consecutive failed store reads that open the circuit: errors, or deadline overruns while
    no call at all has got its features for breaker_reset_ms (a hung store, not a busy
    machine). While open, requests get the outage policy's answer at once."""

    breaker_reset_ms: int = Field(default=250, ge=1, le=600_000)
    """How long the circuit stays open before one trial read is let through."""

    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024, le=1024**3)
    """Largest request body accepted (413 payload_too_large past it, counted as bytes arrive,
    chunked bodies included). The default holds a full batch of the longest valid payments."""

    header_timeout_s: float = Field(default=10.0, gt=0.0, le=3600.0)
    """Time a client has to send a request's headers, from its first byte (or from the
    connection's start); past it the connection is closed (408). See
    scoring_service/api/server.py."""

    body_timeout_s: float = Field(default=30.0, gt=0.0, le=3600.0)
    """Time a client has to send a request's body once its headers are in; past it the
    connection is closed (408 when no answer has started)."""

    keep_alive_s: float = Field(default=5.0, gt=0.0, le=3600.0)
    """How long an idle keep-alive connection stays open (uvicorn's timeout_keep_alive)."""

    max_connections: int = Field(default=2048, ge=1, le=1_000_000)
    """Most open connections per process; past it a new connection gets a fixed 503
    overloaded and is closed before anything of it is read."""

    # Prediction log and explanations (see scoring_service/monitoring/prediction_log.py,
    # answers.py).

    prediction_log_dir: Path | None = None
    """Where every answer is logged, off the hot path: date-partitioned parquet per domain in
    <dir>/<domain>/ (feature_repo/prediction_log.py). Unset: no log, and no explanations."""

    prediction_log_sample_rate: float = Field(default=1.0, ge=0.0, le=1.0)
    """Share of scoring calls logged, chosen by request id (every answer of a call or none)."""

    prediction_log_queue_size: int = Field(default=10_000, ge=1, le=10_000_000)
    """Answers waiting for the log's writer; past it answers are dropped and counted, never
    waited for. It is also what a killed process can lose at most, twice over: the queue and
    the batch the writer holds (scoring_service/monitoring/prediction_log.py)."""

    prediction_log_roll_seconds: float = Field(default=60.0, gt=0.0, le=86_400.0)
    """How often the log's journal becomes parquet in the log's date partitions."""

    prediction_log_raw_ids: bool = False
    """Keep entity ids (IP addresses, card ids, ...) in plain text in the prediction log. Off
    (the default): each is replaced by its keyed hash (HMAC-SHA256 under
    SCORING_PREDICTION_LOG_ID_KEY), so the log still joins and groups by entity without holding
    the ids."""

    prediction_log_id_key: SecretStr | None = Field(default=None, repr=False)
    """Key of the entity ids' keyed hash. Unset: a random key kept in
    <dir>/<domain>/_pseudonym.key (readable by the service's user only), made on first start.
    Replicas writing one log share that file; set the same key everywhere logs are joined."""

    prediction_log_retention_days: int = Field(default=90, ge=1, le=36_500)
    """Days of answers kept: the writer deletes date partitions older than this (at start and
    each time its journal rolls)."""

    explanation_index_size: int = Field(default=100_000, ge=1, le=10_000_000)
    """Latest logged answers kept in memory per domain for explanations (older ones are read
    from the parquet log)."""

    # Security: API keys, given as sha256 hex digests (see scoring_service/core/security.py).

    api_key_hashes: Annotated[tuple[str, ...], NoDecode] = Field(default=(), repr=False)
    """sha256 hex digests of the API keys allowed on the scoring routes, comma-separated.
    The service does not start without at least one (`python -m scoring_service hash-key`)."""

    analyst_key_hashes: Annotated[tuple[str, ...], NoDecode] = Field(default=(), repr=False)
    """sha256 hex digests of the keys allowed on explanation routes, comma-separated; none
    disables them (every call answers 401)."""

    admin_key_hashes: Annotated[tuple[str, ...], NoDecode] = Field(default=(), repr=False)
    """sha256 hex digests of the keys allowed on /admin routes, comma-separated; none disables
    the admin routes (every call answers 401)."""

    key_quotas: str = Field(default="", repr=False)
    """Per-key quotas, comma-separated ``<sha256 hex of the key>=<calls per second>/<share of
    the concurrency limit in flight>`` (either side may be empty). Past either, 429
    quota_exceeded with Retry-After."""

    key_rate: float | None = Field(default=None, gt=0)
    """Calls a second of a key without an entry in key_quotas (None: no rate limit)."""

    key_concurrency_share: float = Field(default=1.0, gt=0.0, le=1.0)
    """Share of the concurrency limit a key without an entry in key_quotas may hold in
    flight (1.0: all of it; below, one key alone cannot take every slot)."""

    package_signing_key: SecretStr | None = Field(default=None, repr=False)
    """When set, only model packages signed with this key (HMAC-SHA256 of the package digest,
    written by `models train` with MODEL_SIGNING_KEY) load; unsigned or re-signed ones are
    refused."""

    @field_validator("api_key_hashes", "analyst_key_hashes", "admin_key_hashes", mode="before")
    @classmethod
    def _key_hashes(cls, value: object) -> object:
        """Comma-separated text or a sequence; every item must be a sha256 hex digest."""
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            return value
        hashes = tuple(str(item).strip().lower() for item in items if str(item).strip())
        for digest in hashes:
            if not _SHA256_HEX.match(digest):
                # Never echo the value: an operator may have pasted a key instead of its hash.
                raise ValueError(
                    "every key hash must be 64 hex characters (the sha256 of the key, e.g. from "
                    "`python -m scoring_service hash-key`), not the key itself"
                )
        return hashes

    @field_validator("domains", "models", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        """Comma-separated text or a sequence."""
        if isinstance(value, str):
            return tuple(item.strip() for item in value.split(",") if item.strip())
        return value

    @field_validator("models")
    @classmethod
    def _package_references(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for reference in value:
            name, sep, version = reference.partition("/")
            if not sep or not name or not version or "/" in version:
                raise ValueError(f"{reference!r} is not a model package of the form name/version")
        return value

    @property
    def domain_folders(self) -> tuple[Path, ...]:
        """The domain folders served, the primary first."""
        return self.domains or (self.feature_repo,)

    @property
    def store_connection(self) -> StoreConnection:
        """The store_* settings as one value every Redis client of the service takes."""
        return StoreConnection(
            timeout_s=self.store_timeout_ms / 1000,
            connect_timeout_s=self.store_connect_timeout_ms / 1000,
            pool_size=self.store_pool_size,
        )
