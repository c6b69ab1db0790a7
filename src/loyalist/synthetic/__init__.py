"""Synthetic customer bases with known parameters, for tests, benchmarks and demos."""

from loyalist.synthetic.btyd import (
    SyntheticCustomers,
    simulate_bgnbd,
    simulate_paretonbd,
    simulate_spend,
)

__all__ = ["SyntheticCustomers", "simulate_bgnbd", "simulate_paretonbd", "simulate_spend"]
