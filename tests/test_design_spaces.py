"""The shipped design-space searches (He et al.'s unified view, AutoPEFT's) run end to end.

Each shipped space keeps its methods, knobs, searcher and scheduler; only the
model, data and budget are swapped for the tiny ones (seconds per trial).
"""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import tiny_space

import search
from search.space import SPACES_DIR

DESIGN_SPACES = ("unified-view.yaml", "autopeft.yaml")


def _tiny(name: str, model, data, storage) -> dict:
    shipped = yaml.safe_load((SPACES_DIR / name).read_text())
    raw = tiny_space(model, data, storage)
    raw["experiment"]["name"] = name.removesuffix(".yaml")
    raw["train"] = {"epochs": 1, "evals_per_epoch": 2, "batch_size": 16}
    raw["methods"] = shipped["methods"]
    raw["search"] = {**shipped["search"], "num_samples": 4, "max_concurrent": 2}
    raw["scheduler"] = shipped["scheduler"]
    return raw


@pytest.mark.parametrize("name", DESIGN_SPACES)
def test_a_design_space_runs_a_few_trials(name, ray_local, tmp_path, tiny_bert, topics_tsv):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(_tiny(name, tiny_bert, topics_tsv, tmp_path / "runs")))
    res = search.run(path, quiet=True)
    t = res.trials
    assert len(t) == 4 and (t["status"] == "TERMINATED").all(), t[["status", "error"]]
    shipped = yaml.safe_load((SPACES_DIR / name).read_text())
    assert set(t["method"]) <= set(shipped["methods"])
    for _, row in t.iterrows():  # a sampled layer mask is recorded as one string per trial
        knobs = json.loads(row["knobs_json"])
        if "layers" in knobs:
            assert str(knobs["layers"]).startswith("0b") and row["layers"] == knobs["layers"]
