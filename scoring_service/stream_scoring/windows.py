"""The streaming window state absorbs each scored event: the feature pipelines' logic, reused.

Design choice: the window maths and their Redis state live in ``feature_pipelines.streaming``
(``WindowState``: adding an event twice is a no-op; ``FeastPushWriter``: rows into Feast's push
sources). Rather than copying them, this one module of the service imports them, an exception
declared openly in the import-linter contract ``service-reads-package-format-only``
(pyproject.toml). The domain's catalogue is named by configuration
(``module:attribute``, e.g. ``feature_pipelines.fraud.windows:CATALOGUE``), so no service code
names a domain.

The state absorbs a batch after its decisions are written: an event is scored with the windows
of the events before it (what the online store held when it arrived), as training's
point-in-time join sees it (``feature_pipelines/streaming/windows.py``). Redelivered events add
nothing twice. Rows go online only; the offline rows training reads come from the replay of the
history (``python -m feature_pipelines replay``) or the feature consumer's own group.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from types import SimpleNamespace

import redis
from feast import FeatureStore
from feast.data_source import PushMode

from feature_pipelines.streaming.consumer import FeastPushWriter, latest_rows
from feature_pipelines.streaming.state import WindowState
from feature_pipelines.streaming.windows import WindowCatalogue
from scoring_service.core.errors import ConfigurationInvalid

EVENT_TIME_FIELD = "event_time_us"


def load_catalogue(reference: str) -> WindowCatalogue:
    """The catalogue named ``module:attribute``; ConfigurationInvalid when it is not one."""
    module_name, _, attribute = reference.partition(":")
    try:
        value = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigurationInvalid(
            f"the window catalogue {reference!r} cannot be loaded ({exc}); name it as "
            "module:attribute, e.g. feature_pipelines.<domain>.windows:CATALOGUE"
        ) from exc
    if not isinstance(value, WindowCatalogue):
        raise ConfigurationInvalid(f"{reference!r} is not a window catalogue")
    return value


def state_prefix_of(reference: str) -> str:
    """The state key prefix the catalogue's module declares (``STATE_PREFIX``), the one its
    stream consumer writes under; ConfigurationInvalid when it declares none."""
    module = importlib.import_module(reference.partition(":")[0])
    prefix = getattr(module, "STATE_PREFIX", None)
    if not isinstance(prefix, str) or not prefix:
        raise ConfigurationInvalid(
            f"{reference.partition(':')[0]} declares no STATE_PREFIX; pass --state-prefix"
        )
    return prefix


class WindowStep:
    """Adds events to the window state and pushes each entity's newest row online."""

    def __init__(
        self,
        client: redis.Redis,
        catalogue: WindowCatalogue,
        prefix: str,
        store: FeatureStore,
    ) -> None:
        self.catalogue = catalogue
        self.state = WindowState(client, catalogue, prefix=prefix)
        self.writer = FeastPushWriter(store, catalogue)

    def event(self, event_id: str, fields: Mapping[str, str]) -> SimpleNamespace:
        """An entry as the window state reads it: its time (``event_time_us``, else its append
        time in the entry id) and value as numbers, the rest as the strings they are."""
        time_us = fields.get(EVENT_TIME_FIELD)
        values: dict[str, object] = dict(fields)
        values[EVENT_TIME_FIELD] = (
            int(time_us) if time_us else int(event_id.partition("-")[0]) * 1000
        )
        values[self.catalogue.value_field] = float(fields[self.catalogue.value_field])
        return SimpleNamespace(**values)

    def absorb(self, entries: Sequence[tuple[str, Mapping[str, str]]]) -> None:
        """Add ``(entry id, fields)`` events; push the newest row of each entity online."""
        if not entries:
            return
        rows = self.state.apply([self.event(i, f) for i, f in entries])
        self.writer.write(latest_rows(self.catalogue, rows), PushMode.ONLINE)
