"""Student t distribution (via the regularized incomplete beta function) and one-sided Welch tests."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction for the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lbt = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(lbt) * _betacf(a, b, x) / a
    return 1.0 - math.exp(lbt) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """CDF of Student's t with ``df`` (real, > 0) degrees of freedom; df = inf gives the normal CDF."""
    if math.isinf(df):
        return 0.5 * math.erfc(-t / math.sqrt(2.0))
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_sf(t: float, df: float) -> float:
    """Survival function P(T > t)."""
    return t_cdf(-t, df)


def _mean_var(xs: Sequence[float]) -> tuple[float, float]:
    n = len(xs)
    mean = sum(xs) / n
    var = sum((x - mean) ** 2 for x in xs) / (n - 1) if n > 1 else 0.0
    return mean, var


@dataclass
class WelchResult:
    """One-sided test of H1: mean(sota) - mean(new) > margin."""

    delta: float
    t: float
    df: float
    p: float
    n_new: int
    n_sota: int


def welch_one_sided(new: Sequence[float], sota: Sequence[float] | float, margin: float = 0.0) -> WelchResult:
    """Welch t-test that ``new`` is lower than ``sota`` by more than ``margin`` (one-sample if sota is a number).

    t = (mean_sota - mean_new - margin) / sqrt(s_new^2/n + s_sota^2/m), Welch–Satterthwaite df, p = P(T > t).
    """
    if len(new) < 2:
        raise ValueError("need at least 2 values for a t-test")
    mx, vx = _mean_var(new)
    n = len(new)
    if isinstance(sota, (int, float)):
        my, vy, m = float(sota), 0.0, 0
    else:
        if len(sota) == 1:
            my, vy, m = float(sota[0]), 0.0, 0
        else:
            my, vy = _mean_var(sota)
            m = len(sota)
    a = vx / n
    b = vy / m if m else 0.0
    se = math.sqrt(a + b)
    delta = my - mx
    if se == 0.0:
        t = math.inf if delta > margin else -math.inf if delta < margin else 0.0
        return WelchResult(delta, t, float(n - 1), 0.0 if delta > margin else 1.0, n, m)
    t = (delta - margin) / se
    if m:
        df = (a + b) ** 2 / (a * a / (n - 1) + (b * b / (m - 1) if m > 1 else 0.0)) if (a or b) else float(n + m - 2)
    else:
        df = float(n - 1)
    return WelchResult(delta, t, df, t_sf(t, df), n, m)
