"""Exact (path-dependent) TreeSHAP without the ``shap`` package: the values ``shap.TreeExplainer`` reports.

The node explains every prediction with TreeSHAP (Lundberg et al. 2020, "From local explanations to global
understanding with explainable AI for trees", Algorithm 2: the exact Shapley values of the tree's conditional
expectation, the expectation taken over the training cover of each node). Rather than importing ``shap`` (and
the numba/llvmlite compiler it pulls in, ~190 MB of the container image) at run time, the values come from:

* XGBoost: the booster's own exact TreeSHAP, ``predict(..., pred_contribs=True)``;
* LightGBM: the booster's own exact TreeSHAP, ``predict(..., pred_contrib=True)``;
* Random Forest / AdaBoost (:class:`node.model.trees.TreeEnsemble`): :func:`ensemble_shap` below, the same
  algorithm in numpy over the exported arrays (node weights are the covers, splits go left on ``x <= t`` in
  float32 like scikit-learn). Rather than recursing through every tree for every row, it works on the ensemble's
  root-to-leaf paths (:attr:`TreeEnsemble.leaf_paths`, built once per loaded model): a leaf's SHAP values depend
  only on its path's distinct features, their cover fractions and whether the row satisfies the path's splits on
  each, so Algorithm 2's EXTEND and UNWOUND-SUM steps run for all leaves with the same number of distinct
  features at once (~10 ms instead of ~0.35 s for one row of the demo's 200-tree Random Forest).
  ``tests/learn/treeshap_oracle.py`` keeps the recursion, and the tests hold the two to 1e-12.

The last column of a booster's contributions is the bias, the cover-weighted mean output: ``shap``'s
``expected_value``. ``tests/learn/test_treeshap.py`` checks all four kinds against ``shap.TreeExplainer``
(``shap`` stays a development dependency for that).
"""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import numpy.typing as npt
import xgboost as xgb

from node.model.trees import LeafPaths, TreeEnsemble

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def booster_shap(model: xgb.Booster | lgb.Booster, z: FloatArray) -> tuple[FloatArray, FloatArray]:
    """SHAP values (n, inputs[, classes]) and base values (classes,) of a booster, in its margin units.

    A binary or single-output model gives 2-D values and one base value; a multi-class model one column per class.
    """
    n, f = z.shape
    if isinstance(model, xgb.Booster):
        raw = np.asarray(model.predict(xgb.DMatrix(z), pred_contribs=True, validate_features=False),
                         dtype=np.float64)
        if raw.ndim == 3:  # (n, classes, inputs + 1)
            raw = np.transpose(raw, (0, 2, 1))
    else:
        raw = np.asarray(model.predict(z, pred_contrib=True), dtype=np.float64)
        if raw.shape[1] != f + 1:  # (n, classes * (inputs + 1)), class by class
            raw = np.transpose(raw.reshape(n, -1, f + 1), (0, 2, 1))
    return raw[:, :f], np.atleast_1d(raw[0, f])


def ensemble_shap(ensemble: TreeEnsemble, x: FloatArray) -> tuple[FloatArray, FloatArray]:
    """SHAP values (n, inputs, classes) and base values (classes,) of an exported RF/AdaBoost ensemble."""
    x32 = np.asarray(x, dtype=np.float32).astype(np.float64)
    if x32.ndim != 2 or x32.shape[1] != ensemble.n_features:
        raise ValueError(f"expected {ensemble.n_features} model inputs, got shape {x32.shape}")
    n, f, c = x32.shape[0], ensemble.n_features, ensemble.n_classes
    paths = ensemble.leaf_paths  # built on the first call, then cached on the (loaded, reused) ensemble
    per_row = max((p.value.shape[0] * (p.length + 1) * c for p in paths), default=1)  # the largest group's
    chunk = max(1, _CHUNK_ELEMENTS // per_row)
    values = np.zeros(n * f * c)
    for first in range(0, n, chunk):
        rows = x32[first:first + chunk]
        span = slice(first * f * c, (first + rows.shape[0]) * f * c)
        for group in paths:
            index, weights = _path_shap(group, rows, f)
            values[span] += np.bincount(index, weights, minlength=span.stop - span.start)
    return values.reshape(n, f, c), ensemble.expected_raw.copy()


#: rows are explained in chunks of about this many path elements (a few arrays of this size at a time)
_CHUNK_ELEMENTS = 1 << 20


def _path_shap(group: LeafPaths, x32: FloatArray, n_features: int) -> tuple[IntArray, FloatArray]:
    """One group's contributions as (flat index into values (rows, inputs, classes), weight) for ``np.bincount``.

    Algorithm 2 of Lundberg et al. 2020 for every (row, leaf) of the group at once: EXTEND the leaf's unique path
    (a dummy root element, then its distinct features with their zero fraction ``cover`` and one fraction
    ``follows``), then UNWOUND-SUM each feature out of it; its contribution is that sum times (one - zero) times
    the leaf value. The operations and their order are the recursion's, so the values agree with it to rounding.
    """
    n, m = x32.shape[0], group.length
    one = group.follows(x32).astype(np.float64)  # (n, leaves, m)
    zero = group.cover  # (leaves, m)
    # EXTEND: w[..., i] the permutation weight of the subsets holding i of the elements so far
    w = np.zeros((*one.shape[:2], m + 1))
    w[..., 0] = 1.0
    for depth in range(1, m + 1):
        k = np.arange(depth, dtype=np.float64)
        old = w[..., :depth].copy()
        w[..., :depth] = zero[:, depth - 1:depth] * old * (depth - k) / (depth + 1)
        w[..., 1:depth + 1] += one[..., depth - 1:depth] * old * (k + 1) / (depth + 1)
    # UNWOUND SUM of every element 1..m at once (one is 0 or 1: the recursion's two branches)
    total = np.zeros_like(one)
    next_one = np.repeat(w[..., m:], m, axis=-1)
    hot = one != 0
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for i in range(m - 1, -1, -1):
            w_i = w[..., i:i + 1]
            tmp = next_one * (m + 1) / (i + 1)
            total += np.where(hot, tmp, w_i / (zero * (m - i) / (m + 1)))
            next_one = w_i - tmp * zero * (m - i) / (m + 1)
    contribution = (total * (one - zero))[..., None] * group.value[None, :, None, :]  # (n, leaves, m, classes)
    c = group.value.shape[1]
    rows = np.arange(n)[:, None, None, None]
    index = ((rows * n_features + group.feature[None, :, :, None]) * c + np.arange(c)).ravel()
    return index, contribution.ravel()
