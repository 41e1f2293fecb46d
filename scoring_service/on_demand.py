"""On-demand features: facts of this request set against what the store knows.

One implementation for training and serving. Feast's on-demand feature views
(``feature_repo/on_demand_features.py``, ``mode="python"``) call the functions of this module
inside ``get_historical_features``, with request columns taken from the entity dataframe; the
scoring service calls the same functions on the stored features it has just read and the
request's fields. A model package names each view's function and the sha256 of its source, and
the service refuses a package whose functions have changed since training.

Every function takes a mapping of column -> sequence (Feast's python-mode batch format: lists
with None for missing values; the service passes numpy columns) and returns column -> list of
float or None. Numeric inputs are rounded to float32 first: serving reads stored features as
float32 while training gets float64 from the offline store, and rounding both sides makes the
same inputs give bit-identical outputs.

This module is imported by Feast inside the feature repository and must stay light: numpy only.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from models.dataset import OnDemandLayout
    from models.package import Manifest

# Column name -> values: lists from Feast (None when missing), numpy columns from the service.
Columns = Mapping[str, Sequence[Any] | np.ndarray]
Transform = Callable[[Columns], dict[str, list[float | None]]]


def _numbers(values: Sequence[Any] | np.ndarray) -> np.ndarray:
    """float32-rounded values as float64, NaN where missing (None or NaN)."""
    return np.asarray(values, dtype=np.float32).astype(np.float64)


def _texts(values: Sequence[Any] | np.ndarray) -> list[str | None]:
    return [None if v is None or (isinstance(v, float) and v != v) else str(v) for v in values]


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator; NaN when either is missing or the denominator is not > 0."""
    out = np.full(len(numerator), np.nan)
    ok = (denominator > 0) & ~np.isnan(numerator)
    np.divide(numerator, denominator, out=out, where=ok)
    return out


def _listed(values: np.ndarray) -> list[float | None]:
    return [None if np.isnan(v) else float(v) for v in values]


def amount_context(inputs: Columns) -> dict[str, list[float | None]]:
    """This amount against the card's and the IP's usual amounts.

    A stolen card is drained with amounts far above its owner's habits, and a card-testing
    burst of tiny amounts is followed by a large purchase: ratios to the 30-day card mean and
    maximum, the 7-day IP mean and the last hour's card mean (from the stream) show both.
    """
    amount = _numbers(inputs["amount"])
    rt_mean = _ratio(
        _numbers(inputs["card_rt_amount_sum_1h"]), _numbers(inputs["card_rt_txn_count_1h"])
    )
    return {
        "amount_to_card_mean_30d": _listed(
            _ratio(amount, _numbers(inputs["card_amount_mean_30d"]))
        ),
        "amount_to_card_max_30d": _listed(_ratio(amount, _numbers(inputs["card_amount_max_30d"]))),
        "amount_to_ip_mean_7d": _listed(_ratio(amount, _numbers(inputs["ip_amount_mean_7d"]))),
        "amount_to_card_mean_1h": _listed(_ratio(amount, rt_mean)),
    }


def geo_context(inputs: Columns) -> dict[str, list[float | None]]:
    """Whether the payment crosses borders: IP country and merchant country versus the card's.

    1.0 when they differ, 0.0 when they match, None when either country is unknown.
    """
    card = _texts(inputs["card_country"])
    ip = _texts(inputs["ip_country"])
    merchant = _texts(inputs["merchant_country"])

    def differs(left: list[str | None], right: list[str | None]) -> list[float | None]:
        return [
            None if a is None or b is None else float(a != b)
            for a, b in zip(left, right, strict=True)
        ]

    return {
        "ip_country_mismatch": differs(ip, card),
        "merchant_country_mismatch": differs(merchant, card),
    }


@dataclass(frozen=True)
class OnDemandTransform:
    """An on-demand feature view's computation: what it reads and what it returns."""

    name: str
    function: Transform
    request_fields: tuple[str, ...]
    stored_inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    @property
    def reference(self) -> str:
        """``module:function`` of the implementation."""
        return f"{self.function.__module__}:{self.function.__qualname__}"

    @property
    def code_sha256(self) -> str:
        """sha256 of the function's source: changes whenever its code does."""
        return hashlib.sha256(inspect.getsource(self.function).encode()).hexdigest()


#: On-demand feature view name -> its transform (names match feature_repo/on_demand_features.py).
TRANSFORMS: dict[str, OnDemandTransform] = {
    t.name: t
    for t in (
        OnDemandTransform(
            name="amount_context",
            function=amount_context,
            request_fields=("amount",),
            stored_inputs=(
                "card_amount_mean_30d",
                "card_amount_max_30d",
                "ip_amount_mean_7d",
                "card_rt_amount_sum_1h",
                "card_rt_txn_count_1h",
            ),
            outputs=(
                "amount_to_card_mean_30d",
                "amount_to_card_max_30d",
                "amount_to_ip_mean_7d",
                "amount_to_card_mean_1h",
            ),
        ),
        OnDemandTransform(
            name="geo_context",
            function=geo_context,
            request_fields=("card_country", "ip_country", "merchant_country"),
            stored_inputs=(),
            outputs=("ip_country_mismatch", "merchant_country_mismatch"),
        ),
    )
}


class OnDemandFeatures:
    """The on-demand block of one model's input: views in model order, outputs by name.

    ``views`` maps view name -> the output features the model reads from it (in model order);
    ``stored_features`` is the model's stored-feature block, whose columns feed the transforms.
    """

    def __init__(self, views: Mapping[str, Sequence[str]], stored_features: Sequence[str]) -> None:
        index = {name: i for i, name in enumerate(stored_features)}
        self._plan: list[tuple[OnDemandTransform, list[tuple[str, int]], list[str]]] = []
        for view, outputs in views.items():
            transform = TRANSFORMS.get(view)
            if transform is None:
                raise ValueError(f"no on-demand transform named {view!r} in {__name__}")
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


def model_input(
    stored: np.ndarray, on_demand: np.ndarray | None, request_values: np.ndarray
) -> np.ndarray:
    """The model's input matrix: stored features, then on-demand features, then request values."""
    blocks = [stored] if on_demand is None or on_demand.shape[1] == 0 else [stored, on_demand]
    return np.ascontiguousarray(np.concatenate([*blocks, request_values], axis=1), np.float32)


def on_demand_problems(manifest: Manifest, live: Mapping[str, OnDemandLayout]) -> list[str]:
    """Why a package's on-demand views do not match the live FeatureService and this code.

    Checks, per view: it is still in the live service with the same outputs and request
    fields, this module implements it with the same function, whose source has not changed
    since training, and every stored input it reads is a model input.
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
        transform = TRANSFORMS.get(view)
        if transform is None:
            problems.append(f"on-demand view {view} has no implementation in {__name__}")
            continue
        if transform.reference != info.function:
            problems.append(
                f"on-demand view {view}: computed by {info.function} in training, "
                f"{transform.reference} here"
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
        {view: info.features for view, info in manifest.on_demand_views.items()},
        manifest.stored_features,
    )
