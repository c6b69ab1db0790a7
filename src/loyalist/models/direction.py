"""Direction of each customer, product-mix shift and dissatisfaction signals: pure numpy/scipy on the
per-customer aggregates of `loyalist.features.direction` (one array element per customer, no loop).

Trend (growing / stable / declining / lapsed)
    The customer's own repeat-purchase rate in the recent window (last `trend_recent_days`, n2 orders, spend
    s2) is compared with their own earlier rate (the `trend_early_days` before it, from their first purchase
    at the earliest, n1, s1). Exposure can be seasonal (`seasonal`): each day counts by the whole base's
    (smoothed) repeat-purchase activity that day (a Poisson model with a log-exposure offset), so a gift
    wholesaler's pre-Christmas rush does not make every customer look growing; off by default, since on the
    tuning cutoffs plain days did better (customers do not share one seasonal profile).
    * Order rate: the exact conditional test of two Poisson rates (Przyborowski & Wilenski 1940): given
      n = n1 + n2, n2 ~ Binomial(n, e2 / (e1 + e2)) when the rate did not change; two-sided p-value.
    * Spend rate: a score test for the rate of a compound Poisson process: under "no change" the spend
      rate estimate s/e has variance (second-moment rate) * (1/e1 + 1/e2), the second-moment rate pooled
      as (q1 + q2) / (e1 + e2) with q the sum of squared order values (the compound-Poisson variance,
      e.g. Kendall & Stuart; Ross, Introduction to Probability Models, sec. 5.4.2).
    * Silence (one-sided, declining only): given the n = n1 + n2 repeat orders of both windows, and under
      "no change" their (seasonally weighted) times independent and uniform over the windows' exposure
      e1 + e2, the chance that none fell after the customer's last order (exposure e_gap from that order to
      as_of) is (1 - e_gap / (e1 + e2)) ** n, an exact p-value (the order statistics of a Poisson process
      given its count). It catches the customer who simply stopped, which a 2-month count carries too little
      evidence for.
    `trend_test` chooses which of them are used ("spend+silence", the default, "orders+spend",
    "orders+spend+silence", "spend"); their p-values are combined with Bonferroni (p = min(1, k min p_i)
    over the k tests), so a customer whose behaviour did not change is labelled growing or declining with
    probability <= alpha (default 5%); the test `tests/test_direction.py` checks this on simulated stable
    customers. When the order-rate test is used and is itself significant in the opposite direction of the
    spend test, the customer stays stable. Customers with too little
    history (less than `min_history_days` before the window or fewer than `min_orders` repeat orders) are
    "stable" with no confidence (NaN), never labelled on noise.
    `seasonal` (default False) turns the seasonal exposure on or off (off: every day counts 1).
    Defaults (61-day recent window, spend+silence, no seasonal exposure, >= 5 repeat orders) were chosen on
    held-out tuning cutoffs of Online Retail II (2010-04-01 .. 2010-09-01) only and evaluated on later
    cutoffs (also with a nested rolling-origin choice per cutoff): see bench/direction.py and
    bench/results/direction.json. The year-over-year comparison and the season guard below are design
    choices, not tuned (see there).
    Year over year (`trend_compare` = "last_year", the default): when the customer's history covers the same
    recent window one year earlier, the tests compare the recent window with it instead of with the year
    before, so a customer who buys for Christmas every autumn is compared with last autumn (a seasonal
    business's peaks are not growth); customers with less history keep the year-before comparison.
    Season guard (`season_guard` g, default 1.25; 0 = off): for a customer compared with the year before, a
    rise while the whole base's purchase occasions per day are more than g times those of the customer's
    early window is confounded with the season (the customer may just be a seasonal buyer, which one year of
    history cannot tell), so it is not labelled growing; likewise a fall while the base is below 1/g of its
    earlier activity is not labelled declining. A fall during the base's rise (or a rise during its fall)
    is still labelled. The reason says so. Neither setting was tuned: no tuning cutoff of the benchmark has
    a year-ago window or a seasonal swing beyond g (see bench/results/direction.json).
    Known limit: the guard cannot tell a season from a base that shrinks for good. On the CDNOW master file
    (one cohort that ages and buys less and less) the base's activity was 0.3-0.5 of that in the customers'
    comparison windows, so the guard held back nearly every significant fall (declining labels at 1 of 6
    cutoffs; bench/results/direction.json, `independent_cdnow_master`).
    Lapsed: no order for longer than max(`lapse_min_days`, `lapse_factor` x the customer's usual gap).
    Growth rate: the ratio of recent to earlier (seasonally adjusted) spend (and order) rate, annualised over
    the distance between the windows' midpoints: (r2 / r1) ** (365 / d) - 1, clipped to [-100%, +1000%].
    12-month projection: the recent (seasonally adjusted) run-rate continued with that growth (capped at
    `max_projected_growth` per year), integrated over the next 12 months.

Mix shift
    Spend shares over product groups in half-year windows (0 = recent). The recent mix is compared with the
    pooled past mix by total-variation distance TV = 1/2 sum |p - q| (in [0, 1]); the customer's normal
    variation is the leave-one-out TV of each past window against the rest of the past. A shift is flagged
    when the recent TV exceeds the largest past one by `mix_margin` and is at least `mix_min_tv`.

Written by hand: the tests and rules are a few lines of scipy.stats each; no library packages this
per-entity comparison of a subject against its own history.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

YEAR = 365.25


@dataclass(frozen=True)
class DirectionParams:
    recent_days: int = 182
    trend_recent_days: int = 61
    trend_early_days: int = 365
    alpha: float = 0.05
    min_history_days: int = 90
    min_orders: int = 5
    trend_test: str = "spend+silence"
    seasonal: bool = False
    trend_compare: str = "last_year"
    season_guard: float = 1.25
    lapse_min_days: int = 180
    lapse_factor: float = 3.0
    max_projected_growth: float = 1.0


def poisson_rate_test(n1: np.ndarray, e1: np.ndarray, n2: np.ndarray, e2: np.ndarray) -> np.ndarray:
    """Two-sided exact conditional p-value of H0: rate1 == rate2 for counts n1, n2 over exposures e1, e2."""
    n1, e1, n2, e2 = (np.asarray(x, float) for x in (n1, e1, n2, e2))
    n = n1 + n2
    with np.errstate(invalid="ignore", divide="ignore"):
        pi0 = e2 / (e1 + e2)
        lo = stats.binom.cdf(n2, n, pi0)
        hi = stats.binom.sf(n2 - 1, n, pi0)
    p = np.minimum(1.0, 2 * np.minimum(lo, hi))
    return np.where((n > 0) & (e1 > 0) & (e2 > 0), p, 1.0)


def spend_rate_test(s1, q1, e1, s2, q2, e2) -> tuple[np.ndarray, np.ndarray]:
    """(z, two-sided p) of H0: equal spend rates, compound-Poisson score test (see the module docstring)."""
    s1, q1, e1, s2, q2, e2 = (np.asarray(x, float) for x in (s1, q1, e1, s2, q2, e2))
    with np.errstate(invalid="ignore", divide="ignore"):
        var = (q1 + q2) / (e1 + e2) * (1 / e1 + 1 / e2)
        z = (s2 / e2 - s1 / e1) / np.sqrt(var)
    z = np.where(np.isfinite(z), z, 0.0)
    return z, 2 * stats.norm.sf(np.abs(z))


def silence_test(n: np.ndarray, e_total: np.ndarray, e_gap: np.ndarray) -> np.ndarray:
    """One-sided p-value that no order fell in the last `e_gap` of exposure although the n orders are, under
    "no change", uniform over `e_total` (see the module docstring): (1 - e_gap / e_total) ** n."""
    n, e_total, e_gap = (np.asarray(x, float) for x in (n, e_total, e_gap))
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.power(np.clip(1 - e_gap / e_total, 0.0, 1.0), n)
    return np.where((n > 0) & (e_total > 0) & (e_gap > 0), p, 1.0)


TREND_TESTS = ("spend+silence", "orders+spend", "orders+spend+silence", "spend")
TREND_COMPARE = ("year_before", "last_year")


def annualised(ratio: np.ndarray, distance_days: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        g = np.power(ratio, YEAR / distance_days) - 1
    g = np.where(ratio == 0, -1.0, g)
    return np.clip(np.where(np.isnan(ratio), np.nan, g), -1.0, 10.0)


def seasonal_index(daily: np.ndarray, smooth_days: int = 7) -> np.ndarray:
    """Daily activity of the whole base (repeat-purchase occasions per day), smoothed with a centred moving
    average and scaled to mean 1: a "typical day" is worth 1, a pre-Christmas day more, a holiday less."""
    x = np.asarray(daily, float)
    k = np.ones(smooth_days)
    num = np.convolve(x, k, mode="same")
    den = np.convolve(np.ones_like(x), k, mode="same")
    sm = num / den
    mean = sm.mean() if len(sm) and sm.mean() > 0 else 1.0
    return sm / mean if sm.mean() > 0 else np.ones_like(x)


def classify_trend(first_age_days, last_age_days, orders, n_early, s_early, q_early, n_recent, s_recent, q_recent,
                   early_exposure, recent_exposure, early_days,
                   params: DirectionParams = DirectionParams(), gap_exposure=None,
                   last_year=None, base_swing=None) -> dict[str, np.ndarray]:
    """Trend label, growth rates, confidence and run-rates for each customer.

    first_age_days / last_age_days: days from the first / last purchase to as_of; n/s/q_early and
    n/s/q_recent: repeat orders, spend and sum of squared order values in the early and recent trend windows;
    early_exposure / recent_exposure: the windows' seasonal exposure (sum of `seasonal_index` over their
    days; the early window starts after the customer's first purchase); early_days: its length in days;
    gap_exposure: exposure from the day after the last purchase to as_of (needed by the silence test; when
    None, the silence test is skipped).
    last_year: (n, s, q, exposure, days) of the same recent window one year (365 days) earlier, counted after
    the customer's first purchase; used instead of the early window when params.trend_compare ==
    "last_year" and the customer's history covers that whole window (days == trend_recent_days); the
    silence test keeps the early + recent windows.
    base_swing: the whole base's purchase occasions per day in the recent window over those in the customer's
    early window; with params.season_guard = g > 0, a customer compared with the year before (not year over
    year) is not labelled growing when base_swing > g, nor declining when base_swing < 1 / g (see the module
    docstring); None: no guard.
    Returns arrays (season_guarded: +1 / -1 where a significant rise / fall was not labelled because of the
    season guard, else 0; compared_with: "last_year" or "year_before"): trend, trend_score (signed -log10 p: > 0 growing evidence, < 0 declining; 0 when not
    eligible), driver (which test decided: orders / spend / silence), growth_rate (spend, annualised), order_growth_rate, trend_confidence, p_value,
    early_rate, recent_rate (seasonally adjusted orders per year), run_rate_prev, run_rate (seasonally
    adjusted annual spend rate before / in the recent window), projected_12m (growing customers only, else
    NaN), usual_gap_days, eligible, lapse_after_days.
    """
    R = float(params.trend_recent_days)
    first_age, last_age, orders = (np.asarray(x, float) for x in (first_age_days, last_age_days, orders))
    n1, s1, q1, n2, s2, q2 = (np.asarray(x, float) for x in (n_early, s_early, q_early, n_recent, s_recent, q_recent))
    e1, e2, d1 = (np.asarray(x, float) for x in (early_exposure, recent_exposure, early_days))
    if params.trend_test not in TREND_TESTS:
        raise ValueError(f"trend_test must be one of {', '.join(TREND_TESTS)}, not {params.trend_test!r}")
    if params.trend_compare not in TREND_COMPARE:
        raise ValueError(f"trend_compare must be one of {', '.join(TREND_COMPARE)}, not {params.trend_compare!r}")
    use = params.trend_test.split("+")
    if gap_exposure is None:
        use = [u for u in use if u != "silence"]
    # the silence test always spans the early + recent windows (all the customer's recent history)
    p_silence = (silence_test(n1 + n2, e1 + e2, np.asarray(gap_exposure, float))
                 if "silence" in use else np.ones_like(e2))
    distance = (d1 + R) / 2
    yoy = np.zeros(e2.shape, bool)
    if params.trend_compare == "last_year" and last_year is not None:
        ny, sy, qy, ey, dy = (np.asarray(x, float) for x in last_year)
        yoy = (dy >= R) & (ey > 0)
        n1, s1, q1, e1 = (np.where(yoy, a, b) for a, b in ((ny, n1), (sy, s1), (qy, q1), (ey, e1)))
        d1 = np.where(yoy, np.maximum(d1, R), d1)
        distance = np.where(yoy, 365.0, distance)
    eligible = (d1 >= params.min_history_days) & (n1 + n2 >= params.min_orders) & (e1 > 0) & (e2 > 0)
    p_orders = poisson_rate_test(n1, e1, n2, e2)
    z, p_spend = spend_rate_test(s1, q1, e1, s2, q2, e2)
    count_sign = np.sign(np.nan_to_num(n2 / np.where(e2 > 0, e2, np.nan) - n1 / np.where(e1 > 0, e1, np.nan)))
    tests = {"orders": (p_orders, count_sign), "spend": (p_spend, np.sign(z)),
             "silence": (p_silence, -np.ones_like(z))}
    ps = np.vstack([tests[u][0] for u in use])
    signs = np.vstack([tests[u][1] for u in use])
    best = np.argmin(ps, axis=0)
    p = np.minimum(1.0, len(use) * ps.min(axis=0))
    sign = np.take_along_axis(signs, best[None], axis=0)[0]
    driver = np.asarray(use, dtype=object)[best]
    conflict = ((p_orders < params.alpha) & (count_sign == -np.sign(z))) if "orders" in use else np.zeros_like(p, bool)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate1, rate2 = n1 / e1, n2 / e2
        spend1, spend2 = s1 / e1, s2 / e2
        growth = annualised(spend2 / spend1, distance)
        order_growth = annualised(rate2 / rate1, distance)
        usual_gap = np.where(orders > 1, (first_age - last_age) / (orders - 1), np.nan)
    guarded = np.zeros(e2.shape, bool)
    if params.season_guard > 0 and base_swing is not None:
        swing = np.asarray(base_swing, float)
        guarded = ~yoy & (((sign > 0) & (swing > params.season_guard))
                          | ((sign < 0) & (swing < 1 / params.season_guard)))
    significant = eligible & (p < params.alpha) & ~conflict
    score = np.where(eligible & ~conflict & ~guarded, sign * -np.log10(np.maximum(p, 1e-300)), 0.0)
    season_guarded = significant & guarded
    significant &= ~guarded
    trend = np.full(e1.shape, "stable", dtype=object)
    trend[significant & (sign > 0)] = "growing"
    trend[significant & (sign < 0)] = "declining"
    lapse_after = np.maximum(params.lapse_min_days, params.lapse_factor * np.nan_to_num(usual_gap, nan=0.0))
    lapsed = last_age > lapse_after
    trend[lapsed] = "lapsed"
    confidence = np.where(eligible, 1 - p, np.nan)
    gap_for = np.where(np.isfinite(usual_gap), usual_gap, lapse_after)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        confidence = np.where(lapsed, 1 - np.exp(-last_age / gap_for), confidence)
    run_rate = spend2 * YEAR
    g = np.clip(np.nan_to_num(growth, nan=0.0), -0.99, params.max_projected_growth)
    k = np.log1p(g)
    # the recent run-rate is measured at the window's midpoint (R/2 ago); continue it with growth k a year
    with np.errstate(invalid="ignore", divide="ignore"):
        factor = np.exp(k * R / 2 / YEAR) * np.where(np.abs(k) > 1e-9, np.expm1(k) / k, 1.0)
    projected = np.where(trend == "growing", run_rate * factor, np.nan)
    score = np.where(lapsed, 0.0, score)
    return {"trend": trend, "trend_score": score, "driver": driver, "growth_rate": np.where(eligible, growth, np.nan),
            "order_growth_rate": np.where(eligible, order_growth, np.nan),
            "trend_confidence": confidence, "p_value": np.where(eligible, p, np.nan),
            "early_rate": rate1 * YEAR, "recent_rate": rate2 * YEAR, "run_rate_prev": spend1 * YEAR,
            "run_rate": run_rate, "projected_12m": projected, "usual_gap_days": usual_gap, "eligible": eligible,
            "lapse_after_days": lapse_after, "compared_with": np.where(yoy, "last_year", "year_before"),
            "season_guarded": np.where(season_guarded & ~lapsed, sign, 0.0)}


def mix_shift(customer: np.ndarray, window: np.ndarray, group: np.ndarray, spend: np.ndarray, n_customers: int,
              n_windows: int, min_tv: float = 0.35, margin: float = 0.1) -> dict[str, np.ndarray]:
    """Recent-vs-own-past product-mix distance per customer (see the module docstring).

    Inputs are long arrays (customer index, window 0..n_windows-1, group index, spend > 0). Returns per
    customer: tv_recent, tv_normal (largest leave-one-out past distance), past_windows, flagged; and per
    (customer, group) pair: pair_customer, pair_group, share_recent, share_past (for naming what moved).
    """
    customer, window, group = (np.asarray(x, np.int64) for x in (customer, window, group))
    spend = np.asarray(spend, float)
    pair_key, pair_idx = np.unique(customer * (group.max(initial=0) + 1) + group, return_inverse=True)
    n_pairs = len(pair_key)
    pair_customer = np.zeros(n_pairs, np.int64)
    pair_group = np.zeros(n_pairs, np.int64)
    pair_customer[pair_idx] = customer
    pair_group[pair_idx] = group
    m = np.zeros((n_pairs, n_windows))
    np.add.at(m, (pair_idx, window), spend)
    totals = np.zeros((n_customers, n_windows))
    np.add.at(totals, (customer, window), spend)
    past = m[:, 1:].sum(axis=1)
    past_total = totals[:, 1:].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        share_recent = m[:, 0] / totals[pair_customer, 0]
        share_past = past / past_total[pair_customer]
        tv_recent = 0.5 * np.bincount(pair_customer, np.abs(share_recent - share_past), n_customers)
        loo = np.full((n_customers, n_windows - 1), np.nan)
        for k in range(1, n_windows):  # a loop over the few windows, not over customers
            rest_total = past_total - totals[:, k]
            pk = m[:, k] / totals[pair_customer, k]
            rest = (past - m[:, k]) / rest_total[pair_customer]
            d = 0.5 * np.bincount(pair_customer, np.abs(pk - rest), n_customers)
            ok = (totals[:, k] > 0) & (rest_total > 0)
            loo[:, k - 1] = np.where(ok, d, np.nan)
    past_windows = (totals[:, 1:] > 0).sum(axis=1)
    has_recent = totals[:, 0] > 0
    tv_recent = np.where(has_recent & (past_total > 0), tv_recent, np.nan)
    tv_normal = np.where(past_windows >= 2, np.nanmax(np.where(np.isnan(loo), -np.inf, loo), axis=1), np.nan)
    tv_normal = np.where(np.isfinite(tv_normal), tv_normal, np.nan)
    flagged = (past_windows >= 2) & (tv_recent >= min_tv) & (tv_recent > tv_normal + margin)
    return {"tv_recent": tv_recent, "tv_normal": tv_normal, "past_windows": past_windows, "flagged": flagged,
            "pair_customer": pair_customer, "pair_group": pair_group,
            "share_recent": np.nan_to_num(share_recent, nan=0.0), "share_past": np.nan_to_num(share_past, nan=0.0)}


def dissatisfaction(recent_spend, prior_spend, returned_recent, returned_prior, return_lines_recent,
                    b_recent, ls_recent, ls2_recent, b_prior, ls_prior, ls2_prior,
                    gaps_early, gap_sum_early, gaps_recent, gap_sum_recent, last_age_days,
                    range_recent, range_prior, alpha: float = 0.05) -> dict[str, np.ndarray]:
    """Four flags, each with the numbers behind it (arrays per customer).

    - returns: share of value returned or cancelled in the recent window >= 10% and >= 5 points above
      the prior window's, with at least 2 return lines.
    - baskets: geometric-mean basket in the recent window below 75% of the prior window's, and Welch's
      one-sided t-test on log basket value significant at `alpha` (>= 2 orders in each window).
    - gaps: the current gap (the open one since the last order, or the mean of the recent gaps if larger)
      more than twice the customer's usual earlier gap and at least 21 days longer (>= 3 earlier gaps).
    - range: distinct products in the recent window below half of the prior window's (prior >= 10).
    """
    a = {k: np.asarray(v, float) for k, v in locals().items() if k != "alpha"}
    with np.errstate(invalid="ignore", divide="ignore"):
        ret_recent = a["returned_recent"] / (a["recent_spend"] + a["returned_recent"])
        ret_prior = a["returned_prior"] / (a["prior_spend"] + a["returned_prior"])
        ret_prior = np.nan_to_num(ret_prior, nan=0.0)
        returns = (ret_recent >= 0.10) & (ret_recent >= ret_prior + 0.05) & (a["return_lines_recent"] >= 2)
        m1, m0 = a["ls_recent"] / a["b_recent"], a["ls_prior"] / a["b_prior"]
        v1 = (a["ls2_recent"] - a["b_recent"] * m1 ** 2) / (a["b_recent"] - 1)
        v0 = (a["ls2_prior"] - a["b_prior"] * m0 ** 2) / (a["b_prior"] - 1)
        se2 = np.maximum(v1, 0) / a["b_recent"] + np.maximum(v0, 0) / a["b_prior"]
        t = (m1 - m0) / np.sqrt(se2)
        df = se2 ** 2 / ((np.maximum(v1, 0) / a["b_recent"]) ** 2 / (a["b_recent"] - 1)
                         + (np.maximum(v0, 0) / a["b_prior"]) ** 2 / (a["b_prior"] - 1))
        p_basket = stats.t.cdf(t, np.maximum(df, 1))
        basket_ratio = np.exp(m1 - m0)
        baskets = (a["b_recent"] >= 2) & (a["b_prior"] >= 2) & (basket_ratio < 0.75) & (p_basket < alpha)
        usual_gap = a["gap_sum_early"] / a["gaps_early"]
        recent_gap = a["gap_sum_recent"] / a["gaps_recent"]
        current_gap = np.fmax(a["last_age_days"], recent_gap)
        gaps = (a["gaps_early"] >= 3) & (current_gap > 2 * usual_gap) & (current_gap - usual_gap >= 21)
        rng = (a["range_prior"] >= 10) & (a["range_recent"] < 0.5 * a["range_prior"])
    return {"flag_returns": returns, "return_share_recent": ret_recent, "return_share_prior": ret_prior,
            "flag_baskets": baskets, "basket_ratio": basket_ratio, "basket_recent": np.exp(m1),
            "basket_prior": np.exp(m0), "basket_p": p_basket,
            "flag_gaps": gaps, "current_gap_days": current_gap, "usual_gap_days": usual_gap,
            "flag_range": rng, "range_recent": a["range_recent"], "range_prior": a["range_prior"]}
