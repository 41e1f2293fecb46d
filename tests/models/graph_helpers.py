"""Helpers of the exported-graph tests: LightGBM's own answer, and a session of a graph."""

from __future__ import annotations

from collections.abc import Sequence

import lightgbm
import numpy as np
import onnx
import onnxruntime

from models.export import session
from models.lightgbm_dump import num_iteration


def predict_reference(booster: lightgbm.Booster, X: np.ndarray) -> np.ndarray:
    """LightGBM's own ``[1 - p, p]`` (float64) for float32 inputs, with the graph's iterations.

    The input is rounded to float32 first because that is what the ONNX graph receives.
    """
    x64 = np.asarray(X, dtype=np.float32).astype(np.float64)
    p = np.asarray(booster.predict(x64, num_iteration=num_iteration(booster)), dtype=np.float64)
    return np.stack([1.0 - p, p], axis=1)


def session_for(
    model: onnx.ModelProto,
    providers: Sequence[str] | None = None,
    intra_op_threads: int = 1,
) -> onnxruntime.InferenceSession:
    """A session of ``model`` with training's options (``models.export.session``).

    ``providers=None`` picks CUDA when the installed runtime offers it, with CPU fallback.
    """
    if providers is None:
        available = onnxruntime.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider",) if p in available]
        providers.append("CPUExecutionProvider")
    return session(model, intra_op_threads, providers)
