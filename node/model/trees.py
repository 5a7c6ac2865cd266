"""Random Forest and AdaBoost ensembles exported to plain JSON, evaluated and explained without scikit-learn pickles.

Each scikit-learn tree becomes arrays (children, split feature, threshold, per-node class values, node weights).
Leaf values are chosen so that the *sum over trees* is the model's raw output:

* Random Forest: leaf class fractions / n_trees, so the sum is ``predict_proba`` (SHAP units: probability).
* AdaBoost (SAMME): leaf value ``w_m / Σw · c`` with ``c_k = 1`` for the leaf's arg-max class and
  ``−1/(K−1)`` otherwise, so the sum is ``decision_function`` and ``predict_proba = softmax(sum / (K−1))``,
  exactly as scikit-learn computes it (SHAP units: decision function).

Splits follow scikit-learn: the input is cast to float32 and goes left when ``x <= threshold``. The same
arrays feed ``shap.TreeExplainer`` through its documented dictionary model format.

:attr:`TreeEnsemble.leaf_paths` restates every tree as its root-to-leaf paths (each leaf: the distinct features its
path splits on, the interval the input must fall in, the cover fraction), computed once per loaded ensemble and
cached on it: the form in which :mod:`node.model.treeshap` explains a row with a few numpy operations per path
length instead of one Python recursion per tree.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
#: Format tag inside ``trees.json``; kept from the module's first name so that existing bundles still load.
TREES_FORMAT = "node.learn.trees/1"
ENSEMBLE_KINDS = ("random_forest", "adaboost")


@dataclass(frozen=True)
class JsonTree:
    """One binary tree as parallel arrays (leaves have ``children_left == -1``)."""

    children_left: IntArray
    children_right: IntArray
    feature: IntArray
    threshold: FloatArray
    value: FloatArray  # (n_nodes, n_classes); internal nodes hold the weighted mean of their leaves
    node_weight: FloatArray

    def leaves(self, x32: FloatArray) -> IntArray:
        """The leaf index reached by every row of ``x32`` (float32 values held as float64)."""
        node = np.zeros(x32.shape[0], dtype=np.int64)
        rows = np.arange(x32.shape[0])
        while True:
            left = self.children_left[node]
            active = left >= 0
            if not active.any():
                return node
            f = self.feature[node[active]]
            go_left = x32[rows[active], f] <= self.threshold[node[active]]
            node[active] = np.where(go_left, left[active], self.children_right[node[active]])

    def to_json(self) -> dict[str, list[Any]]:
        return {
            "children_left": self.children_left.tolist(),
            "children_right": self.children_right.tolist(),
            "feature": self.feature.tolist(),
            "threshold": self.threshold.tolist(),
            "value": self.value.tolist(),
            "node_weight": self.node_weight.tolist(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JsonTree:
        tree = cls(
            children_left=np.asarray(data["children_left"], dtype=np.int64),
            children_right=np.asarray(data["children_right"], dtype=np.int64),
            feature=np.asarray(data["feature"], dtype=np.int64),
            threshold=np.asarray(data["threshold"], dtype=np.float64),
            value=np.asarray(data["value"], dtype=np.float64),
            node_weight=np.asarray(data["node_weight"], dtype=np.float64),
        )
        n = tree.children_left.size
        arrays = (tree.children_right, tree.feature, tree.threshold, tree.node_weight)
        if any(a.shape != (n,) for a in arrays) or tree.value.ndim != 2 or tree.value.shape[0] != n:
            raise ValueError("tree arrays have inconsistent lengths")
        internal = tree.children_left >= 0
        kids = np.concatenate([tree.children_left[internal], tree.children_right[internal]])
        if kids.size and (kids.min() < 1 or kids.max() >= n):
            raise ValueError("tree child index out of range")
        return tree


def with_internal_means(left: IntArray, right: IntArray, leaf_value: FloatArray, weight: FloatArray) -> FloatArray:
    """Fill internal nodes with the weight-averaged value of their children (nodes are in pre-order)."""
    value = leaf_value.copy()
    for node in range(left.size - 1, -1, -1):
        if left[node] >= 0:
            wl, wr = weight[left[node]], weight[right[node]]
            total = wl + wr
            value[node] = (wl * value[left[node]] + wr * value[right[node]]) / total if total > 0 else value[left[node]]
    return value


@dataclass(frozen=True)
class LeafPaths:
    """The leaves of an ensemble (all its trees) whose root-to-leaf path splits on ``length`` distinct features.

    Per leaf and per distinct feature of its path, in the order of the path's *last* split on that feature (the
    order in which TreeSHAP's Algorithm 2 holds its unique path): the feature; its cover fraction, the product
    over the path's splits on it of child weight / parent weight (TreeSHAP's "zero fraction"); and the interval
    ``lower < x <= upper`` that an input must fall in to follow every one of those splits (-inf / +inf: no split
    on that side). All arrays are (leaves, length) but ``value``, the leaf values (leaves, classes).
    """

    value: FloatArray
    feature: IntArray
    cover: FloatArray
    lower: FloatArray
    upper: FloatArray

    @property
    def length(self) -> int:
        return int(self.feature.shape[1])

    def follows(self, x32: FloatArray) -> npt.NDArray[np.bool_]:
        """(rows, leaves, length): does row ``x32`` (float32 values held as float64) take the path's splits on the
        feature? Exactly :meth:`JsonTree.leaves`'s ``x <= threshold``: NaN goes right, -inf left everywhere."""
        x = np.where(np.isnan(x32), np.inf, np.maximum(x32, -np.finfo(np.float64).max))
        values = x[:, self.feature]
        return np.asarray((values <= self.upper) & (values > self.lower))


def _leaf_paths(trees: tuple[JsonTree, ...], n_classes: int) -> tuple[LeafPaths, ...]:
    """Every leaf of ``trees`` with a non-empty path, grouped by the number of distinct features on the path."""
    # per path length: leaf values and, per distinct feature, (feature, cover fraction, lower, upper)
    groups: dict[int, tuple[list[FloatArray], list[list[tuple[int, float, float, float]]]]] = {}
    for tree in trees:
        left, right = tree.children_left.tolist(), tree.children_right.tolist()
        feature, threshold, weight = tree.feature.tolist(), tree.threshold.tolist(), tree.node_weight.tolist()
        # node, {feature: (cover fraction, lower, upper)} in the order of the last split on each feature
        stack: list[tuple[int, dict[int, tuple[float, float, float]]]] = [(0, {})]
        while stack:
            node, path = stack.pop()
            if left[node] < 0:
                if path:
                    values, items = groups.setdefault(len(path), ([], []))
                    values.append(tree.value[node])
                    items.append([(f, *state) for f, state in path.items()])
                continue
            split, cut, parent = feature[node], threshold[node], weight[node]
            rest = dict(path)
            cover, lower, upper = rest.pop(split, (1.0, -np.inf, np.inf))
            for child, bounds in ((left[node], (lower, min(upper, cut))), (right[node], (max(lower, cut), upper))):
                stack.append((child, {**rest, split: (cover * weight[child] / parent, *bounds)}))
    out = []
    for length in sorted(groups):
        values, items = groups[length]
        table = np.asarray(items, dtype=np.float64)  # (leaves, length, 4)
        out.append(LeafPaths(
            value=np.asarray(values, dtype=np.float64).reshape(-1, n_classes),
            feature=table[:, :, 0].astype(np.int64),
            cover=np.ascontiguousarray(table[:, :, 1]),
            lower=np.ascontiguousarray(table[:, :, 2]),
            upper=np.ascontiguousarray(table[:, :, 3]),
        ))  # fmt: skip
    return tuple(out)


@dataclass(frozen=True)
class TreeEnsemble:
    """An additive tree ensemble: raw output = Σ leaf values; probabilities through the kind's link."""

    kind: str
    n_classes: int
    n_features: int
    trees: tuple[JsonTree, ...]

    def raw(self, x: FloatArray) -> FloatArray:
        x32 = np.asarray(x, dtype=np.float32).astype(np.float64)
        if x32.ndim != 2 or x32.shape[1] != self.n_features:
            raise ValueError(f"expected {self.n_features} model inputs, got shape {x32.shape}")
        out = np.zeros((x32.shape[0], self.n_classes))
        for tree in self.trees:
            out += tree.value[tree.leaves(x32)]
        return out

    def predict_proba(self, x: FloatArray) -> FloatArray:
        raw = self.raw(x)
        if self.kind == "random_forest":
            return raw
        z = raw / (self.n_classes - 1)
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return np.asarray(e / e.sum(axis=1, keepdims=True), dtype=np.float64)

    @cached_property
    def leaf_paths(self) -> tuple[LeafPaths, ...]:
        """Every leaf's root-to-leaf path (:class:`LeafPaths`, one per path length); computed once, then cached."""
        return _leaf_paths(self.trees, self.n_classes)

    @cached_property
    def expected_raw(self) -> FloatArray:
        """The cover-weighted mean raw output (per tree: its leaves' values weighted by their cover), cached."""
        total = np.zeros(self.n_classes)
        for tree in self.trees:
            leaf = tree.children_left < 0
            weights = tree.node_weight[leaf]
            total += weights @ tree.value[leaf] / weights.sum()
        return total

    @property
    def output_units(self) -> str:
        return "probability" if self.kind == "random_forest" else "AdaBoost SAMME decision function"

    def shap_model(self) -> dict[str, Any]:
        """The ensemble in ``shap.TreeExplainer``'s dictionary format."""
        trees = [
            {
                "children_left": t.children_left.astype(np.int32),
                "children_right": t.children_right.astype(np.int32),
                "children_default": t.children_left.astype(np.int32),
                "features": t.feature.astype(np.int32),
                "thresholds": t.threshold,
                "values": t.value,
                "node_sample_weight": t.node_weight,
            }
            for t in self.trees
        ]
        return {"trees": trees, "base_offset": 0.0, "tree_output": "raw_value", "input_dtype": np.float32,
                "internal_dtype": np.float64}

    def to_json(self) -> dict[str, Any]:
        return {
            "format": TREES_FORMAT,
            "kind": self.kind,
            "n_classes": self.n_classes,
            "n_features": self.n_features,
            "trees": [t.to_json() for t in self.trees],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TreeEnsemble:
        if data.get("format") != TREES_FORMAT or data.get("kind") not in ENSEMBLE_KINDS:
            raise ValueError("not a tree-ensemble JSON of this node")
        ensemble = cls(
            kind=str(data["kind"]),
            n_classes=int(data["n_classes"]),
            n_features=int(data["n_features"]),
            trees=tuple(JsonTree.from_json(t) for t in data["trees"]),
        )
        for t in ensemble.trees:
            if t.value.shape[1] != ensemble.n_classes or (t.feature[t.children_left >= 0] >= ensemble.n_features).any():
                raise ValueError("tree does not match the ensemble's classes or inputs")
        return ensemble
