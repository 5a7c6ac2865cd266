"""Evaluation statistics (docs/method.md §4), each small enough to check against a hand calculation.

* Patient-level bootstrap: resample *patients* with replacement and keep all their lesions; percentile 95 % CI.
* Paired bootstrap of a metric difference (same resamples for both methods); two-sided p =
  min(1, 2 · min(P*(Δ ≤ 0), P*(Δ ≥ 0))) over the bootstrap distribution (the rule is recorded in outputs).
* GEE for paired accuracy: logistic GEE of ``correct`` on ``[1, method]``, clustered on patient, exchangeable
  working correlation, robust (sandwich) SE; Wald test of the method coefficient.
* GEE within each stratum (the per-subtype GEE of the Yonsei study): :func:`gee_by_stratum`.
* DeLong AUC variance and comparison with the fast algorithm of Sun & Xu (2014), midranks for ties; between any
  two models, binary or one-vs-rest per class: :func:`delong_compare`.
* p-values as text, "< 1/B" when no bootstrap resample or permutation crossed: :func:`format_p`.
* Brier score, calibration curve/slope/intercept, net benefit (decision curves), Generalisation Decay Index.
Size: the evaluation's statistics side by side, each small and checked against a hand calculation or a
published example; one module is the one reference the card and the research report cite.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import statsmodels.api as sm
from scipy.stats import norm
from sklearn.metrics import f1_score

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
IndexArray = npt.NDArray[np.intp]
BOOTSTRAP_P_RULE = "two-sided: min(1, 2*min(P(delta<=0), P(delta>=0))) over patient-level paired resamples"
GDI_SAFE = 0.15
GDI_HIGH_RISK = 0.20


# --------------------------------------------------------------------------------------------- bootstrap
def patient_resamples(groups: Sequence[str] | npt.NDArray[np.str_], n_boot: int, seed: int) -> list[IndexArray]:
    """``n_boot`` lists of lesion indices, each drawn by resampling patients with replacement."""
    groups = np.asarray(groups)
    patients, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == i) for i in range(patients.size)]
    rng = np.random.default_rng(seed)
    return [np.concatenate([members[i] for i in rng.integers(0, patients.size, patients.size)]) for _ in range(n_boot)]


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float

    def to_json(self) -> dict[str, float]:
        return {"value": self.estimate, "ci95_low": self.low, "ci95_high": self.high}


def bootstrap_ci(
    statistic: Callable[[IndexArray], float], resamples: Sequence[IndexArray], n: int, level: float = 0.95
) -> Interval:
    """Point estimate on all ``n`` rows and the percentile interval over ``resamples``."""
    values = np.array([statistic(idx) for idx in resamples], dtype=np.float64)
    alpha = (1.0 - level) / 2.0
    low, high = np.nanquantile(values, [alpha, 1.0 - alpha])
    return Interval(statistic(np.arange(n)), float(low), float(high))


@dataclass(frozen=True)
class PairedComparison:
    delta: float
    low: float
    high: float
    p_value: float
    rule: str = BOOTSTRAP_P_RULE

    def to_json(self) -> dict[str, float | str]:
        return {"delta": self.delta, "ci95_low": self.low, "ci95_high": self.high, "p_value": self.p_value,
                "p_rule": self.rule}


def paired_bootstrap(
    statistic_a: Callable[[IndexArray], float],
    statistic_b: Callable[[IndexArray], float],
    resamples: Sequence[IndexArray],
    n: int,
    level: float = 0.95,
) -> PairedComparison:
    """Difference a − b, its percentile CI and the bootstrap p-value (same resamples for both)."""
    deltas = np.array([statistic_a(idx) - statistic_b(idx) for idx in resamples], dtype=np.float64)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(deltas, [alpha, 1.0 - alpha])
    p = min(1.0, 2.0 * min(float(np.mean(deltas <= 0)), float(np.mean(deltas >= 0))))
    everything = np.arange(n)
    return PairedComparison(statistic_a(everything) - statistic_b(everything), float(low), float(high), p)


def accuracy_of(y: IntArray, pred: IntArray) -> Callable[[IndexArray], float]:
    return lambda idx: float(np.mean(y[idx] == pred[idx]))


def f1_macro_of(y: IntArray, pred: IntArray, n_classes: int) -> Callable[[IndexArray], float]:
    labels = list(range(n_classes))
    return lambda idx: float(f1_score(y[idx], pred[idx], average="macro", labels=labels, zero_division=0))


# --------------------------------------------------------------------------------------------- GEE
@dataclass(frozen=True)
class GeeResult:
    coefficient: float  # log odds ratio of being correct, method A vs method B
    std_error: float
    z: float
    p_value: float
    note: str = ""

    def to_json(self) -> dict[str, float | str | None]:
        def clean(v: float) -> float | None:
            return v if math.isfinite(v) else None

        return {"log_odds_ratio": clean(self.coefficient), "robust_se": clean(self.std_error), "z": clean(self.z),
                "p_value": clean(self.p_value), "note": self.note}


def gee_paired_accuracy(correct_a: npt.ArrayLike, correct_b: npt.ArrayLike, groups: npt.ArrayLike) -> GeeResult:
    """Compare two methods' per-lesion correctness by logistic GEE clustered on patient (statsmodels)."""
    a = np.asarray(correct_a, dtype=np.float64)
    b = np.asarray(correct_b, dtype=np.float64)
    if a.mean() in (0.0, 1.0) or b.mean() in (0.0, 1.0):
        return GeeResult(math.nan, math.nan, math.nan, math.nan,
                         "not estimable: a method is always right or always wrong (separation)")
    if np.array_equal(a, b):
        return GeeResult(0.0, 0.0, 0.0, 1.0, "identical correctness: no difference")
    group_codes = np.unique(np.asarray(groups), return_inverse=True)[1]
    endog = np.concatenate([a, b])
    exog = np.column_stack([np.ones(2 * a.size), np.concatenate([np.ones(a.size), np.zeros(b.size)])])
    clusters = np.concatenate([group_codes, group_codes])
    order = np.argsort(clusters, kind="stable")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = sm.GEE(endog[order], exog[order], groups=clusters[order], family=sm.families.Binomial(),
                       cov_struct=sm.cov_struct.Exchangeable())
        fit = model.fit()
    coef, se = float(fit.params[1]), float(fit.bse[1])
    z = coef / se if se > 0 else math.inf
    return GeeResult(coef, se, z, float(2.0 * norm.sf(abs(z))))


def gee_by_stratum(
    correct_a: npt.ArrayLike, correct_b: npt.ArrayLike, groups: npt.ArrayLike, strata: npt.ArrayLike,
) -> dict[str, dict[str, object]]:
    """:func:`gee_paired_accuracy` within each stratum (e.g. each subtype), patients as clusters: per stratum the
    lesion and patient counts, both accuracies and the GEE result (not estimable strata say why)."""
    a = np.asarray(correct_a, dtype=np.float64)
    b = np.asarray(correct_b, dtype=np.float64)
    g = np.asarray(groups)
    s = np.asarray(strata).astype(str)
    if not a.size == b.size == g.size == s.size:
        raise ValueError("correct_a, correct_b, groups and strata must have the same length")
    out: dict[str, dict[str, object]] = {}
    for key in sorted(set(s.tolist())):
        sel = s == key
        out[key] = {
            "n_lesions": int(sel.sum()),
            "n_patients": int(np.unique(g[sel]).size),
            "accuracy_a": float(a[sel].mean()),
            "accuracy_b": float(b[sel].mean()),
            "gee": gee_paired_accuracy(a[sel], b[sel], g[sel]).to_json(),
        }
    return out


def mcnemar_exact(correct_a: npt.ArrayLike, correct_b: npt.ArrayLike) -> float:
    """Exact McNemar p-value on the discordant pairs (valid for one lesion per patient): the GEE cross-check of
    docs/method.md §4, and the fallback when GEE is not estimable."""
    from statsmodels.stats.contingency_tables import mcnemar

    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    table = [[int(np.sum(a & b)), int(np.sum(a & ~b))], [int(np.sum(~a & b)), int(np.sum(~a & ~b))]]
    return float(mcnemar(table, exact=True).pvalue)


# --------------------------------------------------------------------------------------------- DeLong
def _midranks(x: FloatArray) -> FloatArray:
    order = np.argsort(x, kind="mergesort")
    z = x[order]
    n = x.size
    ranks = np.zeros(n)
    i = 0
    while i < n:
        j = i
        while j < n and z[j] == z[i]:
            j += 1
        ranks[i:j] = 0.5 * (i + j - 1) + 1.0
        i = j
    out = np.empty(n)
    out[order] = ranks
    return out


def delong(y_true: Sequence[int] | IntArray, scores: FloatArray) -> tuple[FloatArray, FloatArray]:
    """AUCs and their DeLong covariance matrix for ``scores`` of shape (k, n) or (n,).

    Fast algorithm of Sun & Xu (2014) with midranks; ``y_true`` is 1 for positives.
    """
    y = np.asarray(y_true).astype(bool)
    s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    m, n = int(y.sum()), int((~y).sum())
    if m == 0 or n == 0:
        raise ValueError("DeLong needs at least one positive and one negative case")
    pos, neg = s[:, y], s[:, ~y]
    k = s.shape[0]
    tx = np.array([_midranks(pos[r]) for r in range(k)])
    ty = np.array([_midranks(neg[r]) for r in range(k)])
    tz = np.array([_midranks(np.concatenate([pos[r], neg[r]])) for r in range(k)])
    aucs = tz[:, :m].sum(axis=1) / (m * n) - (m + 1.0) / (2.0 * n)
    v_pos = (tz[:, :m] - tx) / n  # per positive: fraction of negatives scored below (ties ½)
    v_neg = 1.0 - (tz[:, m:] - ty) / m  # per negative: fraction of positives scored above (ties ½)
    s_pos = np.atleast_2d(np.cov(v_pos)) if m > 1 else np.zeros((k, k))
    s_neg = np.atleast_2d(np.cov(v_neg)) if n > 1 else np.zeros((k, k))
    return aucs, s_pos / m + s_neg / n


@dataclass(frozen=True)
class AucResult:
    auc: float
    variance: float
    low: float
    high: float

    def to_json(self) -> dict[str, float]:
        return {"auc": self.auc, "variance": self.variance, "ci95_low": self.low, "ci95_high": self.high}


def delong_ci(y_true: Sequence[int] | IntArray, score: FloatArray, level: float = 0.95) -> AucResult:
    """AUC with its DeLong variance and Wald CI (clipped to [0, 1])."""
    aucs, cov = delong(y_true, np.asarray(score)[None, :])
    auc, var = float(aucs[0]), float(cov[0, 0])
    half = float(norm.ppf(0.5 + level / 2.0)) * math.sqrt(max(var, 0.0))
    return AucResult(auc, var, max(0.0, auc - half), min(1.0, auc + half))


@dataclass(frozen=True)
class DelongComparison:
    auc_a: float
    auc_b: float
    z: float
    p_value: float

    def to_json(self) -> dict[str, float | None]:
        return {"auc_a": self.auc_a, "auc_b": self.auc_b, "z": self.z if math.isfinite(self.z) else None,
                "p_value": self.p_value}


def delong_test(y_true: Sequence[int] | IntArray, score_a: FloatArray, score_b: FloatArray) -> DelongComparison:
    """Two-sided DeLong test of two correlated AUCs on the same cases."""
    aucs, cov = delong(y_true, np.vstack([score_a, score_b]))
    var = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    diff = float(aucs[0] - aucs[1])
    if var <= 0:
        same = diff == 0
        return DelongComparison(float(aucs[0]), float(aucs[1]), 0.0 if same else math.inf, 1.0 if same else 0.0)
    z = diff / math.sqrt(var)
    return DelongComparison(float(aucs[0]), float(aucs[1]), z, float(2.0 * norm.sf(abs(z))))


def _positive_scores(proba: npt.ArrayLike, n_classes: int, what: str, n: int) -> FloatArray:
    arr = np.asarray(proba, dtype=np.float64)
    if arr.ndim == 1 and n_classes == 2:
        arr = np.column_stack([1.0 - arr, arr])
    if arr.ndim != 2 or arr.shape != (n, n_classes):
        raise ValueError(f"{what} must have shape ({n}, {n_classes}) (or ({n},) scores of the positive class for a "
                         f"binary task), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} holds non-finite values")
    return arr


@dataclass(frozen=True)
class ModelComparison:
    """DeLong comparisons of two models' AUCs on the same cases: one for a binary task (the positive class),
    one per class (that class against the rest) for a multi-class task; ``None`` where a class is absent or
    is every case."""

    scheme: str
    comparisons: dict[str, DelongComparison | None]

    def to_json(self) -> dict[str, object]:
        return {"scheme": self.scheme,
                "comparisons": {k: (v.to_json() if v is not None else None) for k, v in self.comparisons.items()}}


def delong_compare(
    y: Sequence[int] | IntArray,
    proba_a: npt.ArrayLike,
    proba_b: npt.ArrayLike,
    n_classes: int,
    class_names: Sequence[str] | None = None,
) -> ModelComparison:
    """DeLong test between any two models' probabilities on the same cases (``y``: class indices 0..K-1).

    Binary: one comparison of the AUCs of the positive class (index 1). Multi-class: one-vs-rest, one
    comparison per class (that class against all others, each model's probability of that class), with no
    correction for multiplicity (the scheme says so)."""
    labels = np.asarray(y, dtype=np.int64)
    if n_classes < 2:
        raise ValueError("a comparison needs at least two classes")
    if labels.ndim != 1 or labels.size == 0 or labels.min() < 0 or labels.max() >= n_classes:
        raise ValueError(f"y must be a non-empty vector of class indices 0..{n_classes - 1}")
    names = list(class_names) if class_names is not None else [str(k) for k in range(n_classes)]
    if len(names) != n_classes:
        raise ValueError(f"{len(names)} class names for {n_classes} classes")
    a = _positive_scores(proba_a, n_classes, "proba_a", labels.size)
    b = _positive_scores(proba_b, n_classes, "proba_b", labels.size)
    ks = [1] if n_classes == 2 else list(range(n_classes))
    out: dict[str, DelongComparison | None] = {}
    for k in ks:
        positive = labels == k
        out[names[k]] = (delong_test(positive.astype(int), a[:, k], b[:, k])
                         if positive.any() and not positive.all() else None)
    scheme = (f"binary: AUC of '{names[1]}' (positive class), two-sided DeLong test" if n_classes == 2 else
              "multi-class: one-vs-rest, one two-sided DeLong test per class (its probability, that class "
              "against all others); no multiplicity correction")
    return ModelComparison(scheme, out)


# --------------------------------------------------------------------------------------------- p-values
def format_p(p: float | None, n_resamples: int | None = None, digits: int = 3) -> str:
    """A p-value as text: ``"< 1/B"`` (e.g. ``"< 0.001"`` for B = 1000) when it is below the resolution of
    ``n_resamples`` bootstrap resamples or permutations (no resample crossed: the p-value is not 0), ``"< 0.001"``
    for an analytic p below the printed precision, ``"n/a"`` when missing."""
    if p is None or not math.isfinite(p):
        return "n/a"
    if n_resamples is not None:
        if n_resamples < 1:
            raise ValueError(f"n_resamples must be positive, got {n_resamples}")
        floor = 1.0 / n_resamples
        if p < floor * (1 - 1e-9):
            return f"< {floor:.2g}" if floor < 10 ** -digits else f"< {floor:.{digits}f}"
    smallest = 10.0 ** -digits
    if p < smallest:
        return f"< {smallest:.{digits}f}"
    return f"{p:.{digits}f}"


# --------------------------------------------------------------------------------------------- calibration, DCA
def brier_score(y_true: Sequence[int] | IntArray, prob: FloatArray) -> float:
    """Binary Brier score: mean squared difference between the probability and the 0/1 outcome."""
    return float(np.mean((np.asarray(prob, dtype=np.float64) - np.asarray(y_true, dtype=np.float64)) ** 2))


def brier_multiclass(y: IntArray, proba: FloatArray) -> float:
    """Multi-class Brier score: mean over cases of Σ_k (p_k − 1[y = k])² (range 0..2)."""
    onehot = np.eye(proba.shape[1])[y]
    return float(np.mean(np.sum((proba - onehot) ** 2, axis=1)))


@dataclass(frozen=True)
class Calibration:
    bin_mean_predicted: list[float]
    bin_observed: list[float]
    bin_counts: list[int]
    slope: float
    intercept: float

    def to_json(self) -> dict[str, object]:
        def clean(v: float) -> float | None:
            return v if math.isfinite(v) else None

        return {"bin_mean_predicted": self.bin_mean_predicted, "bin_observed": self.bin_observed,
                "bin_counts": self.bin_counts, "slope": clean(self.slope), "intercept": clean(self.intercept)}


def calibration(y_true: Sequence[int] | IntArray, prob: FloatArray, n_bins: int = 10) -> Calibration:
    """Reliability curve on equal-width bins, calibration slope (logistic fit of y on logit p) and intercept
    (calibration-in-the-large: logistic intercept with logit p as offset)."""
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(prob, dtype=np.float64)
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    mean_pred, observed, counts = [], [], []
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            mean_pred.append(float(p[sel].mean()))
            observed.append(float(y[sel].mean()))
            counts.append(int(sel.sum()))
    logit = np.log(np.clip(p, 1e-6, 1 - 1e-6) / (1 - np.clip(p, 1e-6, 1 - 1e-6)))
    slope = intercept = math.nan
    if 0 < y.mean() < 1 and np.ptp(logit) > 0:  # a slope needs both outcomes and varying predictions
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                fit = sm.GLM(y, sm.add_constant(logit, has_constant="add"), family=sm.families.Binomial()).fit()
                slope = float(fit.params[1])
                fit0 = sm.GLM(y, np.ones_like(y), family=sm.families.Binomial(), offset=logit).fit()
                intercept = float(fit0.params[0])
            except (ValueError, np.linalg.LinAlgError, OverflowError) as exc:
                logger.debug("calibration fit failed: %s", exc)
    return Calibration(mean_pred, observed, counts, slope, intercept)


def net_benefit(y_true: Sequence[int] | IntArray, prob: FloatArray, thresholds: Sequence[float]) -> FloatArray:
    """Net benefit of treating when ``prob ≥ t``: TP/n − t/(1−t) · FP/n, for each threshold ``t`` in [0, 1)."""
    y = np.asarray(y_true).astype(bool)
    p = np.asarray(prob, dtype=np.float64)
    n = y.size
    out = []
    for t in thresholds:
        if not 0.0 <= t < 1.0:
            raise ValueError(f"net-benefit threshold must be in [0, 1), got {t}")
        treat = p >= t
        tp, fp = np.sum(treat & y), np.sum(treat & ~y)
        out.append(tp / n - t / (1.0 - t) * fp / n)
    return np.asarray(out, dtype=np.float64)


def net_benefit_treat_all(y_true: Sequence[int] | IntArray, thresholds: Sequence[float]) -> FloatArray:
    prevalence = float(np.mean(np.asarray(y_true).astype(bool)))
    t = np.asarray(thresholds, dtype=np.float64)
    return np.asarray(prevalence - (1 - prevalence) * t / (1 - t), dtype=np.float64)


# --------------------------------------------------------------------------------------------- GDI, confusion
def gdi(auc_train: float, auc_test: float) -> tuple[float, str]:
    """Generalisation Decay Index (AUC_train − AUC_test) / AUC_train and its zone (S4): ≤ 15 % safe,
    15–20 % warning, ≥ 20 % high risk."""
    if not auc_train > 0:
        raise ValueError("GDI needs a positive training AUC")
    value = (auc_train - auc_test) / auc_train
    banded = round(value, 10)  # 0.2 must not read as 0.19999999999999996
    if banded <= GDI_SAFE:
        zone = "safe"
    elif banded < GDI_HIGH_RISK:
        zone = "warning"
    else:
        zone = "high risk"
    return float(value), zone


GDI_MIN_PER_CLASS = 10
GDI_BANDS = "<=15 % safe, 15-20 % warning, >=20 % high risk (S4)"
NO_CV_AUC = ("the bundle records no cross-validated training AUC, only the apparent (refit) one, which is about "
             "1.0 for tree ensembles and would make the index restate the test AUC: retrain the bundle")


@dataclass(frozen=True)
class GdiAssessment:
    """The GDI from the cross-validated training-side AUC, or the reason it cannot be interpreted."""

    auc_train: float | None  # cross-validated (out-of-fold or nested), never the refit model's apparent AUC
    auc_test: float | None
    value: float | None
    zone: str | None
    reason: str  # empty when interpretable

    @property
    def interpretable(self) -> bool:
        return not self.reason

    def to_json(self) -> dict[str, object]:
        return {"auc_train": self.auc_train, "auc_test": self.auc_test, "gdi": self.value, "zone": self.zone,
                "interpretable": self.interpretable, "reason": self.reason or None, "bands": GDI_BANDS}


def gdi_assess(auc_cv: float | None, auc_test: float | None, min_class_count: int) -> GdiAssessment:
    """GDI of a cross-validated training AUC against a test AUC, with the zone, unless it cannot be read:

    no CV AUC recorded; the test table has one class only or fewer than ``GDI_MIN_PER_CLASS`` lesions of its
    rarest class; the CV AUC ≤ 0.5 (nothing learned that could decay); the test AUC ≤ 0.5 (no discrimination
    on this table: the index would only restate that)."""
    def clean(v: float | None) -> float | None:
        return float(v) if v is not None and math.isfinite(float(v)) else None

    cv, test = clean(auc_cv), clean(auc_test)
    reason = ""
    if cv is None:
        reason = NO_CV_AUC
    elif test is None or min_class_count == 0:
        reason = "this table has one class only: no test AUC"
    elif min_class_count < GDI_MIN_PER_CLASS:
        reason = (f"the test table is too small: {min_class_count} lesion(s) of its rarest class "
                  f"(at least {GDI_MIN_PER_CLASS} needed for a stable AUC)")
    elif cv <= 0.5:
        reason = f"the cross-validated training AUC ({cv:.3f}) is at or below chance: there is no signal to decay"
    elif test <= 0.5:
        reason = (f"the test AUC ({test:.3f}) is at or below chance: the model does not discriminate on this "
                  "table, which the index would only restate")
    if reason:
        return GdiAssessment(cv, test, None, None, reason)
    assert cv is not None and test is not None
    value, zone = gdi(cv, test)
    return GdiAssessment(cv, test, value, zone, "")


def confusion_matrix(y: IntArray, pred: IntArray, n_classes: int) -> IntArray:
    """Rows: true class, columns: predicted class."""
    out = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(out, (np.asarray(y), np.asarray(pred)), 1)
    return out
