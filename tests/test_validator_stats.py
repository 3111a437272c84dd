"""Student t CDF and Welch test against closed forms, table values and independent numerical integration."""

from __future__ import annotations

import math

import numpy as np
import pytest

from validator.stats import betainc, t_cdf, welch_one_sided


def _t_sf_numeric(t: float, df: float) -> float:
    """P(T > t) by trapezoidal integration of the t density (independent of the beta-function route)."""
    x = np.linspace(t, t + 400.0, 2_000_001)
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    pdf = c * (1 + x * x / df) ** (-(df + 1) / 2)
    return float(np.sum((pdf[1:] + pdf[:-1]) * np.diff(x)) / 2)


@pytest.mark.parametrize("t", [-3.0, -0.5, 0.0, 0.7, 2.5, 12.0])
def test_closed_forms(t: float) -> None:
    assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)  # Cauchy
    assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)
    assert t_cdf(t, math.inf) == pytest.approx(0.5 * math.erfc(-t / math.sqrt(2)), abs=1e-15)


@pytest.mark.parametrize(("t", "df", "p"), [(2.228138852, 10, 0.975), (2.015048373, 5, 0.95),
                                            (3.182446305, 3, 0.975), (1.644853627, math.inf, 0.95),
                                            (2.602480295, 15, 0.99)])
def test_table_quantiles(t: float, df: float, p: float) -> None:
    assert t_cdf(t, df) == pytest.approx(p, abs=1e-8)


@pytest.mark.parametrize(("t", "df"), [(1.3, 3.31), (-0.4, 4.7), (2.9, 2.2)])
def test_fractional_df_against_integration(t: float, df: float) -> None:
    assert 1 - t_cdf(t, df) == pytest.approx(_t_sf_numeric(t, df), abs=2e-6)


def test_betainc_symmetry() -> None:
    for a, b, x in [(0.5, 2.5, 0.3), (3.0, 1.5, 0.8), (10.0, 10.0, 0.5)]:
        assert betainc(a, b, x) + betainc(b, a, 1 - x) == pytest.approx(1.0, abs=1e-12)
    assert betainc(10.0, 10.0, 0.5) == pytest.approx(0.5, abs=1e-12)


def test_welch_two_sample_matches_independent_computation() -> None:
    new = [1.0810, 1.0816, 1.0807]
    sota = [1.0852, 1.0845, 1.0861, 1.0849]
    margin = 0.0019
    a, b = np.var(new, ddof=1) / 3, np.var(sota, ddof=1) / 4
    t = (np.mean(sota) - np.mean(new) - margin) / math.sqrt(a + b)
    df = (a + b) ** 2 / (a * a / 2 + b * b / 3)
    res = welch_one_sided(new, sota, margin)
    assert res.t == pytest.approx(t, rel=1e-12) and res.df == pytest.approx(df, rel=1e-12)
    assert res.p == pytest.approx(_t_sf_numeric(t, df), abs=2e-6)
    assert res.delta == pytest.approx(np.mean(sota) - np.mean(new), rel=1e-12)


def test_welch_one_sample_vs_number() -> None:
    new = [1.0800, 1.0810, 1.0790]
    res = welch_one_sided(new, 1.0900, 0.0)
    t = (1.09 - 1.08) / (np.std(new, ddof=1) / math.sqrt(3))
    assert res.t == pytest.approx(t) and res.df == 2
    assert res.p == pytest.approx(0.5 - t / (2 * math.sqrt(2 + t * t)), abs=1e-12)  # df=2 closed form
    with pytest.raises(ValueError):
        welch_one_sided([1.0], 1.1)
