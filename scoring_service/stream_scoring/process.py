"""A stream-scoring member as a process: open the domain, score until told to stop, close.

``python -m scoring_service stream-score`` (scoring_service/cli.py) runs :func:`serve_stream`.
SIGTERM or SIGINT stops reading; the batch in hand is decided and acknowledged, then the domain
closes (its prediction log drains).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import TYPE_CHECKING, Any

import redis
import redis.asyncio as aioredis
from prometheus_client import start_http_server

from feature_repo.layout import open_store
from feature_repo.redis_connection import redis_options
from scoring_service.api.domain_api import DomainApi
from scoring_service.core.process import settle_heap
from scoring_service.core.settings import Settings
from scoring_service.served import close_domain, open_domain, served_domains
from scoring_service.stream_scoring.runner import StreamOptions, StreamScorer, StreamStats

if TYPE_CHECKING:
    from scoring_service.stream_scoring.windows import WindowStep

logger = logging.getLogger(__name__)


def _client(kind: type[redis.Redis] | type[aioredis.Redis], connection: str) -> Any:
    options = redis_options(connection)
    url = options.pop("url", None)
    return kind.from_url(str(url)) if url is not None else kind(**options)  # type: ignore[arg-type]


async def serve_stream(
    settings: Settings,
    options: StreamOptions,
    *,
    connection: str,
    windows: str | None = None,
    state_prefix: str = "",
    metrics_port: int = 0,
    max_events: int | None = None,
    idle_exit_seconds: float | None = None,
) -> StreamStats:
    """Score the stream as one group member until SIGTERM/SIGINT (or the limits given).

    ``windows`` names the window catalogue (``module:attribute``) whose state absorbs each
    event, kept under ``state_prefix`` on the stream's Redis; None: no window step.
    """
    (domain, *_) = served_domains(settings)
    domain.api = DomainApi.build(domain.spec, settings.max_batch_size)
    step: WindowStep | None = None
    sync_client: redis.Redis | None = None
    if windows is not None:
        # Imported here: the window step needs the pipelines package (scoring image: absent).
        from scoring_service.stream_scoring.windows import (
            WindowStep,
            load_catalogue,
            state_prefix_of,
        )

        catalogue = load_catalogue(windows)
        state_prefix = state_prefix or state_prefix_of(windows)
        sync_client = _client(redis.Redis, connection)
        step = WindowStep(
            sync_client, catalogue, state_prefix, open_store(domain.folder, domain.yaml)
        )
    if metrics_port:
        start_http_server(metrics_port)
    client = _client(aioredis.Redis, connection)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await open_domain(domain, settings)
    try:
        scorer = StreamScorer(client, domain, options, windows=step)
        # What is alive now lives as long as the process: full collections never walk it again
        # (a walk of the start-up heap stalled every event arriving meanwhile for 100-250 ms).
        settle_heap(settings.gc_freeze, settings.gc_thresholds)
        logger.info(
            "scoring %s as %s/%s into %s",
            options.stream,
            options.group,
            options.consumer,
            options.decisions,
        )
        return await scorer.run(stop, max_events=max_events, idle_exit_seconds=idle_exit_seconds)
    finally:
        await close_domain(domain)
        await client.aclose()
        if sync_client is not None:
            sync_client.close()
