"""utils/sweep/stats.py against cases computed by hand (the numbers are written out below with their derivation)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from utils.sweep import stats
from utils.sweep.aggregate import adjust_for_multiple_comparisons, build_table, paired_stats

NAN = math.nan


def _same(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all((math.isnan(x) and math.isnan(y)) or x == pytest.approx(y, abs=1e-12)
                                    for x, y in zip(a, b))


def test_holm_step_down_cumulative_max_nan_excluded():
    # family of m = 4 (the NaN is not a member): sorted 0.01, 0.03, 0.04, 0.5
    # -> 4 * 0.01 = 0.04; 3 * 0.03 = 0.09; 2 * 0.04 = 0.08, raised to the running max 0.09; 1 * 0.5 = 0.5
    assert _same(stats.holm([0.01, 0.04, 0.03, NAN, 0.5]), [0.04, 0.09, 0.09, NAN, 0.5])


def test_holm_cap_at_one_ties_and_edge_cases():
    assert _same(stats.holm([0.3, 0.4]), [0.6, 0.6])  # 2 * 0.3 = 0.6; 1 * 0.4 = 0.4 -> max 0.6
    assert _same(stats.holm([0.6, 0.7]), [1.0, 1.0])  # 1.2 capped at 1; 0.7 -> max 1
    assert _same(stats.holm([0.02, 0.02, 0.02]), [0.06, 0.06, 0.06])  # 3 * 0.02; 2 * 0.02 -> max; 0.02 -> max
    assert _same(stats.holm([0.05]), [0.05])  # a family of one is not adjusted
    assert _same(stats.holm([NAN, NAN]), [NAN, NAN]) and stats.holm([]) == []


# d = [1, 2, 3, 4, 5]: mean 3, sum of squared deviations 10, var (ddof 1) 2.5, n = 5, 4 degrees of freedom.
# Student's t with 4 dof has the closed-form CDF F(t) = 1/2 + 3/8 * u * (1 - t^2 / (12 (1 + t^2/4))),
# u = t / sqrt(1 + t^2/4); the p-values below are 2 (1 - F(|t|)) evaluated with it.
DIFFS = [1.0, 2.0, 3.0, 4.0, 5.0]


PLAIN_P = 0.013235599563682587  # se = sqrt(2.5 / 5) = 0.70711, t = 3 / 0.70711 = 3 sqrt(2) = 4.24264


def test_paired_stats_hand_case():
    """aggregate.paired_stats on accuracies whose differences are DIFFS (percentage points)."""
    values = {s: (50.0 + d) / 100 for s, d in enumerate(DIFFS)}
    out = paired_stats(values, {s: 0.5 for s in values}, n_train=60, n_test=20)
    assert out["delta_mean"] == pytest.approx(3.0) and out["delta_std"] == pytest.approx(math.sqrt(2.5))
    assert out["p_ttest"] == pytest.approx(PLAIN_P, rel=1e-9)
    assert out["p_nb"] == pytest.approx(0.060169846503578484, rel=1e-9)
    assert (out["ci_low"], out["ci_high"]) == (pytest.approx(3 - 1.9632432, abs=1e-6),
                                               pytest.approx(3 + 1.9632432, abs=1e-6))
    # sizes unknown (runs recorded before they were): no corrected test
    assert math.isnan(paired_stats(values, {s: 0.5 for s in values})["p_nb"])


def test_corrected_resampled_ttest_hand_case():
    # n_train 60, n_test 20 (a 60/20/20 split of 100): variance factor 1/5 + 20/60 = 8/15,
    # se^2 = 2.5 * 8/15 = 4/3, t = 3 / sqrt(4/3) = 3 sqrt(3) / 2 = 2.59808 -> p = 0.0601698
    assert stats.corrected_resampled_ttest(DIFFS, 60, 20) == pytest.approx(0.060169846503578484, rel=1e-9)
    # larger than the plain test's p on the same differences: the overlap of the seeds' test sets is accounted for
    assert stats.corrected_resampled_ttest(DIFFS, 60, 20) > PLAIN_P
    # the sign of the mean does not matter (two-sided)
    assert stats.corrected_resampled_ttest([-d for d in DIFFS], 60, 20) == pytest.approx(0.060169846503578484)


def test_tests_undefined_cases():
    for p in (stats.corrected_resampled_ttest([2.0], 60, 20),
              stats.corrected_resampled_ttest(DIFFS, None, 20), stats.corrected_resampled_ttest(DIFFS, 60, 0)):
        assert math.isnan(p)
    assert stats.corrected_resampled_ttest([0.0, 0.0], 6, 2) == 1.0
    assert stats.corrected_resampled_ttest([0.5, 0.5], 6, 2) == 0.0  # zero spread, non-zero mean: t is infinite


def test_t_interval_hand_case():
    # t_{0.975, 4} = 2.7764451 (tables: 2.776); half width 2.7764451 * 0.70710678 = 1.9632432
    low, high = stats.t_interval(DIFFS)
    assert low == pytest.approx(3 - 1.9632432, abs=1e-6) and high == pytest.approx(3 + 1.9632432, abs=1e-6)
    # consistent with the t-test: the 95 % interval excludes 0 exactly when p < 0.05
    from scipy import stats as sp

    for diffs in ([1.0, -0.5, 2.0], [1.0, 1.2, 0.9, 1.1]):
        low, high = stats.t_interval(diffs)
        assert (low > 0) == (sp.ttest_1samp(diffs, 0.0).pvalue < 0.05)
    assert all(math.isnan(v) for v in stats.t_interval([1.0]))


def test_power_at_zero_effect_is_alpha_and_matches_a_simulation():
    assert stats.paired_t_power(5, 0.0, 0.05) == pytest.approx(0.05, abs=1e-9)
    # simulated power of the paired t-test, n = 5 seeds, effect 1.5, alpha 0.05; tolerance 4 binomial SEs
    rng = np.random.default_rng(0)
    draws = 20000
    d = rng.normal(1.5, 1.0, size=(draws, 5))
    t = d.mean(1) / (d.std(1, ddof=1) / math.sqrt(5))
    from scipy import stats as sp

    simulated = float(np.mean(np.abs(t) > sp.t.ppf(0.975, 4)))
    predicted = stats.paired_t_power(5, 1.5, 0.05)
    assert abs(simulated - predicted) < 4 * math.sqrt(predicted * (1 - predicted) / draws)


def test_seeds_for_power_is_minimal_and_the_correction_caps_power():
    n = stats.seeds_for_power(2.0, 0.05 / 16)
    assert stats.paired_t_power(n, 2.0, 0.05 / 16) >= 0.8 > stats.paired_t_power(n - 1, 2.0, 0.05 / 16)
    # corrected test: noncentrality effect / sqrt(1/n + 1/3) stays below effect * sqrt(3) however many seeds
    assert stats.seeds_for_power(1.0, 0.05 / 16, inflation=1 / 3, max_n=200) is None


def _runs(method: str, mode: str, accuracies: list[float], config: str = "") -> list[dict]:
    """Rows as utils.sweep.collect gives them: one configuration (``config_digest``), the same data (``_data``)."""
    return [{"database": "D", "mode": mode, "seed": seed, "method": method, "accuracy": acc, "wall_time_s": 1.0,
             "peak_mem_mb": None, "config": config, "config_digest": f"{method}-{config}", "_data": "d",
             "run_dir": f"{config}/{method}/{mode}/{seed}"} for seed, acc in enumerate(accuracies)]


def test_build_table_holm_over_the_method_rows_of_a_column():
    # Student's t with 2 dof: two-sided p = 1 - |t| / sqrt(2 + t^2).
    # KD differences 1, 2, 3 pp: mean 2, sd 1, t = 2 sqrt(3) -> p = 1 - sqrt(12/14) = 0.07417990
    # DML differences 1, 1, 4 pp: mean 2, sd sqrt(3), t = 2 -> p = 1 - 2/sqrt(6) = 0.1835034
    # Holm, m = 2: 2 * 0.07417990 = 0.1483598; 1 * 0.1835034 -> running max 0.1835034
    # m2 holds KD alone: a family of one, not adjusted
    runs = (_runs("S", "m1", [0.50, 0.50, 0.50]) + _runs("KD", "m1", [0.51, 0.52, 0.53])
            + _runs("DML", "m1", [0.51, 0.51, 0.54]) + _runs("T", "m1+m2", [0.60, 0.61, 0.62])
            + _runs("S", "m2", [0.40, 0.40, 0.40]) + _runs("KD", "m2", [0.41, 0.42, 0.43]))
    table = {(r["mode"], r["method"]): r for r in build_table(runs, metric_for=lambda database: "accuracy")}
    kd, dml = table[("m1", "KD")], table[("m1", "DML")]
    assert kd["p_ttest"] == pytest.approx(0.0741799, abs=1e-7)
    assert dml["p_ttest"] == pytest.approx(0.1835034, abs=1e-7)
    assert kd["p_ttest_holm"] == pytest.approx(0.1483598, abs=1e-7)
    assert dml["p_ttest_holm"] == pytest.approx(0.1835034, abs=1e-7)
    assert table[("m2", "KD")]["p_ttest_holm"] == pytest.approx(0.0741799, abs=1e-7)
    # Wilcoxon, 3 positive differences: the exact two-sided p is 2 / 2^3 = 0.25 for both; Holm: 0.5 and 0.5
    assert kd["p_wilcoxon"] == pytest.approx(0.25) and kd["p_wilcoxon_holm"] == pytest.approx(0.5)
    assert dml["p_wilcoxon_holm"] == pytest.approx(0.5)
    for key in (("m1", "T"), ("m1", "S-m2"), ("m1", "S")):  # teachers and no-KD: not in the family
        assert math.isnan(table[key]["p_ttest_holm"]) and math.isnan(table[key]["p_wilcoxon_holm"])


def test_holm_families_are_per_configuration():
    def row(method, group, p, config=None):
        out = {"database": "D", "mode": "m1", "method": method, "group": group, "p_ttest": p, "p_wilcoxon": NAN}
        return out if config is None else {**out, "config": config}

    table = [row("T", "teacher", 0.001), row("S", "no-kd", 0.001), row("KD", "multimodal-teacher", 0.01),
             row("DML", "teacher-free", 0.02, ""), row("KD", "multimodal-teacher", 0.01, "epochs=3"),
             row("RKD", "multimodal-teacher", NAN, "epochs=3")]
    adjust_for_multiple_comparisons(table)
    # configuration "" (absent counts as ""): KD 0.01, DML 0.02 -> 0.02, 0.02; "epochs=3": KD alone (NaN excluded)
    assert [r["p_ttest_holm"] for r in table[2:5]] == [pytest.approx(0.02), pytest.approx(0.02), pytest.approx(0.01)]
    assert math.isnan(table[5]["p_ttest_holm"]) and math.isnan(table[0]["p_ttest_holm"])


def test_report_marks_use_holm_and_ranks_are_per_configuration():
    """Two sweep configurations in one directory: each is its own Holm family and its own ranking."""
    from utils.sweep.report import tables, to_markdown

    base = [0.50, 0.50, 0.50, 0.50]
    # cfg-a: KD +2, +3, +2, +3 points (t = 2.5 / (0.57735 / 2) = 8.66, 3 dof, p = 0.0032), DML +1, -1, +2, 0
    # cfg-b: KD +1, +3, +1, +3 (t = 2 / (1.1547 / 2) = 3.464, p = 0.0405) and DML twice that (the same p):
    #        both below 0.05 unadjusted, both 2 * 0.0405 = 0.081 after Holm over the two: no mark
    runs = (_runs("S", "m1", base, "cfg-a") + _runs("KD", "m1", [0.52, 0.53, 0.52, 0.53], "cfg-a")
            + _runs("DML", "m1", [0.51, 0.49, 0.52, 0.50], "cfg-a")
            + _runs("S", "m1", base, "cfg-b") + _runs("KD", "m1", [0.51, 0.53, 0.51, 0.53], "cfg-b")
            + _runs("DML", "m1", [0.52, 0.56, 0.52, 0.56], "cfg-b"))
    table = {(r["config"], r["method"]): r for r in build_table(runs, metric_for=lambda database: "accuracy")}
    assert table[("cfg-a", "KD")]["p_ttest_holm"] < 0.05
    for method in ("KD", "DML"):
        assert table[("cfg-b", method)]["p_ttest"] == pytest.approx(0.0405, abs=1e-4)
        assert table[("cfg-b", method)]["p_ttest_holm"] == pytest.approx(2 * table[("cfg-b", method)]["p_ttest"])
    md = to_markdown(tables(list(table.values())))
    assert "| KD [cfg-a] | **52.50 ± 0.58 *** |" in md and "| DML [cfg-a] | <u>50.50 ± 1.29</u> |" in md
    assert "| DML [cfg-b] | **54.00 ± 2.31** |" in md and "| KD [cfg-b] | <u>52.00 ± 1.15</u> |" in md
    title = md.splitlines()[0]
    assert "p < 0.05 after Holm-Bonferroni adjustment" in title
