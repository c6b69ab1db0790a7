"""Issue 4's lifetimes reference figures on the CDNOW sample, run in the isolated lifetimes 0.11.3 venv.

    bench/.peers/lifetimes/bin/python bench/_peer_predictor.py CDNOW_sample.txt.gz OUT.json

lifetimes' documented recipe: ``calibration_and_holdout_data(freq="D", calibration_period_end="1997-09-30",
observation_period_end="1998-06-30")`` (daily units, same-day purchases merged, T counted to the last
calibration day), BetaGeoFitter / ParetoNBDFitter with no penalty, expected holdout purchases by
``conditional_expected_number_of_purchases_up_to_time(duration_holdout, ...)``. Writes, per model: the
parameters, predicted and actual holdout totals, MAE, RMSE, and the AUC of "ordered in the holdout" ranked
by the expected count, by P(at least one) = 1 - exp(-E) (the same ranking) and by P(alive).
(No scikit-learn in that venv: AUC by the Mann-Whitney rank formula with midranks for ties.)
"""

import json
import sys
import warnings

import numpy as np
import pandas as pd
from scipy.stats import rankdata

warnings.simplefilter("ignore")
from lifetimes import BetaGeoFitter, ParetoNBDFitter
from lifetimes.utils import calibration_and_holdout_data


def auc(pos, score):
    pos = np.asarray(pos, bool)
    r = rankdata(np.asarray(score, float))
    n1, n0 = pos.sum(), (~pos).sum()
    return float((r[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def main(path, out):
    raw = pd.read_csv(path, sep=r"\s+", header=None, names=["id", "sid", "date", "cds", "value"], dtype={"date": str})
    raw["date"] = pd.to_datetime(raw["date"], format="%Y%m%d")
    s = calibration_and_holdout_data(raw, "id", "date", calibration_period_end="1997-09-30",
                                     observation_period_end="1998-06-30", freq="D")
    y = s["frequency_holdout"].to_numpy(float)
    t = float(s["duration_holdout"].iloc[0])
    res = {"customers": len(s), "holdout_days": t, "recipe": " ".join(__doc__.split("\n\n")[2].split())}
    for name, M in (("bgnbd", BetaGeoFitter), ("paretonbd", ParetoNBDFitter)):
        m = M(penalizer_coef=0.0).fit(s["frequency_cal"], s["recency_cal"], s["T_cal"])
        e = m.conditional_expected_number_of_purchases_up_to_time(t, s["frequency_cal"], s["recency_cal"],
                                                                  s["T_cal"]).to_numpy(float)
        pal = np.asarray(m.conditional_probability_alive(s["frequency_cal"], s["recency_cal"], s["T_cal"]), float)
        res[name] = {"params": {k: float(v) for k, v in m.params_.items()}, "predicted_orders": float(e.sum()),
                     "actual_orders": float(y.sum()), "mae": float(np.abs(e - y).mean()),
                     "rmse": float(np.sqrt(((e - y) ** 2).mean())), "auc_expected": auc(y > 0, e),
                     "auc_1_minus_exp_minus_expected": auc(y > 0, 1 - np.exp(-e)), "auc_p_alive": auc(y > 0, pal)}
    with open(out, "w") as fh:
        json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
