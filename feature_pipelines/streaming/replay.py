"""Replay: the rows the live consumer writes, for a whole stored history at once.

The same window code as the consumer (``windows.feature_rows``) over a frame of events, so
the offline tables that training reads hold exactly the rows live consumption would have
written for those events in event-time order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from feature_pipelines.schema import EVENT_TIMESTAMP
from feature_pipelines.streaming.windows import (
    WindowCatalogue,
    WindowEvents,
    event_times_us,
    feature_rows,
)
from feature_pipelines.tables import write_feature_tables


def stream_tables(catalogue: WindowCatalogue, events: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Every kind's rows for a frame of events (``event_timestamp``, the value, join keys and
    counterparts as columns), keyed by ``catalogue.tables`` ("ip_stream", ...).

    Each frame has the join key, ``event_timestamp`` (event time + n µs), ``created_timestamp``
    and the kind's features: identical to the consumer's rows for the same events.
    """
    t_us = event_times_us(events[EVENT_TIMESTAMP])
    units = catalogue.to_units(events[catalogue.value_field].to_numpy(dtype=np.float64))
    out: dict[str, pd.DataFrame] = {}
    for table, kind in catalogue.tables.items():
        entity, entity_keys = pd.factorize(events[kind.join_key], sort=False)
        counterpart, _ = pd.factorize(events[kind.counterpart], sort=False)
        window_events = WindowEvents(
            entity=entity.astype(np.int64),
            t_us=t_us,
            units=units,
            counterpart=counterpart.astype(np.int64),
        )
        out[table] = feature_rows(
            catalogue,
            kind,
            np.asarray(entity_keys, dtype=object),
            window_events,
            window_events.entity,
            t_us,
        )
    return out


def write_stream_tables(
    catalogue: WindowCatalogue, tables: dict[str, pd.DataFrame], out_dir: Path
) -> list[Path]:
    """Write the kinds' tables present in ``tables`` into a repository's data folder."""
    files = {t: kind.table_file for t, kind in catalogue.tables.items() if t in tables}
    return write_feature_tables(tables, out_dir, files)


def empty_stream_tables(catalogue: WindowCatalogue) -> dict[str, pd.DataFrame]:
    """Stream tables with no rows (a repository whose consumer has not written yet)."""
    text_columns = {c for k in catalogue.kinds for c in (k.join_key, k.counterpart)}
    columns = {
        EVENT_TIMESTAMP: pd.Series([], dtype="datetime64[ns, UTC]"),
        catalogue.value_field: pd.Series([], dtype=np.float64),
        **{name: pd.Series([], dtype=object) for name in sorted(text_columns)},
    }
    tables = stream_tables(catalogue, pd.DataFrame(columns))
    # An empty object column would be written as Arrow's null type; appends need strings.
    return {
        name: frame.astype({catalogue.tables[name].join_key: "string"})
        for name, frame in tables.items()
    }
