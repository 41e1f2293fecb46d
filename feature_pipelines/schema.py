"""Columns every offline feature table has, whatever the domain: Feast's timestamp fields.

Each domain's own columns (its raw events, join keys, labels) live in its folder, e.g.
``feature_pipelines/fraud/schema.py``.
"""

from __future__ import annotations

from typing import Final

#: When a row's values became true (Feast's ``timestamp_field`` of every source).
EVENT_TIMESTAMP: Final = "event_timestamp"
#: When the row was written (Feast's ``created_timestamp_column``: the later of two rows with one
#: event timestamp wins).
CREATED_TIMESTAMP: Final = "created_timestamp"
