"""The statistics the criteria and the tests share: Eq. 2's bounds and the predecessor paper's mix/skip/overwrite
regions (docs/method.md section 3), and the tests of ablate.py and tuning.py, on scipy.stats where it has them.

Imports nothing of the project's.
"""

import numpy as np

EQ2_LOW, EQ2_HIGH = 2 / 3, 3 / 2  # Eq. 2's bounds on the mix ratio (docs/method.md section 3), strict at both ends


def mix_regions(m):
    """The predecessor's spectrum with Eq. 2's bounds and strictness, elementwise: (overwrite m <= 2/3,
    mix 2/3 < m < 3/2 (Eq. 2 holds), skip m >= 3/2) as three boolean arrays."""
    m = np.asarray(m, dtype=np.float64)
    mix = (m > EQ2_LOW) & (m < EQ2_HIGH)
    return m <= EQ2_LOW, mix, m >= EQ2_HIGH


def top_k(acts, k):
    """(k, C) image indices of the k largest activations per channel, ties to the lower index (tuning.py's and
    latency.py's top natural images of a unit)."""
    return np.argsort(-acts.astype(np.float32), axis=0, kind="stable")[:k]


# ----------------------------------------------------------------------------------------------------
# The scale-invariance index of a curve over the zooms (tuning.py's channels, crosscoder.py's latents: one definition).

def invariance_index(curve):
    """SI = 1 - (max - min) / max over the zooms (last axis): 1 for a flat curve; NaN where max <= 0."""
    curve = np.asarray(curve, dtype=np.float64)
    top, low = curve.max(-1), curve.min(-1)
    return np.where(top > 0, 1 - (top - low) / np.where(top > 0, top, 1.0), np.nan)


def preferred_zoom(curve, zoom):
    """The zoom at each curve's maximum (the first, if tied); NaN where the maximum is <= 0 (a silent unit prefers no
    zoom: argmax would name the first one, as invariance_index is NaN there too)."""
    curve = np.asarray(curve, dtype=np.float64)
    return np.where(curve.max(-1) > 0, np.asarray(zoom, dtype=np.float64)[np.argmax(curve, axis=-1)], np.nan)


# ----------------------------------------------------------------------------------------------------
# The tests of ablate.py (Fig. 2's claim) and tuning.py (FZ-passing against other channels).

def sign_flip_p(d, permutations, seed):
    """One-sided p-value for 'mean(d) < 0', d the paired per-trial differences: under the null each d_i is as likely
    as -d_i, and p is the share of sign flips whose mean is at most the observed mean (scipy.stats.permutation_test,
    one sample, permutation_type='samples'). Every flip when 2^N <= permutations (exact), else that many random flips
    with p = (1 + k) / (1 + permutations). NaN trials are left out. Returns (p or None, 'exact' or the number of flips)."""
    from scipy.stats import permutation_test
    d = np.asarray(d, dtype=np.float64)
    d = d[np.isfinite(d)]
    if not len(d):
        return None, "no trials"
    if len(d) == 1:  # permutation_test needs two observations; one trial has two flips, d and -d
        return (0.5 if d[0] < 0 else 1.0), "exact"
    test = permutation_test((d,), lambda x, axis: np.mean(x, axis=axis), permutation_type="samples", vectorized=True,
                            n_resamples=permutations, alternative="less", rng=np.random.default_rng(seed))
    return float(test.pvalue), "exact" if 2 ** len(d) <= permutations else f"{permutations} random flips"


def mann_whitney(x, y, permutations, seed):
    """Effect size AUC = P(X > Y) + P(X = Y) / 2 = U / (n_x n_y), U the Mann-Whitney U of x (scipy.stats.mannwhitneyu,
    ties averaged), and a two-sided permutation p-value: the share of relabellings (scipy.stats.permutation_test,
    'independent') whose |U - n_x n_y / 2| is at least the observed one; every relabelling when there are at most
    `permutations` of them (exact), else that many random ones with p = (1 + k) / (1 + permutations). NaNs left out.
    Returns (AUC, p), or (None, None) when a sample is empty."""
    from scipy.stats import mannwhitneyu, permutation_test
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    if not len(x) or not len(y):
        return None, None
    pairs = len(x) * len(y)

    def distance(a, b, axis):  # |U - n_x n_y / 2|: half-integers, exact in float, so ties in it are exact too
        return np.abs(mannwhitneyu(a, b, axis=axis, method="asymptotic").statistic - pairs / 2)

    if min(len(x), len(y)) == 1:  # permutation_test needs two observations a sample: the n relabellings, every one
        both = np.concatenate([x, y] if len(x) == 1 else [y, x])  # the lone observation first
        rest = np.array([np.delete(both, i) for i in range(len(both))])
        null = distance(both[:, None], rest, axis=-1)  # |U - n_x n_y / 2| is the same with the samples swapped
        return float(mannwhitneyu(x, y, method="asymptotic").statistic / pairs), float((null >= null[0]).mean())
    test = permutation_test((x, y), distance, permutation_type="independent", vectorized=True, n_resamples=permutations,
                            batch=1000, alternative="greater", rng=np.random.default_rng(seed))
    return float(mannwhitneyu(x, y, method="asymptotic").statistic / pairs), float(test.pvalue)


def trial_mean(trials):
    """Mean over axis -2 (the trials), leaving out NaN trials (a random set at 0%); NaN where none is left."""
    ok = np.isfinite(trials)
    count = ok.sum(-2)
    return np.where(count > 0, np.where(ok, trials, 0.0).sum(-2) / np.maximum(count, 1), np.nan)


def bootstrap_differences(hits_passing, hits_random, replicates, seed, chunk=200):
    """Bootstrap replicates of Eq. 3's (scaled ratio - no-scale ratio), resampling images and trials. hits_passing
    (S, n) and hits_random (N, S, n): per-image hits, scale 0 first. A replicate draws n images with replacement (one
    draw for every cell: the cells are paired by image) and N trials with replacement, then recomputes every
    accuracy and Eq. 3. Returns (replicates, S - 1).

    Written by hand: scipy.stats.bootstrap resamples the observations of each sample along one axis, while this
    statistic needs two nested resamplings (the images, shared by every cell, and then the trials) with Eq. 3's
    ratios recomputed from the resampled counts in between."""
    rng = np.random.default_rng(seed)
    hr = np.asarray(hits_random, dtype=np.float32)
    n_trials, n_scales, n = hr.shape
    table = np.concatenate([np.asarray(hits_passing, dtype=np.float32)[None], hr]).reshape(-1, n).T  # (n, (1 + N) S)
    out = []
    for start in range(0, replicates, chunk):
        b = min(chunk, replicates - start)
        draw = rng.integers(0, n, (b, n)) + n * np.arange(b)[:, None]
        weights = np.bincount(draw.ravel(), minlength=b * n).reshape(b, n).astype(np.float32)  # how often each image
        acc = (weights @ table).reshape(b, 1 + n_trials, n_scales) / n
        p, r = acc[:, :1], acc[:, 1:]
        trials = np.where(r > 0, p / np.where(r > 0, r, 1.0), np.nan)  # (b, N, S)
        trials = np.take_along_axis(trials, rng.integers(0, n_trials, (b, n_trials))[:, :, None], axis=1)
        ratio = trial_mean(trials)
        out.append(ratio[:, 1:] - ratio[:, :1])
    return np.concatenate(out) if out else np.zeros((0, n_scales - 1))


# ----------------------------------------------------------------------------------------------------
# The latency prediction's response measures (latency.py, CORnet-S): a unit's center response r(t, z) over the
# recurrent steps t of its area and the zooms z, as an array (..., T, Z).

def onset(r):
    """L(z): the first step t at which r(t, z) reaches half of the maximum over every (t, z) of the unit; T (one past
    the last step) where it never does, or where the unit's maximum is not positive. (..., T, Z) -> (..., Z) ints."""
    r = np.asarray(r, dtype=np.float64)
    peak = r.max(axis=(-2, -1), keepdims=True)
    reached = (r >= 0.5 * peak) & (peak > 0)
    return np.where(reached.any(axis=-2), reached.argmax(axis=-2), r.shape[-2])


def time_to_peak(r):
    """The step at which r(t, z) is largest over t, per zoom (the first such step on ties). (..., T, Z) -> (..., Z)."""
    return np.asarray(r, dtype=np.float64).argmax(axis=-2)


def early_fraction(r):
    """r(0, z) / max_t r(t, z), per zoom: how much of its largest response a unit gives at the first step; NaN where
    max_t r(t, z) is not positive. (..., T, Z) -> (..., Z)."""
    r = np.asarray(r, dtype=np.float64)
    top = r.max(axis=-2)
    return np.where(top > 0, r[..., 0, :] / np.where(top > 0, top, 1.0), np.nan)


def small_minus_large(v, zoom):
    """The mean of a per-zoom measure (..., Z) over the zoomed-out views (zoom < 1: the feature small) minus its mean over
    the zoomed-in ones (zoom > 1: the feature large); NaNs left out of each mean. The prediction: an onset's is < 0."""
    v, zoom = np.asarray(v, dtype=np.float64), np.asarray(zoom, dtype=np.float64)

    def mean(part):
        ok = np.isfinite(part)
        n = ok.sum(-1)
        return np.where(n > 0, np.where(ok, part, 0.0).sum(-1) / np.maximum(n, 1), np.nan)
    return mean(v[..., zoom < 1]) - mean(v[..., zoom > 1])
