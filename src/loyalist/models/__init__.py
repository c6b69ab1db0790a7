"""Customer-base models: purchase-process models and the Gamma-Gamma spend model.

Pure numerics, sklearn conventions (hyperparameters in ``__init__``, ``fit(...)`` returns the
model, fitted state ends in ``_``).  Every model is fitted by maximum likelihood with an analytic
gradient on log-parameters over compressed (deduplicated, weighted) customer patterns.

* :class:`BGNBD` - Fader, Hardie & Lee (2005), "Counting Your Customers the Easy Way".
* :class:`ParetoNBD` - Schmittlein, Morrison & Colombo (1987); Fader & Hardie (2005) note.
* :class:`MBGNBD` - Batislam, Denizel & Filiztekin (2007).
* :class:`BGBB` - Fader, Hardie & Shang (2010), discrete time.
* :class:`GammaGamma` - Fader, Hardie & Lee (2005), "RFM and CLV" (spend; scale ``v`` = their gamma).
* :class:`SeasonalBGNBD` - the BG/NBD with a month-of-year purchase intensity (BG/NBD in operational time;
  fitted on frequency, first/last purchase dates and repeat purchases per month; see its module).
* :class:`SeasonalParetoNBD` - the Pareto/NBD in the same operational time (purchase and dropout clocks).
"""

from loyalist.models._base import (
    ConvergenceError,
    ConvergenceWarning,
    ModelInputError,
    NotFittedError,
)
from loyalist.models.bgbb import BGBB
from loyalist.models.bgnbd import BGNBD
from loyalist.models.gammagamma import GammaGamma
from loyalist.models.mbgnbd import MBGNBD
from loyalist.models.paretonbd import ParetoNBD
from loyalist.models.seasonal import SeasonalBGNBD
from loyalist.models.seasonal_paretonbd import SeasonalParetoNBD

__all__ = [
    "BGNBD",
    "ParetoNBD",
    "MBGNBD",
    "BGBB",
    "GammaGamma",
    "SeasonalBGNBD",
    "SeasonalParetoNBD",
    "ConvergenceError",
    "ConvergenceWarning",
    "ModelInputError",
    "NotFittedError",
]
