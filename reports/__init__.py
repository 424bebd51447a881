"""Parquet -> HTML: the figures' data (pure, tested) and a thin renderer.

This package reads the run's Parquet files only; it imports neither
``search`` nor ``trainables``.
"""

from reports.figure_data import best_per_method, knob_summary, pareto_front

__all__ = ["best_per_method", "knob_summary", "pareto_front"]
