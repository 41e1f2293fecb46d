"""Read a LightGBM binary booster from ``Booster.dump_model()``: its trees in array form.

The ONNX builders need the trees, not LightGBM: :func:`parse_booster` gives each tree's splits
(feature, double threshold, missing type, default direction, children) and leaf values, and
:func:`split_thresholds` every split threshold per feature. ``dump_model()`` writes infinite
thresholds as ``+-1e300`` (``Common::AvoidInf``); :func:`parse_booster` reads them back as
``+-inf``, the values the model compares against.

Only binary models with numerical, constant-leaf trees are read; anything else is a
``ValueError`` naming what is unsupported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightgbm
import numpy as np

# dump_model() clamps thresholds to [-1e300, 1e300] (Common::AvoidInf).
_JSON_INF = 1e300

MISSING_TYPES = {"None": 0, "Zero": 1, "NaN": 2}
"""``missing_type`` of a split as the int8 code a ``Tree`` holds."""
MISSING_NONE, MISSING_ZERO, MISSING_NAN = (MISSING_TYPES[k] for k in ("None", "Zero", "NaN"))


@dataclass(frozen=True)
class Tree:
    """One tree in LightGBM's array form.

    Internal nodes are numbered ``0..num_internal-1`` (root is 0 when there is at least one
    split); a child index ``c < 0`` denotes leaf ``~c``.
    """

    feature: np.ndarray  # int64 [I]
    threshold: np.ndarray  # float64 [I]
    missing_type: np.ndarray  # int8 [I], 0=None 1=Zero 2=NaN
    default_left: np.ndarray  # bool [I]
    left: np.ndarray  # int64 [I]
    right: np.ndarray  # int64 [I]
    leaf_value: np.ndarray  # float64 [L]

    @property
    def num_internal(self) -> int:
        """Number of split nodes."""
        return int(self.feature.shape[0])

    @property
    def num_leaves(self) -> int:
        """Number of leaves."""
        return int(self.leaf_value.shape[0])

    def leaf_paths(self) -> list[list[tuple[int, bool]]]:
        """For each leaf, the ``(node, went_left)`` decisions on its path from the root."""
        paths: list[list[tuple[int, bool]]] = [[] for _ in range(self.num_leaves)]
        if self.num_internal == 0:
            return paths
        stack: list[tuple[int, list[tuple[int, bool]]]] = [(0, [])]
        while stack:
            node, path = stack.pop()
            for child, went_left in ((int(self.left[node]), True), (int(self.right[node]), False)):
                child_path = [*path, (node, went_left)]
                if child < 0:
                    paths[~child] = child_path
                else:
                    stack.append((child, child_path))
        return paths


@dataclass(frozen=True)
class Forest:
    """The part of a LightGBM binary model that prediction needs."""

    num_features: int
    trees: tuple[Tree, ...]
    sigmoid: float
    average_output: bool


def _objective_sigmoid(objective: str) -> float:
    tokens = objective.split()
    if not tokens or tokens[0] != "binary":
        raise ValueError(f"only the 'binary' objective is supported, the booster has {objective!r}")
    sigmoid = 1.0
    for token in tokens[1:]:
        key, _, value = token.partition(":")
        if key == "sigmoid":
            sigmoid = float(value)
    if not np.isfinite(sigmoid) or sigmoid <= 0:
        raise ValueError(f"invalid sigmoid parameter in objective {objective!r}")
    return sigmoid


def _parse_tree(info: dict[str, Any]) -> Tree:
    if int(info.get("num_cat", 0)) > 0:
        raise ValueError(f"tree {info.get('tree_index')} has categorical splits (unsupported)")
    root = info["tree_structure"]
    feature: list[int] = []
    threshold: list[float] = []
    missing: list[int] = []
    default_left: list[bool] = []
    left: list[int] = []
    right: list[int] = []
    leaf_value: dict[int, float] = {}

    def child_ref(child: dict[str, Any]) -> int:
        return ~int(child["leaf_index"]) if "leaf_index" in child else int(child["split_index"])

    if "split_index" not in root:
        if "leaf_coeff" in root:
            raise ValueError("linear trees are not supported")
        leaf_value[0] = float(root["leaf_value"])
    else:
        # Iterative walk: deep trees must not hit Python's recursion limit.
        nodes: dict[int, dict[str, Any]] = {}
        stack = [root]
        while stack:
            node = stack.pop()
            if "split_index" in node:
                nodes[int(node["split_index"])] = node
                stack.extend((node["left_child"], node["right_child"]))
            else:
                if "leaf_coeff" in node:
                    raise ValueError("linear trees are not supported")
                leaf_value[int(node["leaf_index"])] = float(node["leaf_value"])
        if sorted(nodes) != list(range(len(nodes))) or int(root["split_index"]) != 0:
            raise ValueError("unexpected split numbering in dump_model() output")
        for index in range(len(nodes)):
            node = nodes[index]
            if node["decision_type"] != "<=":
                raise ValueError(
                    f"split decision {node['decision_type']!r} is not supported "
                    "(categorical splits are not supported)"
                )
            t = float(node["threshold"])
            if np.isnan(t):
                raise ValueError("NaN split threshold")
            if abs(t) >= _JSON_INF:
                # dump_model() writes infinite thresholds (e.g. "NaN vs. the rest" splits) as
                # +-1e300; the model itself compares against +-inf, which matters for x = +-inf.
                t = float(np.copysign(np.inf, t))
            feature.append(int(node["split_feature"]))
            threshold.append(t)
            missing.append(MISSING_TYPES[str(node["missing_type"])])
            default_left.append(bool(node["default_left"]))
            left.append(child_ref(node["left_child"]))
            right.append(child_ref(node["right_child"]))
    if sorted(leaf_value) != list(range(len(leaf_value))):
        raise ValueError("unexpected leaf numbering in dump_model() output")
    return Tree(
        feature=np.asarray(feature, dtype=np.int64),
        threshold=np.asarray(threshold, dtype=np.float64),
        missing_type=np.asarray(missing, dtype=np.int8),
        default_left=np.asarray(default_left, dtype=bool),
        left=np.asarray(left, dtype=np.int64),
        right=np.asarray(right, dtype=np.int64),
        leaf_value=np.asarray([leaf_value[i] for i in range(len(leaf_value))], dtype=np.float64),
    )


def num_iteration(booster: lightgbm.Booster) -> int | None:
    """Iterations prediction uses: ``best_iteration`` when positive, else None (all trees)."""
    best = int(getattr(booster, "best_iteration", 0) or 0)
    return best if best > 0 else None


def parse_booster(booster: lightgbm.Booster) -> Forest:
    """Read the trees of a binary LightGBM booster from ``dump_model()``.

    Uses ``booster.best_iteration`` trees when positive, otherwise all trees. Raises
    ``ValueError`` for anything other than a binary model with numerical, constant-leaf trees.
    """
    used = num_iteration(booster)
    dump = booster.dump_model(num_iteration=-1 if used is None else used)
    sigmoid = _objective_sigmoid(str(dump.get("objective", "")))
    if int(dump.get("num_class", 1)) != 1 or int(dump.get("num_tree_per_iteration", 1)) != 1:
        raise ValueError("multiclass models are not supported")
    trees = tuple(_parse_tree(info) for info in dump["tree_info"])
    if not trees:
        raise ValueError("the booster has no trees")
    return Forest(
        num_features=int(dump["max_feature_idx"]) + 1,
        trees=trees,
        sigmoid=sigmoid,
        average_output=bool(dump.get("average_output", False)),
    )


def split_thresholds(booster: lightgbm.Booster) -> dict[int, list[float]]:
    """Double-precision split thresholds of every feature, as ``dump_model()`` writes them."""
    out: dict[int, list[float]] = {}

    def walk(node: dict) -> None:
        if "split_feature" in node:
            out.setdefault(int(node["split_feature"]), []).append(float(node["threshold"]))
            walk(node["left_child"])
            walk(node["right_child"])

    for tree in booster.dump_model()["tree_info"]:
        walk(tree["tree_structure"])
    return out


def tree_split_thresholds(booster: lightgbm.Booster) -> list[dict[int, list[float]]]:
    """``split_thresholds`` of each tree, in the order ``dump_model()`` lists the trees."""
    out: list[dict[int, list[float]]] = []

    def walk(node: dict, into: dict[int, list[float]]) -> None:
        if "split_feature" in node:
            into.setdefault(int(node["split_feature"]), []).append(float(node["threshold"]))
            walk(node["left_child"], into)
            walk(node["right_child"], into)

    for tree in booster.dump_model()["tree_info"]:
        out.append({})
        walk(tree["tree_structure"], out[-1])
    return out
