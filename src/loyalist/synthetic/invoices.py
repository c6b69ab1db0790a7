"""Synthetic B2B invoice and payment histories with known healthy and deteriorating payers.

Each customer is invoiced a few times a month on fixed terms (14, 30, 45 or 60 days) and pays a number of
days beyond terms drawn around their own habit. Healthy customers keep their habit; a third of them are
chronically slow but steady (15-35 days late, every time), so a score that only looks at the level of
lateness cannot tell them from deteriorating ones. Deteriorating customers start slipping at an onset 3 to 9
months before `as_of`: each month after it they pay 4-12 days later than before, dispute more invoices and
leave some unpaid. Payments after `as_of` are unknown (paid_date empty), as in a real ledger export.

Columns of `invoices` are those of `loyalist ingest --kind invoices` (invoice_id, customer_id, invoice_date,
due_date, amount, paid_date, disputed), so `write_csv` output loads with the ordinary ingest.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd


@dataclass
class SyntheticInvoices:
    invoices: pd.DataFrame
    truth: pd.DataFrame
    """customer_id, deteriorating (bool), onset (date, NaT for healthy), habit_days (usual days beyond terms)."""
    as_of: dt.date

    def write_csv(self, path: str | Path) -> Path:
        path = Path(path)
        df = self.invoices.copy()
        for c in ("invoice_date", "due_date", "paid_date"):
            df[c] = pd.to_datetime(df[c]).dt.strftime("%Y-%m-%d")
        df.to_csv(path, index=False)
        return path


def simulate_invoices(n_customers: int = 300, deteriorating_share: float = 0.25, months: int = 24,
                      as_of: dt.date = dt.date(2024, 1, 1), seed: int = 0,
                      id_prefix: str = "C", customer_ids: list[str] | None = None) -> SyntheticInvoices:
    """Invoice histories for `n_customers` (or the given `customer_ids`) over the `months` before `as_of`
    (see the module docstring)."""
    rng = np.random.default_rng(seed)
    n = n_customers if customer_ids is None else len(customer_ids)
    start = pd.Timestamp(as_of) - pd.DateOffset(months=months)
    span = (pd.Timestamp(as_of) - start).days
    deteriorating = rng.random(n) < deteriorating_share
    slow = rng.random(n) < 1 / 3
    habit = np.where(slow, rng.uniform(15, 35, n), rng.uniform(-5, 4, n))
    noise = rng.uniform(2, 6, n)
    terms = rng.choice([14, 30, 45, 60], n, p=[0.15, 0.5, 0.2, 0.15])
    per_month = rng.gamma(2.0, 1.0, n) + 0.5
    onset_days = np.where(deteriorating, span - rng.uniform(91, 274, n), np.inf)
    slope = rng.uniform(4, 12, n) / 30.4  # extra days late per day after the onset

    counts = rng.poisson(per_month * months)
    cust = np.repeat(np.arange(n), counts)
    day = rng.uniform(0, span, len(cust))
    order = np.lexsort((day, cust))
    cust, day = cust[order], np.floor(day[order])
    after = np.maximum(day - onset_days[cust], 0)
    late = habit[cust] + noise[cust] * rng.standard_normal(len(cust)) + slope[cust] * after
    pay_day = day + terms[cust] + np.maximum(late, -terms[cust] + 1)
    p_unpaid = np.where(after > 0, np.minimum(0.05 + after / 600, 0.5), 0.0)
    never = rng.random(len(cust)) < p_unpaid
    p_dispute = np.where(after > 0, 0.15, 0.02)
    disputed = rng.random(len(cust)) < p_dispute
    amount = np.round(np.exp(rng.normal(7, 0.8, len(cust))), 2)

    invoice_date = start + pd.to_timedelta(day, unit="D")
    paid = start + pd.to_timedelta(pay_day, unit="D")
    paid = pd.Series(paid).where(~never & (paid < pd.Timestamp(as_of)))
    ids = (np.array([f"{id_prefix}{i:05d}" for i in range(n)]) if customer_ids is None
           else np.asarray(customer_ids, dtype=object))
    invoices = pd.DataFrame({
        "invoice_id": [f"INV{i:07d}" for i in range(len(cust))], "customer_id": ids[cust],
        "invoice_date": pd.Series(invoice_date).dt.normalize(),
        "due_date": (pd.Series(invoice_date) + pd.to_timedelta(terms[cust], unit="D")).dt.normalize(),
        "amount": amount, "paid_date": paid.dt.normalize(), "disputed": disputed})
    onset = pd.Series(start + pd.to_timedelta(np.where(deteriorating, onset_days, 0), unit="D")).where(deteriorating)
    truth = pd.DataFrame({"customer_id": ids, "deteriorating": deteriorating, "onset": onset, "habit_days": habit})
    return SyntheticInvoices(invoices, truth, as_of)
