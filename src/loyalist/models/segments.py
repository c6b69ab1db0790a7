"""Segmentation models: RFM quintile scores with named segments, and data-driven micro-segments.

Pure numeric code (numpy + scikit-learn), vectorised, no I/O.

RFM scores
----------
Each of recency (days since the last purchase; fewer is better), frequency (purchase occasions) and monetary
(revenue) is scored 1..5 by quintile of the customers: score = 1 + floor(5 * share of customers strictly
worse), so tied customers always share a score (a plain `qcut` would split ties arbitrarily, and frequency is
heavily tied: often a third of customers have one order). With no ties this is the usual quintile score.

Named segments come from the R x FM grid, FM = round-half-up((F + M) / 2). The grid is the widely used RFM
segment map (R against frequency, e.g. the ten-segment map popularised on the Online Retail data), with the
monetary score folded in the way Putler's RFM chart plots R against the average of F and M
(putler.com/rfm-analysis), and "lost" carved out of "hibernating" as the lowest cell (Putler's list and the
rfm R package's example segments also name a "Lost" segment of the lowest R, F and M scores). The grid is a
complete partition, so every customer gets exactly one segment:

    R \\ FM   1                2                  3                  4                5
    5        new              potential loyalists potential loyalists champions      champions
    4        promising        potential loyalists potential loyalists loyal          loyal
    3        about to sleep   about to sleep      need attention      loyal          loyal
    2        hibernating      hibernating         at risk             at risk        cannot lose them
    1        lost             hibernating         at risk             at risk        cannot lose them

Micro-segments
--------------
k-means (scikit-learn `KMeans`, k-means++ starts, n_init=10, fixed `random_state`) on standardised behaviour
features; the number of clusters k is the one with the highest mean silhouette coefficient (Rousseeuw 1987,
J. Comput. Appl. Math. 20:53-65) over a range of k, measured on a seeded sample. The rows are sorted by
customer id before fitting and clusters are numbered by descending centre of the first feature (value), so the
same data gives the same segments and names on every run, whatever order the rows arrive in. Written here only
the glue (feature transform, naming); the clustering and the silhouette are scikit-learn's.
"""

from __future__ import annotations

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

RFM_SEGMENTS = ("champions", "loyal", "potential loyalists", "new", "promising", "need attention",
                "about to sleep", "at risk", "cannot lose them", "hibernating", "lost")

_GRID = np.array([
    # FM:  1                 2                      3                      4              5
    ["lost", "hibernating", "at risk", "at risk", "cannot lose them"],                     # R = 1
    ["hibernating", "hibernating", "at risk", "at risk", "cannot lose them"],              # R = 2
    ["about to sleep", "about to sleep", "need attention", "loyal", "loyal"],              # R = 3
    ["promising", "potential loyalists", "potential loyalists", "loyal", "loyal"],         # R = 4
    ["new", "potential loyalists", "potential loyalists", "champions", "champions"],       # R = 5
], dtype=object)

RFM_DESCRIPTIONS = {
    "champions": "bought recently, buy often and spend the most",
    "loyal": "buy often and spend well; still recent",
    "potential loyalists": "recent customers with a few orders and average spend",
    "new": "bought for the first time very recently",
    "promising": "recent buyers with a single small history so far",
    "need attention": "middling recency, frequency and spend; slipping",
    "about to sleep": "below-average recency with little history",
    "at risk": "used to buy often and spend well, but not for a while",
    "cannot lose them": "among the biggest and most frequent buyers, but silent for a long time",
    "hibernating": "last bought long ago, few orders, low spend",
    "lost": "the lowest recency, frequency and spend",
}

RFM_ACTIONS = {
    "champions": "Reward and keep close: early access, account-manager contact; no discounts needed.",
    "loyal": "Upsell higher-value and adjacent products; ask for reviews and referrals.",
    "potential loyalists": "Build the habit: a reorder reminder at their cycle, a loyalty offer on the next order.",
    "new": "Onboard: a welcome contact and a reason for the second order within the usual first gap.",
    "promising": "Show the range: recommendations from look-alike customers, a small second-order incentive.",
    "need attention": "Re-engage with a time-limited offer based on what they bought before.",
    "about to sleep": "Reactivate cheaply: a reminder of popular products, a modest incentive.",
    "at risk": "Win back personally: contact them, ask what changed, a tailored offer on their usual products.",
    "cannot lose them": "Call now: senior contact, find the reason for the silence, a strong tailored offer.",
    "hibernating": "Low-cost automated reactivation only; do not spend sales time.",
    "lost": "Leave out of paid campaigns; include in occasional low-cost newsletters at most.",
}


def _oriented(values: np.ndarray, higher_is_better: bool) -> np.ndarray:
    v = np.asarray(values, float)
    v = np.where(np.isnan(v), -np.inf if higher_is_better else np.inf, v)
    return v if higher_is_better else -v


def quintile_cuts(values: np.ndarray, counts: np.ndarray | None = None, higher_is_better: bool = True
                  ) -> np.ndarray:
    """The four cut points of `quintile_score`, in its oriented scale (higher is better, NaN = -inf), from all
    the values, or from the distinct values and how many customers have each (`counts`; what an engine that
    cannot hold every customer collects). Score >= s + 1 exactly when the value exceeds the c-th smallest
    value, c = ceil(s n / 5) (as 1 + floor(5 below / n) >= s + 1 <=> below >= s n / 5), so the four order
    statistics c = ceil(n/5) .. ceil(4n/5) decide every score."""
    v = _oriented(values, higher_is_better)
    c = np.ones(len(v), np.int64) if counts is None else np.asarray(counts, np.int64)
    n = int(c.sum())
    if n == 0:
        return np.full(4, np.inf)
    order = np.argsort(v, kind="stable")
    cum = np.cumsum(c[order])
    ks = (np.arange(1, 5) * n + 4) // 5  # ceil(s n / 5), s = 1..4
    return v[order][np.searchsorted(cum, ks, side="left")]


def quintile_from_cuts(values: np.ndarray, cuts: np.ndarray, higher_is_better: bool = True) -> np.ndarray:
    """1..5 from the cut points of `quintile_cuts` (any subset of the customers, e.g. one partition)."""
    v = _oriented(values, higher_is_better)
    return (1 + (v[:, None] > np.asarray(cuts, float)[None, :]).sum(axis=1)).astype(np.int64)


def quintile_score(values: np.ndarray, higher_is_better: bool = True) -> np.ndarray:
    """1..5: 1 + floor(5 * share of customers strictly worse); ties share a score; NaN counts as worst."""
    return quintile_from_cuts(values, quintile_cuts(values, None, higher_is_better), higher_is_better)


RfmCuts = tuple[np.ndarray, np.ndarray, np.ndarray]


def rfm_cuts(days_since_last: np.ndarray, orders: np.ndarray, revenue: np.ndarray,
             counts: tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None] = (None, None, None)) -> RfmCuts:
    """The cut points of the R, F and M scores (`quintile_cuts`); with `counts`, each input is the distinct
    values of that feature and `counts` how many customers have each."""
    return (quintile_cuts(days_since_last, counts[0], higher_is_better=False), quintile_cuts(orders, counts[1]),
            quintile_cuts(revenue, counts[2]))


def rfm_scores(days_since_last: np.ndarray, orders: np.ndarray, revenue: np.ndarray, cuts: RfmCuts | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(R, F, M) scores 1..5 by quintile (recency: fewer days is better). `cuts` (`rfm_cuts` of all customers)
    lets a part of the customers be scored as within the whole; default: these customers are the whole."""
    cuts = cuts if cuts is not None else rfm_cuts(days_since_last, orders, revenue)
    return (quintile_from_cuts(days_since_last, cuts[0], higher_is_better=False),
            quintile_from_cuts(orders, cuts[1]), quintile_from_cuts(revenue, cuts[2]))


def rfm_segment(r: np.ndarray, f: np.ndarray, m: np.ndarray) -> np.ndarray:
    """The named segment of each customer from the R x FM grid (module docstring)."""
    fm = np.floor((np.asarray(f) + np.asarray(m)) / 2 + 0.5).astype(np.int64).clip(1, 5)
    return _GRID[np.asarray(r, np.int64).clip(1, 5) - 1, fm - 1]


# --- micro-segments -----------------------------------------------------------------------------------

FEATURES = ("value", "cycle", "regularity", "breadth", "trend", "returns")
"""Columns of the clustering matrix, in this order (see `behaviour_matrix`)."""

_WORDS = {  # (word when the centre is high, word when low); None = not distinctive in that direction
    "value": ("high-value", "low-value"),
    "cycle": ("infrequent", "frequent"),
    "regularity": ("erratic", "regular"),
    "breadth": ("broad-range", "narrow-range"),
    "trend": ("growing", "declining"),
    "returns": ("high-returns", None),
}


def behaviour_matrix(revenue: np.ndarray, cycle_days: np.ndarray, cycle_cv: np.ndarray, products: np.ndarray,
                     trend: np.ndarray, return_rate: np.ndarray, cv_fill: float | None = None) -> np.ndarray:
    """The clustering features, one row per customer (columns `FEATURES`), before scaling:
    log revenue, log cycle (days), gap CV (median-imputed for two-order customers, whose one gap has no
    spread), log distinct products, trend in [-1, 1], sqrt of the return rate (tames its long right tail).
    `cv_fill`: the value imputed (`cv_fill_value` of all the customers clustered, so a part of them can be
    transformed alone); default: computed from these rows."""
    cv = np.asarray(cycle_cv, float).copy()
    cv[~np.isfinite(cv)] = cv_fill_value(cv) if cv_fill is None else cv_fill
    return np.column_stack([
        np.log1p(np.maximum(np.asarray(revenue, float), 0.0)),
        np.log1p(np.maximum(np.nan_to_num(np.asarray(cycle_days, float), nan=0.0), 0.0)),
        cv,
        np.log1p(np.asarray(products, float)),
        np.asarray(trend, float),
        np.sqrt(np.clip(np.asarray(return_rate, float), 0.0, 1.0)),
    ])


def cv_fill_value(cycle_cv: np.ndarray) -> float:
    """The gap CV imputed in `behaviour_matrix`: the median of the finite ones (0 when there are none)."""
    cv = np.asarray(cycle_cv, float)
    return float(np.nanmedian(np.where(np.isfinite(cv), cv, np.nan))) if np.isfinite(cv).any() else 0.0


class MicroSegments:
    """k-means micro-segments with k chosen by silhouette; sklearn-style (`fit` returns self).

    Parameters: k_min, k_max (range of cluster counts tried), sample (rows used for the silhouette, default 2000),
    clip_quantile (features winsorised to [q, 1 - q] before standardising, so a few giant wholesalers do not
    get a cluster of their own), random_state.
    Fitted: scaler_, kmeans_, k_, silhouettes_ {k: score}, lower_, upper_ (winsorising bounds),
    centers_z_ (cluster centres in standard units, clusters renumbered), labels_ (in the input row order).
    """

    def __init__(self, k_min: int = 3, k_max: int = 10, sample: int = 2000, clip_quantile: float = 0.01,
                 random_state: int = 0):
        self.k_min = k_min
        self.k_max = k_max
        self.sample = sample
        self.clip_quantile = clip_quantile
        self.random_state = random_state

    def _prep(self, X: np.ndarray) -> np.ndarray:
        return self.scaler_.transform(np.clip(X, self.lower_, self.upper_))

    def fit(self, X: np.ndarray) -> MicroSegments:
        # One thread: the matrices are small (customers x 6), and OpenMP/BLAS worker threads that spin-wait
        # made k-means ~25x slower on a busy 2-core machine (measured: 2.7 s vs 0.1 s for one k).
        with threadpool_limits(limits=1):
            return self._fit(X)

    def _fit(self, X: np.ndarray) -> MicroSegments:
        X = np.asarray(X, float)
        if X.ndim != 2 or not np.isfinite(X).all():
            raise ValueError("MicroSegments.fit needs a finite 2-D feature matrix")
        n = len(X)
        if n < max(self.k_min, 2) + 1:
            raise ValueError(f"only {n} customers to cluster; need more than {max(self.k_min, 2)}")
        self.lower_ = np.quantile(X, self.clip_quantile, axis=0)
        self.upper_ = np.quantile(X, 1 - self.clip_quantile, axis=0)
        self.scaler_ = StandardScaler().fit(np.clip(X, self.lower_, self.upper_))
        Z = self._prep(X)
        Z[:, self.scaler_.scale_ == 0] = 0.0
        rng = np.random.default_rng(self.random_state)
        idx = np.sort(rng.choice(n, size=min(n, self.sample), replace=False))
        k_hi = min(self.k_max, n - 1, len(np.unique(Z[idx], axis=0)) - 1)
        self.silhouettes_: dict[int, float] = {}
        fits: dict[int, KMeans] = {}
        for k in range(max(self.k_min, 2), k_hi + 1):
            km = KMeans(n_clusters=k, n_init=10, random_state=self.random_state).fit(Z)
            labels = km.labels_[idx]
            if len(np.unique(labels)) < 2:
                continue
            self.silhouettes_[k] = float(silhouette_score(Z[idx], labels))
            fits[k] = km
        if not fits:
            raise ValueError("the customers' behaviour is too uniform to form segments")
        self.k_ = max(self.silhouettes_, key=lambda k: (round(self.silhouettes_[k], 6), -k))
        km = fits[self.k_]
        order = np.lexsort((np.arange(self.k_), -km.cluster_centers_[:, 0]))  # by value, descending
        remap = np.empty(self.k_, np.int64)
        remap[order] = np.arange(self.k_)
        self.kmeans_ = km
        self._remap = remap
        self.centers_z_ = km.cluster_centers_[order]
        self.labels_ = remap[km.labels_]
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        Z = self._prep(np.asarray(X, float))
        Z[:, self.scaler_.scale_ == 0] = 0.0
        return self._remap[self.kmeans_.predict(Z)]


def cluster_names(centers_z: np.ndarray, features: tuple[str, ...] = FEATURES, threshold: float = 0.5
                  ) -> list[str]:
    """A readable, unique name per cluster from its most distinctive features (|centre| >= threshold
    standard deviations, strongest first): two words, three when two clusters would share a name, then a
    number as the last resort; "typical" when nothing stands out."""
    words: list[list[str]] = []
    for c in centers_z:
        picks = []
        for j in np.argsort(-np.abs(c), kind="stable"):
            if abs(c[j]) < threshold:
                break
            word = _WORDS[features[j]][0 if c[j] > 0 else 1]
            if word is not None:
                picks.append(word)
        words.append(picks or ["typical"])
    names = [", ".join(w[:2]) for w in words]
    names = [", ".join(w[:3]) if names.count(n) > 1 else n for w, n in zip(words, names)]
    dup = {n for n in names if names.count(n) > 1}
    seen: dict[str, int] = {}
    for i, name in enumerate(list(names)):
        if name in dup:
            seen[name] = seen.get(name, 0) + 1
            names[i] = f"{name} ({seen[name]})"
    return names


# --- customer value ---------------------------------------------------------------------------------------

def growth_factor_from_trend(trend: np.ndarray) -> np.ndarray:
    """Growth adjustment from the spend trend in [-1, 1] (`loyalist.features.behaviour`): 1 + trend / 2,
    i.e. 0.5 (nothing bought lately) .. 1.5 (everything bought lately); NaN -> 1 (no adjustment)."""
    t = np.nan_to_num(np.asarray(trend, float), nan=0.0).clip(-1, 1)
    return 1 + t / 2


def growth_factor_from_rate(growth_rate: np.ndarray) -> np.ndarray:
    """Growth adjustment from a fractional growth rate (+0.2 = growing 20%): 1 + rate, kept within
    [0.5, 1.5] so one noisy estimate cannot dominate the score; NaN -> 1."""
    g = np.nan_to_num(np.asarray(growth_rate, float), nan=0.0)
    return (1 + g).clip(0.5, 1.5)


def value_score(clv_revenue: np.ndarray, margin: np.ndarray | float, growth: np.ndarray, p_alive: np.ndarray
                ) -> np.ndarray:
    """value = predicted CLV (revenue) x margin x growth factor x P(alive).

    The CLV of the customer-base model is already an expectation over P(alive) (Fader, Hardie & Lee 2005,
    "RFM and CLV", eq. 2: expected discounted transactions x expected spend); multiplying by P(alive) once more
    is a deliberate risk adjustment: of two customers with the same expected value, the one whose value is
    more certain ranks higher (a certainty-equivalent for a risk-averse investor). NaN CLV counts as 0."""
    clv = np.nan_to_num(np.asarray(clv_revenue, float), nan=0.0)
    return clv * np.asarray(margin, float) * np.asarray(growth, float) * np.nan_to_num(np.asarray(p_alive, float))


def percentile(score: np.ndarray) -> np.ndarray:
    """0..100: the share of customers with a lower score, ties counted half (mid-rank percentile)."""
    s = np.asarray(score, float)
    n = len(s)
    if n == 0:
        return np.zeros(0)
    srt = np.sort(s)
    below = np.searchsorted(srt, s, side="left")
    equal = np.searchsorted(srt, s, side="right") - below
    return 100 * (below + 0.5 * equal) / n


def grade(score: np.ndarray, a_share: float = 0.2, b_share: float = 0.3) -> np.ndarray:
    """A for the top `a_share` of customers by score, B for the next `b_share`, C for the rest. Exactly
    round(a_share * n) customers are A (ties at the boundary broken by position, i.e. customer id when the
    rows are sorted by it), so a baseline can be compared with the same number of A customers."""
    s = np.asarray(score, float)
    n = len(s)
    order = np.lexsort((np.arange(n), -s))  # best first, stable
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    n_a = round(a_share * n)
    n_b = round((a_share + b_share) * n)
    return np.where(rank < n_a, "A", np.where(rank < n_b, "B", "C")).astype(object)
