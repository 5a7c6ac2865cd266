"""The node's first TreeSHAP for exported RF/AdaBoost ensembles, kept as a test oracle: Algorithm 2 of Lundberg
et al. 2020 as written in the paper, one Python recursion per tree and row (what ``node.model.treeshap`` computed
before it worked on precomputed root-to-leaf paths with numpy). ``test_treeshap`` checks the node's values against
it to 1e-12 on random trees, and against ``shap.TreeExplainer`` on fitted models.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from node.model.trees import JsonTree, TreeEnsemble

FloatArray = npt.NDArray[np.float64]


def recursive_shap(ensemble: TreeEnsemble, x: FloatArray) -> tuple[FloatArray, FloatArray]:
    """SHAP values (n, inputs, classes) and base values (classes,) of an exported RF/AdaBoost ensemble."""
    x32 = np.asarray(x, dtype=np.float32).astype(np.float64)
    if x32.ndim != 2 or x32.shape[1] != ensemble.n_features:
        raise ValueError(f"expected {ensemble.n_features} model inputs, got shape {x32.shape}")
    values = np.zeros((x32.shape[0], ensemble.n_features, ensemble.n_classes))
    base = np.zeros(ensemble.n_classes)
    for tree in ensemble.trees:
        base += _expected_value(tree)
        for row in range(x32.shape[0]):
            _TreeShap(tree, x32[row], values[row]).run()
    return values, base


def _expected_value(tree: JsonTree) -> FloatArray:
    """The cover-weighted mean of the tree's leaves (what the root holds when covers are consistent)."""
    leaf = tree.children_left < 0
    weights = tree.node_weight[leaf]
    return np.asarray(weights @ tree.value[leaf] / weights.sum(), dtype=np.float64)


class _TreeShap:
    """Algorithm 2 for one tree and one row, accumulating into ``phi`` (inputs, classes)."""

    def __init__(self, tree: JsonTree, x: FloatArray, phi: FloatArray) -> None:
        self.tree = tree
        self.x = x
        self.phi = phi
        depth = _depth(tree) + 2
        # the unique path: feature index, zero fraction, one fraction, permutation weight
        self.feature = np.zeros(depth * (depth + 1) // 2, dtype=np.int64)
        self.zero = np.zeros(self.feature.size)
        self.one = np.zeros(self.feature.size)
        self.weight = np.zeros(self.feature.size)

    def run(self) -> None:
        self._recurse(0, 0, 0, 1.0, 1.0, -1)

    def _extend(self, start: int, depth: int, zero: float, one: float, feature: int) -> None:
        f, z, o, w = self.feature, self.zero, self.one, self.weight
        p = start + depth
        f[p], z[p], o[p], w[p] = feature, zero, one, (1.0 if depth == 0 else 0.0)
        for i in range(depth - 1, -1, -1):
            w[start + i + 1] += one * w[start + i] * (i + 1) / (depth + 1)
            w[start + i] = zero * w[start + i] * (depth - i) / (depth + 1)

    def _unwind(self, start: int, depth: int, index: int) -> None:
        f, z, o, w = self.feature, self.zero, self.one, self.weight
        one, zero = o[start + index], z[start + index]
        next_one = w[start + depth]
        for i in range(depth - 1, -1, -1):
            if one != 0:
                tmp = w[start + i]
                w[start + i] = next_one * (depth + 1) / ((i + 1) * one)
                next_one = tmp - w[start + i] * zero * (depth - i) / (depth + 1)
            else:
                w[start + i] = w[start + i] * (depth + 1) / (zero * (depth - i))
        for i in range(index, depth):
            p = start + i
            f[p], z[p], o[p] = f[p + 1], z[p + 1], o[p + 1]

    def _unwound_sum(self, start: int, depth: int, index: int) -> float:
        z, o, w = self.zero, self.one, self.weight
        one, zero = o[start + index], z[start + index]
        next_one = w[start + depth]
        total = 0.0
        for i in range(depth - 1, -1, -1):
            if one != 0:
                tmp = next_one * (depth + 1) / ((i + 1) * one)
                total += tmp
                next_one = w[start + i] - tmp * zero * (depth - i) / (depth + 1)
            else:
                total += w[start + i] / (zero * (depth - i) / (depth + 1))
        return float(total)

    def _recurse(self, node: int, start: int, depth: int, zero: float, one: float, feature: int) -> None:
        tree = self.tree
        # each level works on its own copy of the parent's path (shap's layout: one block per depth)
        if depth > 0:
            new = start + depth
            for arr in (self.feature, self.zero, self.one, self.weight):
                arr[new:new + depth] = arr[start:start + depth]
            start = new
        self._extend(start, depth, zero, one, feature)
        left = int(tree.children_left[node])
        if left < 0:
            for i in range(1, depth + 1):
                w = self._unwound_sum(start, depth, i)
                p = start + i
                self.phi[self.feature[p]] += w * (self.one[p] - self.zero[p]) * tree.value[node]
            return
        right = int(tree.children_right[node])
        split = int(tree.feature[node])
        hot, cold = (left, right) if self.x[split] <= tree.threshold[node] else (right, left)
        cover = tree.node_weight[node]
        incoming_zero, incoming_one = 1.0, 1.0
        for k in range(1, depth + 1):
            if self.feature[start + k] == split:  # the feature was split on above: undo it, carry its fractions
                incoming_zero, incoming_one = self.zero[start + k], self.one[start + k]
                self._unwind(start, depth, k)
                depth -= 1
                break
        self._recurse(hot, start, depth + 1, incoming_zero * tree.node_weight[hot] / cover, incoming_one, split)
        self._recurse(cold, start, depth + 1, incoming_zero * tree.node_weight[cold] / cover, 0.0, split)


def _depth(tree: JsonTree) -> int:
    """The tree's depth (edges on the longest root-to-leaf path)."""
    deepest, stack = 0, [(0, 0)]
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        if tree.children_left[node] >= 0:
            stack.append((int(tree.children_left[node]), d + 1))
            stack.append((int(tree.children_right[node]), d + 1))
    return deepest
