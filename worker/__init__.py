"""Runs selection jobs: reads the data, calls the engine, writes the results.

Importing this package does not import torch; only ``worker.tasks`` at run time does.
"""
