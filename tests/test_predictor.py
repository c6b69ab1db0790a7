"""btyd_stack (backtest.fit_predict_stack): learned only from data before the cutoff."""

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from conftest import shared_file
from loyalist.backtest import STACK_UNGUARDED, backtest, reference_split


def test_reference_split_prefers_the_same_season_a_year_earlier():
    d = dt.date
    # two years of history: the same 90 days a year earlier
    assert reference_split(d(2009, 12, 1), d(2011, 9, 10), 90) == (d(2010, 9, 10), 90, "the same season a year earlier")
    # one year only: the latest min(h, history / 2) days
    assert reference_split(d(2009, 12, 1), d(2010, 12, 1), 90)[:2] == (d(2010, 9, 2), 90)
    assert reference_split(d(1997, 1, 1), d(1997, 10, 1), 273)[:2] == (d(1997, 5, 18), 136)
    assert reference_split(d(2020, 1, 1), d(2020, 1, 20), 90) is None


def _cdnow_table(keep_after: bool):
    import duckdb
    import ibis

    raw = pd.read_csv(shared_file("cdnow", "CDNOW_sample.txt.gz"), sep=r"\s+", header=None,
                      names=["id", "sid", "date", "cds", "value"], dtype={"date": str})
    tx = pd.DataFrame({"customer_id": raw["id"].astype(str),
                       "order_date": pd.to_datetime(raw["date"], format="%Y%m%d"), "amount": raw["value"]})
    for f in ("is_guest", "is_non_product", "is_cancellation", "is_return"):
        tx[f] = False
    if not keep_after:  # the holdout rewritten: every later order moved to one customer
        late = tx["order_date"] >= "1997-10-01"
        tx.loc[late, "customer_id"] = tx["customer_id"].iloc[0]
    con = duckdb.connect()
    con.register("v", tx)
    con.execute("CREATE TABLE transactions AS SELECT * FROM v")
    return ibis.duckdb.from_connection(con).table("transactions")


@pytest.mark.slow
def test_stack_predictions_do_not_depend_on_the_holdout():
    a = backtest(_cdnow_table(True), dt.date(1997, 10, 1), 273, ("bgnbd", "paretonbd", STACK_UNGUARDED))
    b = backtest(_cdnow_table(False), dt.date(1997, 10, 1), 273, ("bgnbd", "paretonbd", STACK_UNGUARDED))
    pa = a.per_customer.sort_values("customer_id").reset_index(drop=True)
    pb = b.per_customer.sort_values("customer_id").reset_index(drop=True)
    assert (pa["customer_id"] == pb["customer_id"]).all()
    np.testing.assert_allclose(pa[STACK_UNGUARDED], pb[STACK_UNGUARDED], rtol=1e-9)
    assert pa["actual"].sum() == 1882  # repeat purchase days of the 39-week holdout (Fader, Hardie & Lee 2005)
    # finite, non-negative expected counts for every customer
    assert np.all(np.isfinite(pa[STACK_UNGUARDED])) and (pa[STACK_UNGUARDED] >= 0).all()
    m = a.metrics.set_index("model")
    assert m.loc[STACK_UNGUARDED, "actual_orders"] == 1882
