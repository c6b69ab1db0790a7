"""Synthetic customer bases with known parameters, for tests, benchmarks and demos."""

from loyalist.synthetic.btyd import (
    DEFAULT_SPEND,
    SyntheticCustomers,
    simulate_bgnbd,
    simulate_paretonbd,
    simulate_spend,
)
from loyalist.synthetic.invoices import SyntheticInvoices, simulate_invoices

__all__ = ["DEFAULT_SPEND", "SyntheticCustomers", "SyntheticInvoices", "simulate_bgnbd", "simulate_invoices",
           "simulate_paretonbd", "simulate_spend"]
