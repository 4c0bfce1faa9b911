"""Statistics of the comparison table, as pure functions of plain numbers (no torch; scipy for the t distribution).

* :func:`holm`: Holm-Bonferroni step-down adjusted p-values of one family of tests.
* :func:`corrected_resampled_ttest`: the corrected resampled t-test of Nadeau & Bengio ("Inference for the
  Generalization Error", Machine Learning 52, 2003). Every seed re-splits the same data, so two seeds' test sets
  (and training sets) overlap and their paired differences are positively correlated; the plain paired t-test
  treats them as independent and understates the variance of their mean. The correction inflates the variance
  of the mean difference from ``s^2 / n`` to ``(1/n + n_test/n_train) s^2``; t has ``n - 1`` degrees of freedom.
* :func:`t_interval`: the t confidence interval of the paired mean difference (the interval the plain paired
  t-test inverts; unadjusted for multiple comparisons).
* :func:`paired_t_power` / :func:`seeds_for_power`: the power of a two-sided paired t-test from the noncentral t
  distribution, and the fewest seeds that reach a given power (docs/statistics.md tabulates them).

Conventions: a difference vector with fewer than two values gives NaN; a vector whose values are all zero gives
p = 1.0 (no evidence of a difference; the tests are undefined there), all equal and non-zero gives p = 0.0.
"""
from __future__ import annotations

import math
from collections.abc import Sequence


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the order given.

    The family is the non-NaN values (m of them): sorted ascending, the i-th smallest (i = 1..m) gets
    ``(m - i + 1) * p_(i)``, then the running maximum over i (step-down: an adjusted p-value never falls below
    that of a smaller raw p-value), capped at 1. NaN values stay NaN and do not count in m.
    """
    values = [float(p) for p in pvalues]
    family = sorted((p, index) for index, p in enumerate(values) if not math.isnan(p))
    m = len(family)
    adjusted = [math.nan] * len(values)
    running = 0.0
    for rank, (p, index) in enumerate(family):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[index] = running
    return adjusted


def _mean_sd(diffs: Sequence[float]) -> tuple[float, float]:
    n = len(diffs)
    mean = sum(diffs) / n
    return mean, math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))


def _t_pvalue(mean: float, se: float, dof: int) -> float:
    from scipy import stats

    if se == 0.0:
        return 1.0 if mean == 0.0 else 0.0
    return float(2.0 * stats.t.sf(abs(mean / se), dof))


def corrected_resampled_ttest(diffs: Sequence[float], n_train: int | None, n_test: int | None) -> float:
    """Two-sided p-value of Nadeau & Bengio's corrected resampled t-test.

    ``t = mean(d) / sqrt((1/n + n_test/n_train) * var(d))`` (``var`` with ddof 1), ``n - 1`` degrees of freedom.
    ``n_train`` / ``n_test``: the training and test set sizes of one split (all seeds use the same sizes). NaN when
    they are unknown or there are fewer than two differences.
    """
    n = len(diffs)
    if n < 2 or not n_train or not n_test or n_train <= 0 or n_test <= 0:
        return math.nan
    mean, sd = _mean_sd(diffs)
    return _t_pvalue(mean, sd * math.sqrt(1.0 / n + n_test / n_train), n - 1)


def t_interval(diffs: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """The two-sided ``level`` t-interval of the mean difference: ``mean ± t_{(1+level)/2, n-1} * sd / sqrt(n)``."""
    from scipy import stats

    n = len(diffs)
    if n < 2:
        return math.nan, math.nan
    mean, sd = _mean_sd(diffs)
    half = float(stats.t.ppf(0.5 + level / 2.0, n - 1)) * sd / math.sqrt(n)
    return mean - half, mean + half


def paired_t_power(n: int, effect: float, alpha: float, inflation: float = 0.0) -> float:
    """Power of the two-sided paired t-test at level ``alpha`` with ``n`` seeds and standardised effect ``effect``.

    ``effect`` = true mean difference / true standard deviation of one seed's difference. The statistic follows a
    noncentral t with ``n - 1`` degrees of freedom and noncentrality ``effect / sqrt(1/n + inflation)``
    (``inflation`` = 0 for the plain test, ``n_test/n_train`` for the corrected resampled test, whose statistic is
    computed with that variance; this treats the seeds' differences as independent, the optimistic case).
    """
    from scipy import stats

    dof = n - 1
    critical = float(stats.t.ppf(1.0 - alpha / 2.0, dof))
    ncp = effect / math.sqrt(1.0 / n + inflation)
    return float(stats.nct.sf(critical, dof, ncp) + stats.nct.cdf(-critical, dof, ncp))


def seeds_for_power(effect: float, alpha: float, power: float = 0.8, inflation: float = 0.0,
                    max_n: int = 1000) -> int | None:
    """The fewest seeds (>= 2) whose :func:`paired_t_power` reaches ``power``; None when none up to ``max_n`` does."""
    for n in range(2, max_n + 1):
        if paired_t_power(n, effect, alpha, inflation) >= power:
            return n
    return None
