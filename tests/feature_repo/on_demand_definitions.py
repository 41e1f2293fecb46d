"""The on-demand feature views of a Feast repository, read the way ``feast apply`` reads them.

As in ``tests/feast_definitions.py``, each repository is parsed in a process of its own (Feast
imports its files as top-level modules). The process also runs each view's function on a sample
batch of Feast's python-mode columns, so a test can compare it with the transform the view's
``transform`` tag names.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_PARSE = """
import json, os, sys
from pathlib import Path
from feast.repo_operations import parse_repo
repo = Path(sys.argv[1]).resolve()
sample = json.loads(sys.argv[2])
os.chdir(repo)
sys.path.insert(0, str(repo))
contents = parse_repo(repo)
stored = {v.name: [f.name for f in v.features] for v in contents.feature_views}
views = {}
for view in contents.on_demand_feature_views:
    views[view.name] = {
        "tags": dict(view.tags),
        "mode": view.mode,
        "outputs": [[f.name, str(f.dtype)] for f in view.features],
        "request_fields": [
            [f.name, str(f.dtype)]
            for source in view.source_request_sources.values()
            for f in source.schema
        ],
        "source_views": {
            p.name: stored[p.name] for p in view.source_feature_view_projections.values()
        },
        "sample_output": view.feature_transformation.udf(sample),
    }
print("ON_DEMAND_VIEWS " + json.dumps(views))
"""


@dataclass(frozen=True)
class OnDemandDefinition:
    """What an on-demand view declares, and what its function gave for the sample batch."""

    name: str
    tags: dict[str, str]
    mode: str
    outputs: list[tuple[str, str]]  # (name, Feast type) in schema order
    request_fields: list[tuple[str, str]]
    source_views: dict[str, list[str]]  # feature view -> its features
    sample_output: dict[str, list[Any]]


def on_demand_views(repo: Path, sample: dict[str, list[Any]]) -> dict[str, OnDemandDefinition]:
    """Every on-demand view of the repository at ``repo``, its function run on ``sample``."""
    result = subprocess.run(
        [sys.executable, "-c", _PARSE, str(repo), json.dumps(sample)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    line = next((x for x in result.stdout.splitlines() if x.startswith("ON_DEMAND_VIEWS ")), None)
    if result.returncode != 0 or line is None:
        raise RuntimeError(f"parsing {repo} failed:\n{result.stdout}\n{result.stderr}")
    views = json.loads(line.removeprefix("ON_DEMAND_VIEWS "))
    return {
        name: OnDemandDefinition(
            name=name,
            tags=view["tags"],
            mode=view["mode"],
            outputs=[(f, t) for f, t in view["outputs"]],
            request_fields=[(f, t) for f, t in view["request_fields"]],
            source_views=view["source_views"],
            sample_output=view["sample_output"],
        )
        for name, view in views.items()
    }
