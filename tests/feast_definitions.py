"""The feature views of a Feast repository, read the way ``feast apply`` reads them.

Feast imports a repository's files as top-level modules with the repository on ``sys.path``
(``feast.repo_operations.parse_repo``), so two repositories with an ``entities.py`` each cannot
share one interpreter: each is parsed in a process of its own, which reports what it found.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

_PARSE = """
import json, os, sys
from pathlib import Path
from feast.repo_operations import parse_repo
repo = Path(sys.argv[1]).resolve()
os.chdir(repo)
sys.path.insert(0, str(repo))
contents = parse_repo(repo)
join_keys = {e.name: e.join_key for e in contents.entities}
views = {}
for view in contents.feature_views:
    batch = view.batch_source
    views[view.name] = {
        "join_keys": [join_keys[e] for e in view.entities],
        "features": [[f.name, str(f.dtype)] for f in view.features],
        "ttl_seconds": view.ttl.total_seconds() if view.ttl else None,
        "table_file": Path(batch.path).name if getattr(batch, "path", None) else None,
        "push_source": view.stream_source.name if view.stream_source is not None else None,
    }
print("FEATURE_VIEWS " + json.dumps(views))
"""

#: pandas dtype of each Feast value type a pipeline writes.
PANDAS_DTYPES = {"Int64": "int64", "Float64": "float64", "String": "object", "Bool": "bool"}


@dataclass(frozen=True)
class ViewDefinition:
    """What a feature view declares: join keys, features (name, Feast type) in order, TTL,
    the file of its batch source and its push source, if any."""

    name: str
    join_keys: list[str]
    features: list[tuple[str, str]]
    ttl_seconds: float | None
    table_file: str | None
    push_source: str | None

    @property
    def feature_names(self) -> list[str]:
        """Feature names in view order."""
        return [name for name, _ in self.features]

    @property
    def pandas_dtypes(self) -> dict[str, str]:
        """Feature name -> the pandas dtype a table of this view holds."""
        return {name: PANDAS_DTYPES[dtype] for name, dtype in self.features}


@functools.cache
def feature_views(repo: Path) -> dict[str, ViewDefinition]:
    """Every feature view of the repository at ``repo``, by name."""
    result = subprocess.run(
        [sys.executable, "-c", _PARSE, str(repo)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    line = next((x for x in result.stdout.splitlines() if x.startswith("FEATURE_VIEWS ")), None)
    if result.returncode != 0 or line is None:
        raise RuntimeError(f"parsing {repo} failed:\n{result.stdout}\n{result.stderr}")
    views = json.loads(line.removeprefix("FEATURE_VIEWS "))
    return {
        name: ViewDefinition(
            name=name,
            join_keys=view["join_keys"],
            features=[(f, t) for f, t in view["features"]],
            ttl_seconds=view["ttl_seconds"],
            table_file=view["table_file"],
            push_source=view["push_source"],
        )
        for name, view in views.items()
    }
