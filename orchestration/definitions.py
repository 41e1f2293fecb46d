"""The platform's Dagster definitions: ``dagster dev -m orchestration.definitions``.

Assets (orchestration.assets) with their gates as asset checks (orchestration.checks), the jobs
over them (orchestration.jobs), schedules (orchestration.schedules), the retraining sensor
(orchestration.sensors), and one resource (orchestration.resources) read from
``ORCHESTRATION_*`` variables over the embedded default's paths.
"""

from __future__ import annotations

from dagster import Definitions

from orchestration.assets import ASSETS
from orchestration.jobs import JOBS
from orchestration.resources import PlatformResource
from orchestration.schedules import SCHEDULES
from orchestration.sensors import SENSORS


def build(platform: PlatformResource | None = None) -> Definitions:
    """The definitions with this platform resource (default: from the environment)."""
    return Definitions(
        assets=ASSETS,
        jobs=JOBS,
        schedules=SCHEDULES,
        sensors=SENSORS,
        resources={"platform": platform or PlatformResource.from_env()},
    )


defs = build()
