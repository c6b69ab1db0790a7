"""Synthetic customer bases with known parameters, for tests, benchmarks and demos."""

from loyalist.synthetic.btyd import (
    DEFAULT_SPEND,
    SyntheticCustomers,
    simulate_bgnbd,
    simulate_paretonbd,
    simulate_spend,
)

__all__ = ["DEFAULT_SPEND", "SyntheticCustomers", "simulate_bgnbd", "simulate_paretonbd", "simulate_spend"]
