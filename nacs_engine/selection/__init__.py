"""Facility location and the batched stochastic greedy."""
