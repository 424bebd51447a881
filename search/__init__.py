"""The peftsearch driver and CLI: ``search.run(space, **overrides)``, ``search.load_results(run_dir)``."""

from __future__ import annotations


def run(space=None, **kwargs):
    """Run a search; see :func:`search.driver.run`."""
    from search.driver import run as _run

    return _run(space, **kwargs)


def load_results(run_dir):
    """(trials, curves) DataFrames of a run; see :func:`search.results.load_results`."""
    from search.results import load_results as _load

    return _load(run_dir)


__all__ = ["load_results", "run"]
