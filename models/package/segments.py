"""A model family's segment keys: how a row's segment value becomes the key its member is
published and looked up under, the same in training (``models.family``) and serving
(``scoring_service.deployments.family``).

A segment is a value of a request field (``card_country``) or of a stored feature the family's
FeatureService reads (an entity's code or count, e.g. ``card_distinct_countries_24h``). A stored
feature arrives as a number (float32 in serving, float64 or a nullable integer in training), so
its key is the integer it holds, written in decimal: ``2.0`` and ``2`` are both ``"2"``. A value
that is missing or not an integer has no segment: the default member answers it.
"""

from __future__ import annotations

import math
from numbers import Integral, Real


def segment_key(value: object) -> str | None:
    """The key of a segment value; None where the value makes no segment (missing, NaN, or a
    number that is not an integer)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, Integral):
        return str(int(value))
    if isinstance(value, Real):
        number = float(value)
        if math.isfinite(number) and number.is_integer():
            return str(int(number))
        return None
    return str(value)
