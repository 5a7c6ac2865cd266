"""The hidden subtype effect, on small arrays (no whole studies)."""

from __future__ import annotations

import numpy as np

from node.synth.lesions import Lesion, lesion_appearance, sample_appearance, sample_shape
from node.vocabulary import Subtype

N_LESIONS = 20


def _lesion_statistics(subtype: Subtype, effect: float) -> np.ndarray:
    """Per lesion: necrotic fraction (T1CE < 0.8 inside), mean T1CE of the enhancing part, mean T2 in a 3 mm
    shell around the lesion (1.5 mm grid, white-matter background)."""
    ax = np.arange(-30.0, 31.0, 1.5)
    pts = np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), axis=-1)
    wm = np.ones(pts.shape[:3])
    stats = []
    for i in range(N_LESIONS):
        rng = np.random.default_rng(1000 + i)
        shape = sample_shape(np.zeros(3), float(rng.uniform(5.0, 12.0)), rng)
        app = sample_appearance(subtype, effect, rng)
        lesion = Lesion(1, shape, app, subtype)
        rho = lesion.shape.rho(pts)
        t1, t2 = lesion_appearance(wm * 1.0, wm * 0.33, rho, wm, lesion.shape.texture(pts), app)
        inside = rho < 1.0
        shell = (rho >= 1.0) & (rho < 1.0 + 3.0 / shape.radius_mm)
        necrotic = t1[inside] < 0.8
        stats.append([necrotic.mean(), t1[inside][~necrotic].mean(), t2[shell].mean()])
    result: np.ndarray = np.array(stats)
    return result


def _separation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|difference of means| / pooled standard error, per statistic."""
    se = np.sqrt(a.var(axis=0, ddof=1) / len(a) + b.var(axis=0, ddof=1) / len(b))
    result: np.ndarray = np.abs(a.mean(axis=0) - b.mean(axis=0)) / np.maximum(se, 1e-12)
    return result


def test_effect_separates_subtypes() -> None:
    tn = _lesion_statistics(Subtype.TN, 1.0)
    hr = _lesion_statistics(Subtype.HR_POS_HER2_NEG, 1.0)
    her2 = _lesion_statistics(Subtype.HR_NEG_HER2_POS, 1.0)
    sep = _separation(tn, hr)
    assert sep[0] > 4.0 and sep[2] > 4.0  # TN: more necrosis, more oedema
    assert tn[:, 0].mean() > hr[:, 0].mean()
    assert tn[:, 2].mean() > hr[:, 2].mean()
    assert _separation(her2, hr)[1] > 4.0  # HER2+ enhances more
    assert her2[:, 1].mean() > hr[:, 1].mean()


def test_no_effect_means_no_signal() -> None:
    tn = _lesion_statistics(Subtype.TN, 0.0)
    hr = _lesion_statistics(Subtype.HR_POS_HER2_NEG, 0.0)
    np.testing.assert_allclose(tn, hr)  # same random draws, subtype has no influence at all


def test_effect_size_scales() -> None:
    small = _separation(_lesion_statistics(Subtype.TN, 0.3), _lesion_statistics(Subtype.HR_POS_HER2_NEG, 0.3))
    large = _separation(_lesion_statistics(Subtype.TN, 1.0), _lesion_statistics(Subtype.HR_POS_HER2_NEG, 1.0))
    assert large[0] > small[0] and large[2] > small[2]


def test_appearance_clipped() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        app = sample_appearance(Subtype.TN, 5.0, rng)
        assert 0.0 <= app.necrosis_fraction <= 0.85
        assert 0.1 <= app.oedema_extent <= 2.5
