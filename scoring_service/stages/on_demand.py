"""On-demand features at serving time: the package's transforms run on the row just read.

Each on-demand view of a model package names its function (``module:function`` in the domain's
feature repository, see ``feature_repo.transforms``) and the sha256 of its source at training
time. The service resolves the function, refuses a package whose code has changed, and computes
the view's outputs from the stored block of the model input and the request's fields.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from feature_repo.layout import OnDemandLayout
from feature_repo.transforms import OnDemandTransform, resolve
from models.package import Manifest


class OnDemandFeatures:
    """The on-demand block of one model's input: views in model order, outputs by name.

    ``views`` maps view name -> (function reference, the outputs the model reads from it in
    model order); ``stored_features`` is the model's stored-feature block, whose columns feed
    the transforms.
    """

    def __init__(
        self, views: Mapping[str, tuple[str, Sequence[str]]], stored_features: Sequence[str]
    ) -> None:
        index = {name: i for i, name in enumerate(stored_features)}
        self._plan: list[tuple[OnDemandTransform, list[tuple[str, int]], list[str]]] = []
        for view, (reference, outputs) in views.items():
            transform = resolve(reference)
            unknown = [o for o in outputs if o not in transform.outputs]
            if unknown:
                raise ValueError(f"on-demand view {view} does not compute {unknown}")
            absent = [f for f in transform.stored_inputs if f not in index]
            if absent:
                raise ValueError(
                    f"on-demand view {view} reads {absent}, which the model does not read"
                )
            inputs = [(f, index[f]) for f in transform.stored_inputs]
            self._plan.append((transform, inputs, list(outputs)))
        self.features = [o for _, _, outputs in self._plan for o in outputs]
        self.request_fields = list(
            dict.fromkeys(f for t, _, _ in self._plan for f in t.request_fields)
        )

    @property
    def width(self) -> int:
        """Number of on-demand features."""
        return len(self.features)

    def compute(self, stored: np.ndarray, request: Mapping[str, Sequence[Any]]) -> np.ndarray:
        """float32 [n, width] from the stored block [n, k] and request columns (length n)."""
        n = stored.shape[0]
        out = np.empty((n, self.width), dtype=np.float32)
        column = 0
        for transform, inputs, outputs in self._plan:
            columns: dict[str, Sequence[Any] | np.ndarray] = {f: stored[:, i] for f, i in inputs}
            for name in transform.request_fields:
                columns[name] = request[name]
            result = transform.function(columns)
            for name in outputs:
                out[:, column] = np.asarray(result[name], dtype=np.float32)
                column += 1
        return out


def on_demand_problems(manifest: Manifest, live: Mapping[str, OnDemandLayout]) -> list[str]:
    """Why a package's on-demand views do not match the live FeatureService and the code.

    Checks, per view: it is still in the live service with the same outputs and request
    fields, its function still exists and is the one the live view names, its source has not
    changed since training, and every stored input it reads is a model input.
    """
    problems = []
    stored = set(manifest.stored_features)
    for view, info in manifest.on_demand_views.items():
        actual = live.get(view)
        if actual is None:
            problems.append(f"on-demand view {view} is gone from the live service")
            continue
        if actual.features != info.features:
            problems.append(
                f"on-demand view {view}: outputs {info.features} in package, {actual.features} live"
            )
        if sorted(actual.request_fields) != sorted(info.request_fields):
            problems.append(
                f"on-demand view {view}: request fields {sorted(info.request_fields)} in "
                f"package, {sorted(actual.request_fields)} live"
            )
        try:
            transform = resolve(info.function)
        except ValueError as exc:
            problems.append(f"on-demand view {view}: {exc}")
            continue
        if actual.function and actual.function != info.function:
            problems.append(
                f"on-demand view {view}: computed by {info.function} in training, "
                f"{actual.function} in the live feature store"
            )
        elif transform.code_sha256 != info.code_sha256:
            problems.append(
                f"on-demand view {view}: the code of {info.function} changed since training "
                "(retrain, or serve the code the model was trained with)"
            )
        absent = sorted(set(transform.stored_inputs) - stored)
        if absent:
            problems.append(f"on-demand view {view} reads {absent}, which the model does not read")
    for view in live:
        if view not in manifest.on_demand_views:
            problems.append(f"live service has extra on-demand view {view}")
    return problems


def for_manifest(manifest: Manifest) -> OnDemandFeatures:
    """The on-demand block of a package's model input (empty for a model without any)."""
    return OnDemandFeatures(
        {view: (info.function, info.features) for view, info in manifest.on_demand_views.items()},
        manifest.stored_features,
    )
