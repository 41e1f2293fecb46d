"""Compile a LightGBM binary classifier into an ONNX graph of standard-domain operators only.

The trees come from ``models.lightgbm_dump``; this module only builds the graph.

The TreeEnsemble operators (domain ``ai.onnx.ml``) that ``onnxmltools.convert_lightgbm`` emits
have no CUDA kernels in ONNX Runtime, so such a graph silently runs on the CPU even when the
CUDA execution provider is requested. :func:`compile_booster` reads ``Booster.dump_model()``
and lowers the whole forest into a handful of default-domain operators (Gather, Less, MatMul,
Equal, ReduceSum, Sigmoid, ...) that the CUDA execution provider executes, batched over trees
so the node count does not grow with the number of trees.

Output layout matches the onnxmltools graph with ``zipmap=False``: a float32 ``[N, 2]`` tensor
``[1 - p, p]``, so the scoring service can swap one graph for the other.

Exactness (relative to ``booster.predict(X.astype(np.float32).astype(np.float64))``):

* LightGBM's predictor drops dense values with ``|x| <= kZeroThreshold`` (1e-35, stored as a
  float) before the trees see them, so those become exactly 0.0; the graph does the same.
* A numerical split sends ``x`` left iff ``x <= t`` with ``t`` a double. For float32 ``x`` that
  is equivalent to ``x <= t32`` where ``t32`` is the largest float32 not above ``t`` (and to
  ``x < nextafter(t32, +inf)``; ``models.thresholds``), so every comparison is done exactly
  in float32.
  ``dump_model()`` writes infinite thresholds (LightGBM uses ``+inf`` for "NaN vs. the rest"
  splits) as ``+-1e300``; they are read back as ``+-inf``.
* Missing values follow ``Tree::NumericalDecision``: with missing type ``NaN`` a NaN takes the
  default direction; with ``Zero`` both NaN and 0.0 take it; with ``None`` a NaN is compared as
  0.0. Every node is compiled to one strict ``Less`` on a possibly negated, possibly
  zero-as-NaN copy of its feature, chosen so that NaN (false for any comparison) lands on the
  side LightGBM sends it to.
* ``gemm`` finds the leaf with MatMuls whose operands are 0/+-1 and small integers, exact in
  float32 and also in the TF32 mode the CUDA provider may use (hence at most 2048 leaves).
  ``traversal`` only gathers and compares.
* Leaf values are kept as float64 and summed over trees in float64, then the sigmoid
  ``1 / (1 + exp(-sigmoid * raw))`` is applied in float64; only the final probabilities are
  rounded to float32. The result agrees with LightGBM up to float64 summation order and that
  final rounding.

Iterations: the graph uses ``booster.best_iteration`` trees when it is positive (as
``Booster.predict`` does by default), otherwise all trees. ``boosting="rf"`` models
(``average_output``) are averaged over the iterations used, as LightGBM does.

Not supported (``ValueError``): objectives other than ``binary`` (multiclass, regression,
ranking, ``cross_entropy``), categorical splits and linear trees.

Why one module of this length: the graph builder and its float32 exactness argument are one
lowering; the dump reader is ``models.lightgbm_dump`` and the test helpers live in the tests.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import lightgbm
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from models.lightgbm_dump import MISSING_NONE, MISSING_ZERO, Forest, Tree, parse_booster
from models.thresholds import float32_floor

__all__ = ["K_ZERO_THRESHOLD", "Strategy", "compile_booster"]

# LightGBM's kZeroThreshold is declared as the float literal 1e-35f.
K_ZERO_THRESHOLD = np.float32(1e-35)

# Leaf numbers pass through a float32 MatMul, which the CUDA provider may run in TF32 (11
# significant bits): keep them exact.
_GEMM_MAX_LEAVES = 2048
_AXIS_0 = np.array([0], dtype=np.int64)
_AXIS_1 = np.array([1], dtype=np.int64)

Strategy = Literal["gemm", "traversal"]


# Input variants a split can compare against (bit flags). Each variant is a [F, N] block of the
# extended input; a split reads row ``block * F + feature``.
_ZERO_AS_NAN = 1  # 0.0 replaced by NaN (missing type Zero)
_NEGATED = 2  # -x, for splits whose NaN goes left
_CLAMP_POS_INF = 4  # +inf replaced by the largest float32, for splits with threshold +inf


@dataclass(frozen=True)
class _CompiledSplits:
    """Per-split constants: ``cond = Less(variant(x)[feature], bound)``; ``cond`` true means go
    left iff ``cond_is_left``. Row numbers into the extended input are assigned later."""

    feature: np.ndarray  # int64
    variant: np.ndarray  # int64 bit flags
    bound: np.ndarray  # float32
    cond_is_left: np.ndarray  # bool


def _compile_splits(tree: Tree) -> _CompiledSplits:
    t32 = float32_floor(tree.threshold)
    # Where LightGBM sends a NaN: None compares it as 0.0, Zero/NaN use default_left.
    nan_left = np.where(tree.missing_type == MISSING_NONE, tree.threshold >= 0.0, tree.default_left)
    # NaN makes Less false. Splits whose NaN goes right test "x <= t32" as "x < next_up(t32)"
    # (true = left); splits whose NaN goes left test "x > t32" as "-x < -t32" (true = right).
    with np.errstate(over="ignore"):
        above = np.nextafter(t32, np.float32(np.inf))
    bound = np.where(nan_left, -t32, above).astype(np.float32)
    # "x <= +inf" has no strict form that also holds for x = +inf; clamp +inf instead.
    clamp = ~nan_left & (t32 == np.float32(np.inf))
    variant = (
        np.where(tree.missing_type == MISSING_ZERO, _ZERO_AS_NAN, 0)
        | np.where(nan_left, _NEGATED, 0)
        | np.where(clamp, _CLAMP_POS_INF, 0)
    ).astype(np.int64)
    return _CompiledSplits(
        feature=tree.feature, variant=variant, bound=bound, cond_is_left=~nan_left
    )


class _GraphBuilder:
    """Small helper collecting nodes and initializers with unique names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, value: np.ndarray | np.generic, hint: str) -> str:
        """Add an initializer; returns its name."""
        name = self._name(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(
        self,
        op_type: str,
        inputs: Sequence[str],
        hint: str | None = None,
        output: str | None = None,
        **attrs: Any,
    ) -> str:
        """Add a single-output node; returns the output name."""
        out = output or self._name(hint or op_type.lower())
        self.nodes.append(
            helper.make_node(op_type, list(inputs), [out], name=self._name(op_type), **attrs)
        )
        return out


def _extended_input(g: _GraphBuilder, x: str, variants: Sequence[int]) -> str:
    """Build the [len(variants) * F, N] float32 tensor of input variants, in the given order."""
    xt = g.op("Transpose", [x], "x_t", perm=[1, 0])
    # LightGBM's dense predictor drops |x| <= kZeroThreshold, i.e. treats it as exactly 0.
    tiny = g.op(
        "LessOrEqual", [g.op("Abs", [xt], "abs_x"), g.const(K_ZERO_THRESHOLD, "kzero")], "tiny"
    )
    zero = g.const(np.float32(0.0), "zero_f")
    plain = g.op("Where", [tiny, zero, xt], "x_plain")
    cache: dict[int, str] = {0: plain}

    def build(variant: int) -> str:
        if variant in cache:
            return cache[variant]
        if variant & _NEGATED:
            out = g.op("Neg", [build(variant & ~_NEGATED)], "x_neg")
        elif variant & _CLAMP_POS_INF:
            base = build(variant & ~_CLAMP_POS_INF)
            is_inf = g.op("Equal", [base, g.const(np.float32(np.inf), "inf_f")], "is_inf")
            largest = g.const(np.finfo(np.float32).max, "max_f")
            out = g.op("Where", [is_inf, largest, base], "x_clamped")
        else:  # _ZERO_AS_NAN
            is_zero = g.op("Equal", [plain, zero], "is_zero")
            out = g.op("Where", [is_zero, g.const(np.float32(np.nan), "nan_f"), plain], "x_znan")
        cache[variant] = out
        return out

    blocks = [build(v) for v in variants]
    return blocks[0] if len(blocks) == 1 else g.op("Concat", blocks, "x_ext", axis=0)


def _gemm_scores(
    g: _GraphBuilder,
    forest: Forest,
    compiled: Sequence[_CompiledSplits],
    split_rows: Sequence[np.ndarray],
    x_ext: str,
) -> tuple[str, str]:
    """Hummingbird-style GEMM evaluation, batched over trees.

    Returns the [T, N] float64 leaf values and the [T, N] int64 leaf indices.
    """
    trees = forest.trees
    num_trees = len(trees)
    max_internal = max(1, max(t.num_internal for t in trees))
    max_leaves = max(t.num_leaves for t in trees)
    if max_leaves > _GEMM_MAX_LEAVES:
        raise ValueError(
            f"strategy 'gemm' supports at most {_GEMM_MAX_LEAVES} leaves per tree "
            f"(this model has {max_leaves}); use strategy='traversal'"
        )

    rows = np.zeros((num_trees, max_internal), dtype=np.int64)
    bounds = np.zeros((num_trees, max_internal, 1), dtype=np.float32)
    # path[t, leaf, node] = +1 if the leaf needs cond(node) true, -1 if false, 0 if off-path.
    path = np.zeros((num_trees, max_leaves, max_internal), dtype=np.int8)
    # required[t, leaf] = number of +1 entries; padded leaves get 1 so they are never reached.
    required = np.ones((num_trees, max_leaves, 1), dtype=np.float32)
    values = np.zeros((num_trees, max_leaves), dtype=np.float64)
    for t, (tree, splits) in enumerate(zip(trees, compiled, strict=True)):
        n_int = tree.num_internal
        rows[t, :n_int] = split_rows[t]
        bounds[t, :n_int, 0] = splits.bound
        for leaf, decisions in enumerate(tree.leaf_paths()):
            needed = 0
            for node, went_left in decisions:
                want_true = went_left == bool(splits.cond_is_left[node])
                path[t, leaf, node] = 1 if want_true else -1
                needed += int(want_true)
            required[t, leaf, 0] = needed
        values[t, : tree.num_leaves] = tree.leaf_value

    gathered = g.op("Gather", [x_ext, g.const(rows, "split_rows")], "x_split", axis=0)
    cond = g.op("Less", [gathered, g.const(bounds, "split_bounds")], "cond")
    cond_f = g.op("Cast", [cond], "cond_f", to=TensorProto.FLOAT)
    # Stored as int8 to keep the file small; ORT folds this Cast at session creation.
    path_f = g.op("Cast", [g.const(path, "leaf_paths")], "leaf_paths_f", to=TensorProto.FLOAT)
    # Entries are 0/±1 and sums are small integers: exact in float32 (and in TF32).
    agree = g.op("MatMul", [path_f, cond_f], "agree")  # [T, L, N]
    # agree == required only at the reached leaf (elsewhere agree <= required - 1).
    reached = g.op("Equal", [agree, g.const(required, "leaf_required")], "reached")
    one_hot = g.op("Cast", [reached], "one_hot", to=TensorProto.FLOAT)  # [T, L, N]
    # Leaf number = sum(l * one_hot[l]); integers below 2048 are exact even in TF32.
    numbers = np.broadcast_to(
        np.arange(max_leaves, dtype=np.float32), (num_trees, 1, max_leaves)
    ).copy()
    leaf_f = g.op("MatMul", [g.const(numbers, "leaf_numbers"), one_hot], "leaf_f")  # [T, 1, N]
    leaf_index = g.op(
        "Squeeze",
        [g.op("Cast", [leaf_f], "leaf_i", to=TensorProto.INT64), g.const(_AXIS_1, "axis_1")],
        "leaf",
    )  # [T, N]
    offsets = (np.arange(num_trees, dtype=np.int64) * max_leaves).reshape(num_trees, 1)
    flat = g.op("Add", [leaf_index, g.const(offsets, "leaf_offsets")], "leaf_flat")
    values_c = g.const(values.reshape(-1), "leaf_values")
    scores = g.op("Gather", [values_c, flat], "tree_scores", axis=0)
    return scores, leaf_index


def _traversal_scores(
    g: _GraphBuilder,
    forest: Forest,
    compiled: Sequence[_CompiledSplits],
    split_rows: Sequence[np.ndarray],
    x_ext: str,
) -> tuple[str, str]:
    """Depth-iterated gather traversal, batched over trees.

    Returns the [T, N] float64 leaf values and the [T, N] int64 leaf indices.
    """
    # Per-tree node tables [T, M], laid out breadth-first so that the two children of a split
    # are adjacent: [child when cond is false, child when cond is true]. The next node is then
    # first_child + cond. Leaves (and padding) point at themselves with a bound (-inf) that no
    # value is below, so extra levels leave finished rows in place. Lookups use GatherElements
    # along the node axis: out[t, n] = table[t, node[t, n]].
    num_trees = len(forest.trees)
    width = max(t.num_internal + t.num_leaves for t in forest.trees)
    row_tbl = np.zeros((num_trees, width), dtype=np.int64)
    bound_tbl = np.full((num_trees, width), -np.inf, dtype=np.float32)
    first_tbl = np.tile(np.arange(width, dtype=np.int64), (num_trees, 1))
    value_tbl = np.zeros((num_trees, width), dtype=np.float64)
    leaf_tbl = np.full((num_trees, width), -1, dtype=np.int64)
    depth = 0
    for t, (tree, splits, split_row) in enumerate(
        zip(forest.trees, compiled, split_rows, strict=True)
    ):
        queue: collections.deque[int] = collections.deque([0 if tree.num_internal else ~0])
        node_id = 0
        while queue:
            ref = queue.popleft()
            if ref < 0:
                value_tbl[t, node_id] = tree.leaf_value[~ref]
                leaf_tbl[t, node_id] = ~ref
            else:
                # The children get the next two free ids, after everything already queued.
                first_tbl[t, node_id] = node_id + len(queue) + 1
                row_tbl[t, node_id] = split_row[ref]
                bound_tbl[t, node_id] = splits.bound[ref]
                left, right = int(tree.left[ref]), int(tree.right[ref])
                queue.extend((right, left) if splits.cond_is_left[ref] else (left, right))
            node_id += 1
        depth = max(depth, max((len(p) for p in tree.leaf_paths()), default=0))

    # Level 0: every row sits at its tree's root, so the lookups are constants.
    x0 = g.op("Gather", [x_ext, g.const(row_tbl[:, 0], "root_rows")], "x_root", axis=0)
    cond0 = g.op("Less", [x0, g.const(bound_tbl[:, :1], "root_bounds")])
    step0 = g.op("Cast", [cond0], "step", to=TensorProto.INT64)
    node = g.op("Add", [g.const(first_tbl[:, :1], "root_first"), step0], "node")  # [T, N]
    if depth > 1:
        row_c = g.const(row_tbl, "node_rows")
        bound_c = g.const(bound_tbl, "node_bounds")
        first_c = g.const(first_tbl, "node_first_child")
        for _ in range(depth - 1):
            row = g.op("GatherElements", [row_c, node], "row", axis=1)
            x = g.op("GatherElements", [x_ext, row], "x", axis=0)  # x[t, n] = x_ext[row, n]
            bound = g.op("GatherElements", [bound_c, node], "bound", axis=1)
            step = g.op("Cast", [g.op("Less", [x, bound])], "step", to=TensorProto.INT64)
            first = g.op("GatherElements", [first_c, node], "first", axis=1)
            node = g.op("Add", [first, step], "node")
    values_c = g.const(value_tbl, "node_values")
    scores = g.op("GatherElements", [values_c, node], "tree_scores", axis=1)
    # Only computed when the leaf output is requested (unused nodes are pruned below).
    leaf_c = g.const(leaf_tbl, "node_leaf_number")
    return scores, g.op("GatherElements", [leaf_c, node], "leaf", axis=1)


def _prune(
    g: _GraphBuilder, outputs: Sequence[str]
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Drop nodes and initializers that no graph output depends on."""
    needed = set(outputs)
    kept: list[onnx.NodeProto] = []
    for node in reversed(g.nodes):
        if needed.intersection(node.output):
            kept.append(node)
            needed.update(node.input)
    kept.reverse()
    return kept, [t for t in g.initializers if t.name in needed]


def compile_booster(
    booster: lightgbm.Booster,
    *,
    input_name: str = "features",
    output_name: str = "probabilities",
    opset: int = 17,
    strategy: Strategy = "gemm",
    leaf_output_name: str | None = None,
) -> onnx.ModelProto:
    """Compile a binary LightGBM booster into an ONNX model of standard-domain operators.

    Input ``input_name``: float32 ``[N, F]`` (``N`` dynamic, ``F = max_feature_idx + 1``).
    Output ``output_name``: float32 ``[N, 2]`` holding ``[1 - p, p]``, the layout of the
    onnxmltools TreeEnsemble graph with ``zipmap=False``.

    ``strategy="gemm"`` evaluates every split of every tree and finds the leaf with two batched
    matrix products (work ~ trees x splits x leaves per row, good for shallow trees and GPUs);
    ``"traversal"`` walks the trees level by level with gathers (work ~ trees x depth per row).
    Both give identical results. Uses ``booster.best_iteration`` trees when positive, else all.

    ``leaf_output_name`` adds a second output, int64 ``[N, T]``, with the leaf each row reaches in
    each tree: the same numbers as ``booster.predict(X, pred_leaf=True)``, for debugging.

    Raises ``ValueError`` for non-binary objectives, categorical splits, linear trees, an opset
    below 13, or ``gemm`` with more than 2048 leaves in a tree.
    """
    if opset < 13:
        raise ValueError("opset must be >= 13 (ReduceSum takes axes as an input from opset 13)")
    if strategy not in ("gemm", "traversal"):
        raise ValueError(f"unknown strategy {strategy!r}")
    forest = parse_booster(booster)

    g = _GraphBuilder()
    compiled = [_compile_splits(t) for t in forest.trees]
    variants = sorted({0}.union(*(c.variant.tolist() for c in compiled)))
    x_ext = _extended_input(g, input_name, variants)
    block = {v: i for i, v in enumerate(variants)}
    rows = [
        np.array([block[v] for v in c.variant.tolist()], dtype=np.int64) * forest.num_features
        + c.feature
        for c in compiled
    ]
    scores = _gemm_scores if strategy == "gemm" else _traversal_scores
    tree_scores, leaf = scores(g, forest, compiled, rows, x_ext)

    # Sum in float64 like LightGBM's predictor, then its sigmoid transform.
    raw = g.op(
        "ReduceSum",
        [tree_scores, g.const(_AXIS_0, "axis_0")],
        "raw_score",
        keepdims=0,
    )
    if forest.average_output:
        raw = g.op(
            "Div", [raw, g.const(np.float64(len(forest.trees)), "num_iterations")], "raw_avg"
        )
    scaled = g.op("Mul", [raw, g.const(np.float64(forest.sigmoid), "sigmoid_scale")], "scaled")
    p = g.op("Sigmoid", [scaled], "p64")
    p_col = g.op("Unsqueeze", [p, g.const(_AXIS_1, "axis_1")], "p_col")
    q_col = g.op("Sub", [g.const(np.float64(1.0), "one_d"), p_col], "q_col")
    both = g.op("Concat", [q_col, p_col], "proba64", axis=1)
    g.op("Cast", [both], output=output_name, to=TensorProto.FLOAT)
    outputs = [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["N", 2])]
    if leaf_output_name is not None:
        g.op("Transpose", [leaf], output=leaf_output_name, perm=[1, 0])
        outputs.append(
            helper.make_tensor_value_info(
                leaf_output_name, TensorProto.INT64, ["N", len(forest.trees)]
            )
        )
    nodes, initializers = _prune(g, [o.name for o in outputs])

    graph = helper.make_graph(
        nodes,
        "lightgbm_binary_standard_ops",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", forest.num_features])],
        outputs,
        initializer=initializers,
    )
    opset_ids = [helper.make_opsetid("", opset)]
    model = helper.make_model(
        graph,
        opset_imports=opset_ids,
        # Lowest IR version for the opset, so older runtimes can still load the model.
        ir_version=helper.find_min_ir_version_for(opset_ids),
        producer_name="fraud-scoring-platform",
        doc_string=(
            f"LightGBM binary classifier, {len(forest.trees)} trees, strategy={strategy}; "
            "output [1-p, p]"
        ),
    )
    onnx.checker.check_model(model, full_check=True)
    return model
