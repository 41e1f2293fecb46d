"""Window state in Redis: each entity's recent events, so that adding an event twice is a no-op.

One sorted set per entity (key: :func:`state_key`) whose members are
``event_id|value_in_units|counterpart`` scored by event time in µs. A redelivered event adds
the same member again and changes nothing, so every row is a pure function of the set of events
at or before its time. Values are kept in integer units so the live consumer and replay agree
to the last bit.

Events older than the entity's newest event by more than ``retention - longest window``
(default: one hour late) fall out of the state and are not counted. Rows assume one consumer
per entity at a time: scale out by partitioning the stream (for example by card), not by adding
consumers to one group.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any, Final, cast

import numpy as np
import pandas as pd
import redis

from feature_pipelines.streaming.windows import (
    HOUR_US,
    StreamKind,
    WindowCatalogue,
    WindowEvents,
    feature_rows,
)

#: Separates the parts of a member; the counterpart (the last part) must not contain it.
MEMBER_SEPARATOR: Final = "|"


def state_key(prefix: str, kind: str, entity: str) -> str:
    """Redis key of one entity's event set: the one place that names state keys.

    The entity is the key's hash tag (``{entity}``): on a Redis Cluster everything kept for one
    entity hashes to one slot, so commands on it may share a transaction there.
    """
    return f"{prefix}:{kind}:{{{entity}}}"


class WindowState:
    """Each entity's recent events in Redis; adding an event twice is a no-op.

    Members older than the entity's newest event minus ``retention_us`` are pruned; a key idle
    for ``key_ttl_seconds`` (wall clock) expires. Events are read through the catalogue's field
    names: ``id_field``, ``value_field`` and each kind's join key and counterpart, plus
    ``event_time_us`` (UTC epoch µs).
    """

    def __init__(
        self,
        client: redis.Redis,
        catalogue: WindowCatalogue,
        prefix: str,
        retention_us: int = 2 * HOUR_US,
        key_ttl_seconds: int = 24 * 3600,
    ) -> None:
        if retention_us < catalogue.max_window_us:
            raise ValueError("retention must cover the longest window")
        self.client = client
        self.catalogue = catalogue
        self.prefix = prefix
        self.retention_us = retention_us
        self.key_ttl_seconds = key_ttl_seconds

    def key(self, kind: str, entity: str) -> str:
        """Redis key of one entity's event set."""
        return state_key(self.prefix, kind, entity)

    def _member(self, event: Any, kind: StreamKind) -> str:
        units = int(self.catalogue.to_units(getattr(event, self.catalogue.value_field)))
        parts = (
            getattr(event, self.catalogue.id_field),
            str(units),
            getattr(event, kind.counterpart),
        )
        return MEMBER_SEPARATOR.join(parts)

    def apply(self, events: Sequence[Any]) -> dict[str, pd.DataFrame]:
        """Add events, then compute each event's row from the state (one MULTI/EXEC per call;
        on a Redis Cluster, one pipeline).

        Returns rows per table of ``catalogue.tables``, as ``replay.stream_tables`` does.
        """
        grouped: dict[str, dict[str, list[Any]]] = {}
        # A cluster runs a transaction within one slot only, and a batch spans many entities:
        # there the batch is a plain pipeline. Each entity's commands still run in order on its
        # node, and with one consumer per entity (module docstring) nothing comes between them.
        atomic = not isinstance(self.client, redis.cluster.RedisCluster)
        with self.client.pipeline(transaction=atomic) as pipe:
            for table, kind in self.catalogue.tables.items():
                by_entity: dict[str, list[Any]] = defaultdict(list)
                for event in events:
                    by_entity[getattr(event, kind.join_key)].append(event)
                grouped[table] = by_entity
                for entity, entity_events in by_entity.items():
                    key = self.key(kind.name, entity)
                    pipe.zadd(key, {self._member(e, kind): e.event_time_us for e in entity_events})
                    oldest = min(e.event_time_us for e in entity_events)
                    # Read before pruning: one batch may span more than the retention.
                    pipe.zrangebyscore(
                        key, f"({oldest - self.catalogue.max_window_us}", "+inf", withscores=True
                    )
                    newest = max(e.event_time_us for e in entity_events)
                    # Prune against this batch's newest event: after any sequence of batches
                    # the surviving set is the same as after one batch holding them all.
                    pipe.zremrangebyscore(key, "-inf", f"({newest - self.retention_us}")
                    pipe.expire(key, self.key_ttl_seconds)
            replies = pipe.execute()
        out: dict[str, pd.DataFrame] = {}
        cursor = 0
        for table, kind in self.catalogue.tables.items():
            by_entity = grouped[table]
            windows = []
            for _ in by_entity:
                windows.append(replies[cursor + 1])
                cursor += 4
            out[table] = self._rows(kind, by_entity, windows)
        return out

    def add(self, events: Sequence[Any]) -> None:
        """Add events without computing rows (seeding the state from a replayed history)."""
        with self.client.pipeline(transaction=False) as pipe:
            for kind in self.catalogue.kinds:
                members: dict[str, dict[str, int]] = defaultdict(dict)
                for e in events:
                    members[getattr(e, kind.join_key)][self._member(e, kind)] = e.event_time_us
                for entity, entity_members in members.items():
                    key = self.key(kind.name, entity)
                    pipe.zadd(key, entity_members)
                    newest = max(entity_members.values())
                    pipe.zremrangebyscore(key, "-inf", f"({newest - self.retention_us}")
                    pipe.expire(key, self.key_ttl_seconds)
            pipe.execute()

    def members(self, kind: str, entity: str) -> list[tuple[str, int]]:
        """(member, time µs) of one entity, oldest first (for inspection and tests)."""
        reply = cast(list[Any], self.client.zrange(self.key(kind, entity), 0, -1, withscores=True))
        return [(m.decode(), int(s)) for m, s in reply]

    def _rows(
        self,
        kind: StreamKind,
        by_entity: dict[str, list[Any]],
        windows: list[list[tuple[bytes, float]]],
    ) -> pd.DataFrame:
        entity_keys = np.asarray(list(by_entity), dtype=object)
        ev_entity: list[int] = []
        ev_t: list[int] = []
        ev_units: list[int] = []
        ev_counterpart: list[str] = []
        for code, window in enumerate(windows):
            for member, score in window:
                # rsplit: an event id may contain the separator, the other parts cannot.
                _, units, counterpart = member.decode().rsplit(MEMBER_SEPARATOR, 2)
                ev_entity.append(code)
                ev_t.append(int(score))
                ev_units.append(int(units))
                ev_counterpart.append(counterpart)
        counterpart_codes, _ = pd.factorize(pd.Series(ev_counterpart, dtype=object), sort=False)
        events = WindowEvents(
            entity=np.asarray(ev_entity, dtype=np.int64),
            t_us=np.asarray(ev_t, dtype=np.int64),
            units=np.asarray(ev_units, dtype=np.int64),
            counterpart=counterpart_codes.astype(np.int64),
        )
        q_entity = np.asarray(
            [code for code, evs in enumerate(by_entity.values()) for _ in evs], dtype=np.int64
        )
        q_t = np.asarray(
            [e.event_time_us for evs in by_entity.values() for e in evs], dtype=np.int64
        )
        return feature_rows(self.catalogue, kind, entity_keys, events, q_entity, q_t)
