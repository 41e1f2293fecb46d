"""The on-demand transform contract: one implementation for training and serving.

A domain's on-demand feature views (``mode="python"``) call plain functions of the domain's
``transforms`` module. Feast runs them inside ``get_historical_features``; the scoring service
runs the same functions on the stored features it has just read and the request's fields. Each
function is declared with :func:`on_demand_transform`, which records what it reads and returns;
a model package stores the function's ``module:function`` reference and the sha256 of its source,
and the service refuses a package whose function has changed since training.

Functions take a mapping of column -> sequence (Feast's python-mode batch format: lists with
None for missing values; the service passes numpy columns) and return column -> list of float
or None. Numeric inputs are rounded to float32 first: serving reads stored features as float32
while training gets float64 from the offline store, and rounding both sides makes the same
inputs give bit-identical outputs.

Feast imports this module inside feature repositories: numpy only.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# Column name -> values: lists from Feast (None when missing), numpy columns from the service.
Columns = Mapping[str, Sequence[Any] | np.ndarray]
TransformFunction = Callable[[Columns], dict[str, list[float | None]]]


@dataclass(frozen=True)
class OnDemandTransform:
    """An on-demand feature view's computation: what it reads and what it returns."""

    function: TransformFunction
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


_ATTRIBUTE = "__on_demand_transform__"


def on_demand_transform(
    *, request_fields: Sequence[str], stored_inputs: Sequence[str], outputs: Sequence[str]
) -> Callable[[TransformFunction], TransformFunction]:
    """Declare a function as an on-demand transform (its inputs and outputs)."""

    def register(function: TransformFunction) -> TransformFunction:
        setattr(
            function,
            _ATTRIBUTE,
            OnDemandTransform(
                function, tuple(request_fields), tuple(stored_inputs), tuple(outputs)
            ),
        )
        return function

    return register


def resolve(reference: str) -> OnDemandTransform:
    """The transform behind a ``module:function`` reference; ValueError naming what is wrong."""
    module_name, _, name = reference.partition(":")
    if not module_name or not name:
        raise ValueError(f"{reference!r} is not a `module:function` reference")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"module {module_name!r} of transform {reference} cannot be imported"
        ) from exc
    function = getattr(module, name, None)
    transform = getattr(function, _ATTRIBUTE, None)
    if not isinstance(transform, OnDemandTransform):
        raise ValueError(f"{reference} is not a declared on-demand transform")
    return transform


# --- numeric helpers the domains' transforms share ---------------------------------------------


def numbers(values: Sequence[Any] | np.ndarray) -> np.ndarray:
    """float32-rounded values as float64, NaN where missing (None or NaN)."""
    return np.asarray(values, dtype=np.float32).astype(np.float64)


def texts(values: Sequence[Any] | np.ndarray) -> list[str | None]:
    """Values as text, None where missing (None or NaN)."""
    return [None if v is None or (isinstance(v, float) and v != v) else str(v) for v in values]


def ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator; NaN when either is missing or the denominator is not > 0."""
    out = np.full(len(numerator), np.nan)
    ok = (denominator > 0) & ~np.isnan(numerator)
    np.divide(numerator, denominator, out=out, where=ok)
    return out


def listed(values: np.ndarray) -> list[float | None]:
    """A float column as Feast's python-mode list (None for NaN)."""
    return [None if np.isnan(v) else float(v) for v in values]


def model_input(
    stored: np.ndarray, on_demand: np.ndarray | None, request_values: np.ndarray
) -> np.ndarray:
    """The model's input matrix: stored features, then on-demand features, then request values."""
    blocks = [stored] if on_demand is None or on_demand.shape[1] == 0 else [stored, on_demand]
    return np.ascontiguousarray(np.concatenate([*blocks, request_values], axis=1), np.float32)
