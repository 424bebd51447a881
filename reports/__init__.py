"""Parquet -> HTML: the figures' data (pure, tested) and a thin renderer.

This package reads the run's Parquet files only; it imports neither
``search`` nor ``trainables``.
"""

from reports.figure_data import (
    best_per_method,
    deployment_table,
    knob_importance,
    knob_summary,
    pareto_front,
    pareto_front_nd,
)
from reports.hypervolume import hypervolume_at, hypervolume_curve

__all__ = [
    "best_per_method",
    "deployment_table",
    "hypervolume_at",
    "hypervolume_curve",
    "knob_importance",
    "knob_summary",
    "pareto_front",
    "pareto_front_nd",
]
