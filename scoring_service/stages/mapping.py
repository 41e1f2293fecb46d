"""Business -> data domain: a business request becomes entity keys and request-time values.

The mapping (request field -> join key, request features) is declared by the model package, so a
new model can read other entities without a code change here. Requests are the validated models
``scoring_service.api.domain_api`` builds from the domain file (any objects with attributes do).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from operator import attrgetter

import numpy as np

from models.package import Manifest
from scoring_service.core.errors import EntityMappingError


@dataclass
class MappedRequests:
    """n requests in the data domain."""

    keys: dict[str, list[str | None]]  # join key -> n values (None: not part of the request)
    request_values: np.ndarray  # float32 [n, len(request_features)], NaN when absent
    # Raw request fields the on-demand views read (field -> n values, None when absent).
    request_fields: dict[str, list[object]] = dataclasses.field(default_factory=dict)


def map_records(records: Sequence[object], manifest: Manifest) -> MappedRequests:
    """Map validated requests (objects with attributes) to entity keys and request values; an
    absent request feature (an optional field left out, None) is NaN, as missing in training."""
    keys: dict[str, list[str | None]] = {}
    for field, join_key in manifest.entity_mapping.items():
        try:
            keys[join_key] = list(map(attrgetter(field), records))
        except AttributeError as exc:
            raise EntityMappingError(
                f"model {manifest.name}/{manifest.version} maps request field {field!r} to "
                f"entity {join_key!r}, but the request has no such field"
            ) from exc
    values = np.empty((len(records), len(manifest.request_features)), dtype=np.float32)
    for j, name in enumerate(manifest.request_features):
        try:
            column = list(map(attrgetter(name), records))
        except AttributeError as exc:
            raise EntityMappingError(
                f"model {manifest.name}/{manifest.version} needs request field {name!r}"
            ) from exc
        values[:, j] = _floats(column)
    fields: dict[str, list[object]] = {}
    for view in manifest.on_demand_views.values():
        for name in view.request_fields:
            try:
                fields[name] = list(map(attrgetter(name), records))
            except AttributeError as exc:
                raise EntityMappingError(
                    f"model {manifest.name}/{manifest.version} needs request field {name!r} "
                    "for its on-demand features"
                ) from exc
    return MappedRequests(keys=keys, request_values=values, request_fields=fields)


_PLAIN_NUMBERS = frozenset({float, int, type(None)})


def _floats(column: list[object]) -> np.ndarray:
    """A request feature's values as float64, each as ``float(value)`` makes it (None: NaN)."""
    if set(map(type, column)) <= _PLAIN_NUMBERS:
        try:
            return np.array(column, dtype=np.float64)
        except OverflowError:
            pass  # float() says which value is too large
    return np.array([np.nan if v is None else float(v) for v in column], dtype=np.float64)  # type: ignore[arg-type]


def map_entity(join_key: str, entity_id: str, manifest: Manifest) -> MappedRequests:
    """An entity-id call: one known key, every other entity and request value absent."""
    if join_key not in manifest.entity_mapping.values():
        raise EntityMappingError(
            f"model {manifest.name}/{manifest.version} does not read entity {join_key!r}"
        )
    keys: dict[str, list[str | None]] = {
        key: [entity_id if key == join_key else None] for key in manifest.entity_mapping.values()
    }
    values = np.full((1, len(manifest.request_features)), np.nan, dtype=np.float32)
    fields: dict[str, list[object]] = {
        name: [None] for view in manifest.on_demand_views.values() for name in view.request_fields
    }
    return MappedRequests(keys=keys, request_values=values, request_fields=fields)
