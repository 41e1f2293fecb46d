"""ONNX export: the TreeEnsemble graph for the CPU and a standard-operator graph for GPUs.

Both graphs take ``features`` float32 [N, F] and give ``probabilities`` float32 [N, 2]. Neither
is published unless it matches LightGBM's own prediction within ``PARITY_TOLERANCE`` on the
rows it is checked on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import lightgbm as lgb
import numpy as np
import onnx
import onnxmltools
import onnxruntime as ort
from onnxmltools.convert.common.data_types import FloatTensorType

from models.lightgbm_dump import tree_split_thresholds
from models.standard_graph import compile_booster
from models.thresholds import float32_floor

logger = logging.getLogger(__name__)

INPUT_NAME = "features"
OUTPUT_NAME = "probabilities"
PARITY_TOLERANCE = 1e-5
# Highest default-domain opset onnxmltools' LightGBM converter emits.
TREE_ENSEMBLE_OPSET = 15


class ParityError(RuntimeError):
    """An exported graph disagrees with LightGBM beyond the tolerance."""


def tree_ensemble_graph(booster: lgb.Booster, n_features: int) -> onnx.ModelProto:
    """The ai.onnx.ml TreeEnsemble graph (fastest on CPU for small batches)."""
    model = onnxmltools.convert_lightgbm(
        booster,
        initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
        zipmap=False,
        target_opset=TREE_ENSEMBLE_OPSET,
    )
    # The converter declares the label output as shape [1]; make both outputs batch-sized so
    # ONNX Runtime does not warn on every call with N > 1.
    for output in model.graph.output:
        dims = output.type.tensor_type.shape.dim
        if dims:
            dims[0].ClearField("dim_value")
            dims[0].dim_param = "N"
    _round_thresholds_down(model, booster)
    model.doc_string = "LightGBM binary classifier, ai.onnx.ml TreeEnsemble"
    onnx.checker.check_model(model)
    return model


def _round_thresholds_down(model: onnx.ModelProto, booster: lgb.Booster) -> None:
    """Replace the converter's nearest-float32 thresholds by float32-at-or-below ones.

    LightGBM compares float32 inputs (as doubles) with double thresholds. The converter stores
    thresholds rounded to the nearest float32; when that rounds up onto an input value, the
    input goes left in ONNX and right in LightGBM. Rounding down (``models.thresholds``, as the
    standard-operator graph does) makes the comparisons agree for every float32 input.
    Thresholds are matched within their tree: trees boosted on other data (a model family's
    members continue the global model's trees) may hold thresholds on either side of one float32.
    """
    lookup: dict[tuple[int, int, float], np.float32] = {}
    for tree, per_feature in enumerate(tree_split_thresholds(booster)):
        for feature, thresholds in per_feature.items():
            doubles = np.asarray(thresholds, dtype=np.float64)
            with np.errstate(over="ignore"):  # 1e300 ("above every value") rounds to inf
                nearest = doubles.astype(np.float32)
            for near, down in zip(nearest.tolist(), float32_floor(doubles), strict=True):
                key = (tree, feature, float(near))
                if key in lookup and lookup[key] != down:
                    raise ParityError(
                        f"tree {tree}, feature {feature}: two thresholds share float32 "
                        f"{key[2]!r} but round down differently; the TreeEnsemble graph "
                        "cannot be exact"
                    )
                lookup[key] = down
    for node in model.graph.node:
        if node.op_type not in ("TreeEnsembleClassifier", "TreeEnsembleRegressor"):
            continue
        attrs = {a.name: a for a in node.attribute}
        features = list(attrs["nodes_featureids"].ints)
        trees = list(attrs["nodes_treeids"].ints)
        modes = list(attrs["nodes_modes"].strings)
        values = attrs["nodes_values"].floats
        for i, (feature, mode) in enumerate(zip(features, modes, strict=True)):
            if mode == b"LEAF":
                continue
            if mode != b"BRANCH_LEQ":
                raise ParityError(f"unexpected split mode {mode!r} in the converted graph")
            key = (trees[i], feature, float(np.float32(values[i])))
            if key not in lookup:
                raise ParityError(
                    f"threshold {values[i]!r} of feature {feature} is not in tree {trees[i]} "
                    "of the booster"
                )
            values[i] = float(lookup[key])


def standard_ops_graph(booster: lgb.Booster) -> onnx.ModelProto:
    """The same trees as default-domain tensor operators, runnable by the CUDA provider."""
    model = compile_booster(booster, input_name=INPUT_NAME, output_name=OUTPUT_NAME)
    onnx.checker.check_model(model)
    return model


def session_options(intra_op_threads: int = 1) -> ort.SessionOptions:
    """The ONNX Runtime options of every session training opens (parity checks, tests).

    The same settings as the service's sessions (``scoring_service.stages.predictor``, which this
    layer may not import): one thread per call, sequential, all graph optimizations.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def session(
    model: onnx.ModelProto | bytes,
    intra_op_threads: int = 1,
    providers: Sequence[str] = ("CPUExecutionProvider",),
) -> ort.InferenceSession:
    """A session of an exported graph (on the CPU unless ``providers`` says otherwise)."""
    payload = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(
        payload, session_options(intra_op_threads), providers=list(providers)
    )


def onnx_probability(sess: ort.InferenceSession, features: np.ndarray) -> np.ndarray:
    """Probability of the positive class (class 1) from an exported graph."""
    (probabilities,) = sess.run([OUTPUT_NAME], {INPUT_NAME: features.astype(np.float32)})
    return probabilities[:, 1].astype(np.float64)


def check_parity(
    booster: lgb.Booster, model: onnx.ModelProto, features: np.ndarray, what: str
) -> float:
    """Max |ONNX - LightGBM| on the given float32 rows; raises ParityError past tolerance."""
    features = np.ascontiguousarray(features, dtype=np.float32)
    expected = booster.predict(features.astype(np.float64))
    actual = onnx_probability(session(model), features)
    max_diff = float(np.max(np.abs(actual - expected))) if len(features) else 0.0
    logger.info("parity %s: max |diff| = %.3g on %d rows", what, max_diff, len(features))
    if not max_diff <= PARITY_TOLERANCE:
        raise ParityError(
            f"{what}: ONNX and LightGBM differ by {max_diff:.3g} "
            f"(> {PARITY_TOLERANCE}); the package is not published"
        )
    return max_diff


def with_planted_nans(features: np.ndarray, seed: int = 0, share: float = 0.2) -> np.ndarray:
    """Copy of the rows with a share of values replaced by NaN (unknown entities)."""
    rng = np.random.default_rng(seed)
    planted = features.astype(np.float32, copy=True)
    planted[rng.random(planted.shape) < share] = np.nan
    if len(planted):
        planted[0, :] = np.nan  # one row with nothing known at all
    return planted
