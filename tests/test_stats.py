"""stats.py's tests of the claims, on scipy.stats, against the hand-written versions they replaced (kept here, as they
were in ablate.py and tuning.py, as the reference), and on planted data whose answer is known."""

import itertools
import math

import numpy as np
import pytest

import stats

# ----------------------------------------------------------------------------------------------------
# The references: the hand-written versions, as they were.


def old_sign_flip_p(d, permutations, seed):
    """ablate.py's sign_flip_p before scipy: every flip when 2^N <= permutations, else random flips."""
    d = np.asarray(d, dtype=np.float64)
    d = d[np.isfinite(d)]
    if not len(d):
        return None, "no trials"
    tol = 1e-12 * max(1.0, float(np.abs(d).max()))
    observed = d.mean()
    if 2 ** len(d) <= permutations:
        signs = 1 - 2 * ((np.arange(2 ** len(d))[:, None] >> np.arange(len(d))) & 1)
        return float(((signs * d).mean(1) <= observed + tol).mean()), "exact"
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(permutations, len(d)))
    k = int(((signs * d).mean(1) <= observed + tol).sum())
    return (1 + k) / (1 + permutations), f"{permutations} random flips"


def old_ranks_auc(x, y):
    """tuning.py's AUC before scipy: tie-averaged ranks, (R_x - n_x (n_x + 1) / 2) / (n_x n_y)."""
    both = np.concatenate([x, y])
    order = np.argsort(both, kind="stable")
    ranks = np.empty(len(both))
    ranks[order] = np.arange(1, len(both) + 1)
    for v in np.unique(both):  # ties share their mean rank
        ranks[both == v] = ranks[both == v].mean()
    return ranks, lambda r: (r[:len(x)].sum() - len(x) * (len(x) + 1) / 2) / (len(x) * len(y))


def old_mann_whitney(x, y, permutations, seed):
    """tuning.py's mann_whitney before scipy: always random relabellings, p = (1 + k) / (1 + permutations)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    if not len(x) or not len(y):
        return None, None
    ranks, auc = old_ranks_auc(x, y)
    observed = auc(ranks)
    rng = np.random.default_rng(seed)
    shuffled = np.array([auc(rng.permutation(ranks)) for _ in range(permutations)])
    k = int((np.abs(shuffled - 0.5) >= abs(observed - 0.5) - 1e-12).sum())
    return float(observed), (1 + k) / (1 + permutations)


def exact_mann_whitney_p(x, y):
    """The two-sided p over every relabelling (the old statistic, enumerated): for small samples."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ranks, auc = old_ranks_auc(x, y)
    observed = abs(auc(ranks) - 0.5)
    n, k, hits = len(ranks), len(x), 0
    for chosen in itertools.combinations(range(n), k):
        r = np.concatenate([ranks[list(chosen)], np.delete(ranks, chosen)])
        hits += abs(auc(r) - 0.5) >= observed - 1e-12
    return hits / math.comb(n, k)


def planted(seed, nx, ny, shift=0.0, levels=None):
    """Two samples, y shifted by `shift`; rounded to `levels` distinct values when given (ties)."""
    g = np.random.default_rng(seed)
    x, y = g.normal(0, 1, nx), g.normal(shift, 1, ny)
    if levels:
        x, y = np.round(x * levels / 4) / levels, np.round(y * levels / 4) / levels
    return x, y


# ----------------------------------------------------------------------------------------------------
# Mann-Whitney: AUC and the two-sided permutation p.

@pytest.mark.parametrize("seed,nx,ny,levels", [(0, 5, 4, None), (1, 7, 9, 2), (2, 30, 20, 3), (3, 50, 80, 1), (4, 3, 40, 2)])
def test_auc_equals_the_tie_averaged_ranks_exactly(seed, nx, ny, levels):
    x, y = planted(seed, nx, ny, 0.3, levels)
    if levels:
        assert len(np.unique(np.concatenate([x, y]))) < nx + ny  # the planted data has ties
    auc, _ = stats.mann_whitney(x, y, 100, 0)
    ranks, old_auc = old_ranks_auc(x, y)
    assert auc == old_auc(ranks)
    assert stats.mann_whitney(x, y, 100, 0)[0] == old_mann_whitney(x, y, 100, 0)[0]


@pytest.mark.parametrize("seed,nx,ny,levels", [(0, 4, 4, None), (1, 5, 3, 2), (2, 6, 5, 3), (3, 3, 7, 1)])
def test_exact_p_equals_the_enumeration(seed, nx, ny, levels):
    """Few relabellings (C(n, n_x) <= permutations): scipy enumerates them all, as the reference does here."""
    x, y = planted(seed, nx, ny, 0.8, levels)
    assert math.comb(nx + ny, nx) <= 1000
    assert stats.mann_whitney(x, y, 1000, 0)[1] == pytest.approx(exact_mann_whitney_p(x, y), abs=1e-12)


def test_a_sample_of_one():
    """scipy's permutation_test wants two observations a sample; stats enumerates the n relabellings instead."""
    for x, y in [([3.0], [1.0, 2.0, 2.0, 5.0]), ([1.0, 2.0, 2.0, 5.0], [3.0]), ([0.5], [1.0, 2.0, 3.0]), ([2.0], [1.0])]:
        ranks, auc = old_ranks_auc(np.array(x), np.array(y))
        assert stats.mann_whitney(x, y, 1000, 0) == (auc(ranks), pytest.approx(exact_mann_whitney_p(x, y), abs=1e-12))
    assert stats.sign_flip_p([-0.2], 10000, 0) == old_sign_flip_p([-0.2], 10000, 0) == (0.5, "exact")
    assert stats.sign_flip_p([0.2, np.nan], 10000, 0) == old_sign_flip_p([0.2], 10000, 0) == (1.0, "exact")


@pytest.mark.parametrize("shift", [0.0, 0.4])
def test_random_p_agrees_within_sampling_error(shift):
    """Many relabellings: both draw random ones (p = (1 + k) / (1 + P)); they agree within a few standard errors."""
    x, y = planted(5, 40, 35, shift, 3)
    n = 4000
    p_new, p_old = stats.mann_whitney(x, y, n, 0)[1], old_mann_whitney(x, y, n, 1)[1]
    se = math.sqrt(max(p_old * (1 - p_old), 1 / n) / n)
    assert abs(p_new - p_old) < 5 * math.sqrt(2) * se, (p_new, p_old)


def test_clearly_shifted_samples_give_auc_near_one_and_a_small_p():
    x, y = planted(6, 60, 50, -3.0)  # y far below x: P(X > Y) near 1
    auc, p = stats.mann_whitney(x, y, 2000, 0)
    assert auc > 0.95 and p == 1 / 2001  # no random relabelling is as extreme
    auc, p = stats.mann_whitney(y, x, 2000, 0)  # the other way round: AUC near 0, the same two-sided p
    assert auc < 0.05 and p == 1 / 2001
    auc, p = stats.mann_whitney(*planted(7, 60, 50, 0.0), 2000, 0)  # no effect
    assert 0.35 < auc < 0.65 and p > 0.05


def test_mann_whitney_leaves_out_nans_and_is_seeded():
    x, y = planted(8, 25, 30, 0.5, 2)
    with_nans = np.concatenate([x, [np.nan, np.inf]]), np.concatenate([[np.nan], y])
    assert stats.mann_whitney(*with_nans, 500, 3) == stats.mann_whitney(x, y, 500, 3)
    assert stats.mann_whitney(x, y, 500, 3) == stats.mann_whitney(x, y, 500, 3)  # deterministic for a seed
    assert stats.mann_whitney([np.nan], y, 500, 3) == (None, None)


# ----------------------------------------------------------------------------------------------------
# Paired sign flips: the one-sided p of 'mean(d) < 0'.

@pytest.mark.parametrize("seed,n", [(0, 2), (1, 4), (2, 8), (3, 10), (4, 13)])
def test_exact_sign_flip_p_equals_the_enumeration(seed, n):
    d = np.random.default_rng(seed).normal(-0.1, 0.2, n)
    assert 2 ** n <= 10000
    assert stats.sign_flip_p(d, 10000, 0) == old_sign_flip_p(d, 10000, 0)


def test_exact_sign_flips_with_ties_and_zeros():
    d = np.array([-0.2, 0.2, -0.2, 0.0, -0.1, 0.1, -0.3])  # equal magnitudes and a zero: many flips tie the observed mean
    assert stats.sign_flip_p(d, 10000, 0) == old_sign_flip_p(d, 10000, 0)


@pytest.mark.parametrize("shift", [-0.05, 0.0])
def test_random_sign_flip_p_agrees_within_sampling_error(shift):
    d = np.random.default_rng(9).normal(shift, 0.2, 20)  # 2^20 flips: both draw random ones
    n = 5000
    (p_new, how_new), (p_old, how_old) = stats.sign_flip_p(d, n, 0), old_sign_flip_p(d, n, 0)
    assert how_new == how_old == f"{n} random flips"
    se = math.sqrt(max(p_old * (1 - p_old), 1 / n) / n)
    assert abs(p_new - p_old) < 5 * math.sqrt(2) * se, (p_new, p_old)


def test_sign_flips_on_a_known_effect_and_seeded():
    below = -np.linspace(0.1, 0.3, 12)  # every trial below: only the observed signs reach that mean
    assert stats.sign_flip_p(below, 10000, 0) == (1 / 4096, "exact")
    assert stats.sign_flip_p(-below, 10000, 0) == (1.0, "exact")  # the claim's direction only: above is no evidence
    d = np.random.default_rng(10).normal(-0.02, 0.1, 25)
    assert stats.sign_flip_p(d, 999, 4) == stats.sign_flip_p(d, 999, 4)  # deterministic for a seed
    assert stats.sign_flip_p(d, 999, [4, 21, 0])[0] == stats.sign_flip_p(d, 999, [4, 21, 0])[0]  # seeds as ablate.py passes them
    assert stats.sign_flip_p(np.concatenate([d, [np.nan]]), 999, 4) == stats.sign_flip_p(d, 999, 4)


def test_latency_measures_on_planted_responses():
    """onset, time_to_peak and early_fraction against loops written from their definitions, on responses whose steps
    and zooms are told apart (T = 4 steps, Z = 3 zooms: an axis mix-up moves the values)."""
    r = np.array([[[0.1, 0.0, 0.9],  # unit 0: the small-scale zoom (column 2) is early, the large one (0) late
                   [0.2, 0.3, 1.0],
                   [0.6, 0.4, 0.2],
                   [1.2, 0.5, 0.1]],
                  [[-1.0, -0.5, -0.2], [-0.3, -0.1, -0.4], [-0.2, -0.9, -0.1], [-0.5, -0.6, -0.3]]])  # unit 1: never positive
    on, peak, early = stats.onset(r), stats.time_to_peak(r), stats.early_fraction(r)
    T, Z = r.shape[1:]
    for u in range(2):
        top = r[u].max()
        for z in range(Z):
            first = next((t for t in range(T) if top > 0 and r[u, t, z] >= 0.5 * top), T)
            assert on[u, z] == first, (u, z)
            assert peak[u, z] == max(range(T), key=lambda t: (r[u, t, z], -t))
            col = max(r[u, t, z] for t in range(T))
            assert (np.isnan(early[u, z]) and col <= 0) or early[u, z] == r[u, 0, z] / col
    assert on[0].tolist() == [2, 4, 0] and on[1].tolist() == [4, 4, 4]  # zoom 1 never reaches 0.6 = half of 1.2
    assert peak[0].tolist() == [3, 3, 1] and np.isnan(early[1]).all()
