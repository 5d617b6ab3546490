"""Fixtures starting the real stack, defined in tests/stack.py (any test folder can import them)."""

from tests.stack import moto, slow_parquet, small_parquet, stack  # noqa: F401
