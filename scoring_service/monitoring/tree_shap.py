"""Explanations: exact TreeSHAP contributions of each input to one answer's raw score.

The package carries LightGBM's own model text (``model.lgb.txt``, checksummed with the rest);
this module reads its trees and runs the path-dependent TreeSHAP algorithm (Lundberg et al.,
"Consistent individualized feature attribution for tree ensembles", Algorithm 2) over them, so
the service explains without LightGBM installed. The contributions plus the expected value sum
to the model's raw score (log-odds) exactly, up to floating-point rounding.

Traversal follows LightGBM's rules for numerical splits: ``value <= threshold`` goes left; a
missing value goes the default way when the split's missing type is NaN, and counts as 0
otherwise (missing type Zero sends 0 and NaN the default way). Categorical splits are refused:
the models here encode categories as numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_ZERO = 1e-35  # LightGBM's kZeroThreshold
_MISSING_NONE, _MISSING_ZERO, _MISSING_NAN = 0, 1, 2


@dataclass(frozen=True)
class Tree:
    """One tree: internal nodes 0..k-1, leaves k..k+m-1 (children >= k are leaves)."""

    feature: list[int]
    threshold: list[float]
    default_left: list[bool]
    missing_type: list[int]
    left: list[int]
    right: list[int]
    cover: list[float]  # per node (internal nodes then leaves)
    value: list[float]  # per node: leaf values (internal nodes: unused)
    internal: int  # number of internal nodes

    def goes_left(self, node: int, x: float) -> bool:
        """LightGBM's numerical decision at an internal node."""
        missing = self.missing_type[node]
        if math.isnan(x) and missing != _MISSING_NAN:
            x = 0.0
        if (missing == _MISSING_ZERO and abs(x) <= _ZERO) or (
            missing == _MISSING_NAN and math.isnan(x)
        ):
            return self.default_left[node]
        return x <= self.threshold[node]

    def predict(self, x: Sequence[float]) -> float:
        node = 0
        if self.internal == 0:
            return self.value[0]
        while node < self.internal:
            node = (
                self.left[node] if self.goes_left(node, x[self.feature[node]]) else self.right[node]
            )
        return self.value[node]

    def expected(self) -> float:
        """Cover-weighted mean of the leaf values: the tree's output with nothing known."""
        leaves = range(self.internal, len(self.value))
        total = sum(self.cover[i] for i in leaves)
        return sum(self.cover[i] * self.value[i] for i in leaves) / total


class TreeEnsemble:
    """The trees of a LightGBM binary model, read from its model text."""

    def __init__(self, trees: list[Tree], feature_names: list[str]) -> None:
        self.trees = trees
        self.feature_names = feature_names

    @classmethod
    def from_lightgbm_text(cls, text: str) -> TreeEnsemble:
        """Parse ``Booster.model_to_string()`` output."""
        header, _, body = text.partition("\nTree=")
        names: list[str] = []
        for line in header.splitlines():
            if line.startswith("feature_names="):
                names = line.split("=", 1)[1].split()
        trees = []
        for block in ("Tree=" + body).split("\nTree=")[0:]:
            fields = dict(line.split("=", 1) for line in block.strip().splitlines() if "=" in line)
            if "num_leaves" not in fields:
                continue
            trees.append(_tree(fields))
        if not trees:
            raise ValueError("no trees found in the LightGBM model text")
        return cls(trees, names)

    def raw_score(self, x: Sequence[float]) -> float:
        """Sum of the trees' outputs (log-odds for a binary model)."""
        return sum(tree.predict(x) for tree in self.trees)

    def expected_value(self) -> float:
        """The raw score with nothing known (sum of the trees' expected outputs)."""
        return sum(tree.expected() for tree in self.trees)

    def contributions(self, x: Sequence[float]) -> np.ndarray:
        """TreeSHAP value of each input for one row (float64 [n_features])."""
        phi = np.zeros(len(x) if not self.feature_names else len(self.feature_names))
        values = [float(v) for v in x]
        for tree in self.trees:
            if tree.internal:
                _recurse(tree, values, 0, [], 1.0, 1.0, -1, phi)
        return phi


def _tree(fields: dict[str, str]) -> Tree:
    leaves = int(fields["num_leaves"])
    leaf_value = [float(v) for v in fields["leaf_value"].split()]
    if leaves == 1:
        return Tree([], [], [], [], [], [], [1.0], leaf_value, 0)
    internal = leaves - 1
    decision = [int(v) for v in fields["decision_type"].split()]
    if any(d & 1 for d in decision):
        raise ValueError("categorical splits are not supported by the explainer")

    def child(raw: str) -> int:
        index = int(raw)
        return index if index >= 0 else internal + (-index - 1)

    return Tree(
        feature=[int(v) for v in fields["split_feature"].split()],
        threshold=[float(v) for v in fields["threshold"].split()],
        default_left=[bool(d & 2) for d in decision],
        missing_type=[(d >> 2) & 3 for d in decision],
        left=[child(v) for v in fields["left_child"].split()],
        right=[child(v) for v in fields["right_child"].split()],
        cover=[float(v) for v in fields["internal_count"].split()]
        + [float(v) for v in fields["leaf_count"].split()],
        value=[0.0] * internal + leaf_value,
        internal=internal,
    )


# --- path-dependent TreeSHAP; a path element is [feature, zero fraction, one fraction, weight] --


def _extend(path: list[list[float]], zero: float, one: float, feature: int) -> None:
    depth = len(path)
    path.append([feature, zero, one, 1.0 if depth == 0 else 0.0])
    for i in range(depth - 1, -1, -1):
        path[i + 1][3] += one * path[i][3] * (i + 1) / (depth + 1)
        path[i][3] = zero * path[i][3] * (depth - i) / (depth + 1)


def _unwind(path: list[list[float]], index: int) -> None:
    depth = len(path) - 1
    zero, one = path[index][1], path[index][2]
    carry = path[depth][3]
    for i in range(depth - 1, -1, -1):
        if one != 0:
            kept = path[i][3]
            path[i][3] = carry * (depth + 1) / ((i + 1) * one)
            carry = kept - path[i][3] * zero * (depth - i) / (depth + 1)
        else:
            path[i][3] = path[i][3] * (depth + 1) / (zero * (depth - i))
    for i in range(index, depth):
        path[i][0], path[i][1], path[i][2] = path[i + 1][0], path[i + 1][1], path[i + 1][2]
    path.pop()


def _unwound_sum(path: list[list[float]], index: int) -> float:
    depth = len(path) - 1
    zero, one = path[index][1], path[index][2]
    carry = path[depth][3]
    total = 0.0
    for i in range(depth - 1, -1, -1):
        if one != 0:
            part = carry * (depth + 1) / ((i + 1) * one)
            total += part
            carry = path[i][3] - part * zero * (depth - i) / (depth + 1)
        else:
            total += path[i][3] / zero * (depth + 1) / (depth - i)
    return total


def _recurse(
    tree: Tree,
    x: list[float],
    node: int,
    parent: list[list[float]],
    zero: float,
    one: float,
    feature: int,
    phi: np.ndarray,
) -> None:
    path = [list(element) for element in parent]
    _extend(path, zero, one, feature)
    if node >= tree.internal:  # a leaf
        value = tree.value[node]
        for i in range(1, len(path)):
            weight = _unwound_sum(path, i)
            phi[int(path[i][0])] += weight * (path[i][2] - path[i][1]) * value
        return
    split = tree.feature[node]
    left, right = tree.left[node], tree.right[node]
    hot, cold = (left, right) if tree.goes_left(node, x[split]) else (right, left)
    incoming_zero = incoming_one = 1.0
    for i in range(1, len(path)):
        if path[i][0] == split:  # split on this feature before: undo it, then redo it here
            incoming_zero, incoming_one = path[i][1], path[i][2]
            _unwind(path, i)
            break
    cover = tree.cover[node]
    _recurse(tree, x, hot, path, incoming_zero * tree.cover[hot] / cover, incoming_one, split, phi)
    _recurse(tree, x, cold, path, incoming_zero * tree.cover[cold] / cover, 0.0, split, phi)


@dataclass(frozen=True)
class Contribution:
    """One input's part in an answer."""

    feature: str
    value: float | None
    contribution: float


def top_contributions(
    names: Sequence[str], row: Sequence[float], phi: np.ndarray, k: int
) -> list[Contribution]:
    """The k inputs with the largest absolute contributions, largest first."""
    order = np.argsort(-np.abs(phi), kind="stable")[:k]
    return [
        Contribution(names[i], None if math.isnan(float(row[i])) else float(row[i]), float(phi[i]))
        for i in order
    ]
