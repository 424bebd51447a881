"""What runs inside one trial: data, model, method, and the shared train/eval loop.

This package imports neither ``search`` nor ``reports``.
"""

__all__ = ["data", "loop", "methods", "model", "trial"]
