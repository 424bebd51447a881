"""The layer mask, ``layers: {mask: true}``: parsed, sized to the model, sampled one bit per
layer, folded back into the ``0b...`` string every trial and the trials table get."""

from __future__ import annotations

import json
import re

import optuna
import pandas as pd
import pytest
import yaml
from conftest import tiny_space

from search.cli import main
from search.preflight import check_fit
from search.results import knob_cell
from search.searcher import DefineByRun
from search.space import SpaceError, _Loader, apply_overrides, trial_config, validate
from search.warmstart import _as_params
from trainables.methods import METHODS
from trainables.trial import flat_config

LAYERED = sorted(m for m, x in METHODS.items() if (k := x.knob("layers")) and k.kind == "layers")
MASK = {"mask": True}
MASKS = ("0b00", "0b01", "0b10", "0b11")  # of the tiny 2-layer BERT


def _space(tiny_models, topics_tsv, tmp_path, arch: str = "bert", **methods) -> dict:
    """The tiny space of ``arch`` with only ``methods`` (default: lora with a layer mask)."""
    methods = methods or {"lora": {"layers": MASK, "lora_rank": 2}}
    return tiny_space(tiny_models[arch], topics_tsv, tmp_path / "runs", methods=methods)


def _trainable(model: str, method: str, knobs: dict) -> int:
    """Trainable parameters of ``method`` with ``knobs`` on the model (3 labels), weightless."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from trainables.methods import apply_method
    from trainables.model import count_parameters, load_config

    config = load_config(str(model))
    config.num_labels = 3
    with torch.device("meta"):
        built = apply_method(AutoModelForSequenceClassification.from_config(config), method, knobs)
    return count_parameters(built)[0]


def _problems(raw: dict) -> dict[str, str]:
    with pytest.raises(SpaceError) as err:
        validate(raw)
    return dict(err.value.problems)


def test_the_methods_that_live_in_layers_have_the_knob():
    assert {"adapter", "lora", "ia3", "prefix"} <= set(LAYERED)


def test_a_mask_parses_and_waits_for_the_model(tiny_models, topics_tsv, tmp_path):
    space = validate(_space(tiny_models, topics_tsv, tmp_path))
    dist = space.methods["lora"]["layers"]
    assert (dist.kind, dist.value) == ("mask", None)
    assert dist.center() == "all" and dist.extremes() == ["all"]  # every layer, count unknown
    with pytest.raises(ValueError, match="check_fit"):
        DefineByRun(space)  # a searcher without the bit count: refused before Tune


def test_every_mask_problem_is_listed_at_once(tiny_models, topics_tsv, tmp_path):
    raw = _space(
        tiny_models,
        topics_tsv,
        tmp_path,
        lora={"layers": {"mask": False}, "lora_rank": MASK},
        ia3={"layers": {"mask": [0, 1]}},
        bitfit={"layers": MASK},  # bitfit lives in no layer: no layers knob
    )
    got = _problems(raw)
    assert "a layer mask is {mask: true}" in got["methods.lora.layers"]
    assert "give the value itself" in got["methods.lora.layers"]
    assert "{mask: [0, 1]}" in got["methods.ia3.layers"]
    assert "lora_rank is not one" in got["methods.lora.lora_rank"]
    assert "unknown key" in got["methods.bitfit.layers"]


def test_a_grid_refuses_a_mask_and_says_what_to_give(tiny_models, topics_tsv, tmp_path):
    raw = _space(tiny_models, topics_tsv, tmp_path)
    raw["search"] = {"searcher": "grid"}
    problem = _problems(raw)["methods.lora.layers"]
    assert "cannot enumerate a layer mask" in problem and "{choice: [all, top_4" in problem
    raw["methods"]["lora"]["layers"] = {"choice": ["all", "top_1", "0b10"]}
    assert len(validate(raw).grid()) == 3


def test_bad_mask_exits_2_before_anything_is_written(tiny_models, topics_tsv, tmp_path, capsys):
    raw = _space(tiny_models, topics_tsv, tmp_path, lora={"layers": {"mask": False}})
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    for command in ("validate", "run"):
        assert main([command, str(path)]) == 2
        assert "methods.lora.layers: {mask: False}" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_mask_string_in_yaml_stays_a_string(tiny_models, topics_tsv, tmp_path):
    # YAML 1.1 reads 0b0110 as the integer 6: the bit count would be lost.
    assert yaml.load("layers: 0b0110", Loader=_Loader) == {"layers": "0b0110"}
    assert yaml.load("n: 0x10", Loader=_Loader) == {"n": 16}  # other integers as before
    raw = apply_overrides(_space(tiny_models, topics_tsv, tmp_path), ["methods.lora.layers=0b01"])
    assert validate(raw).methods["lora"]["layers"].value == "0b01"


@pytest.mark.parametrize("arch,bits", [("bert", 2), ("albert", 1)])
def test_check_fit_gives_the_mask_the_models_layer_count(
    arch, bits, tiny_models, topics_tsv, tmp_path
):
    """ALBERT reuses one layer at every depth: its mask has one bit."""
    space = validate(_space(tiny_models, topics_tsv, tmp_path, arch))
    check_fit(space)
    assert space.methods["lora"]["layers"].value == bits
    masks = [v["layers"] for v in space.knob_variants("lora")]
    every, none = "0b" + "1" * bits, "0b" + "0" * bits
    assert masks[0] == every and {every, none, "0b1" + "0" * (bits - 1)} <= set(masks)
    flat, _ = trial_config(space, "lora", [])  # `peftsearch trial`: every layer
    assert flat["layers"] == every


def test_define_by_run_samples_one_bit_per_layer_and_the_trial_gets_the_mask(
    tiny_models, topics_tsv, tmp_path
):
    space = validate(_space(tiny_models, topics_tsv, tmp_path))
    check_fit(space)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    masks = set()
    for _ in range(12):
        trial = study.ask()
        constants = DefineByRun(space)(trial)
        bits = [trial.params[f"lora.layers.{i}"] for i in range(2)]
        assert all(isinstance(b, bool) for b in bits)
        assert "lora.layers" not in trial.params and "lora.layers.2" not in trial.params
        flat = flat_config({**trial.params, **constants})  # as Tune hands it to the trial
        assert flat["layers"] == "0b" + "".join("1" if b else "0" for b in bits)
        assert not any(k.startswith("layers.") for k in flat) and flat["lora_rank"] == 2
        masks.add(flat["layers"])
        study.tell(trial, 0.5)
    assert masks == set(MASKS)


def test_flat_config_refuses_a_gap_in_the_bits():
    with pytest.raises(ValueError, match="expected 0..1"):
        flat_config({"method": "lora", "lora.layers.0": True, "lora.layers.2": False})


def test_a_list_of_layers_is_recorded_as_text():
    assert knob_cell("layers", [3, 0]) == "[0, 3]"
    assert knob_cell("layers", "0b0110") == "0b0110" and knob_cell("layers", None) is None
    assert knob_cell("lora_rank", 8) == 8


def test_a_warm_start_turns_earlier_layers_into_bits(tiny_models, topics_tsv, tmp_path):
    space = validate(_space(tiny_models, topics_tsv, tmp_path))
    check_fit(space)
    base = {"method": "lora", "lora_rank": 2, "seed": 0, "epochs": 2, "evals_per_epoch": 2,
            "batch_size": 16}  # fmt: skip
    for layers, bits in (("0b10", [True, False]), ("all", [True, True]), ([1], [False, True])):
        params, dists, why = _as_params(space, {**base, "layers": layers}, exact=True)
        assert why is None and [params[f"lora.layers.{i}"] for i in range(2)] == bits
        # What the warm start adds to the study: a finished trial TPE then samples after.
        study = optuna.create_study(sampler=optuna.samplers.TPESampler(n_startup_trials=0))
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=0.5))
        trial = study.ask()
        constants = DefineByRun(space)(trial)
        assert flat_config({**trial.params, **constants})["layers"] in MASKS
    _, _, why = _as_params(space, {**base, "layers": "top_4"}, exact=True)
    assert "top_4" in why and "2 bits" in why
    params, _, why = _as_params(space, {**base, "layers": "top_4"}, exact=False)
    assert why is None and not any(p.startswith("lora.layers.") for p in params)


@pytest.mark.slow
def test_a_search_records_each_trials_mask(ray_local, tiny_models, topics_tsv, tmp_path):
    """A real Tune + Optuna search: the trials table's ``layers`` is always text."""
    import search

    raw = _space(
        tiny_models,
        topics_tsv,
        tmp_path,
        lora={"layers": MASK, "lora_rank": 2, "learning_rate": 1e-2},
        ia3={"layers": [1, 0], "learning_rate": 1e-2},
    )
    raw["train"] = {"epochs": 1, "evals_per_epoch": 1, "batch_size": 32}
    raw["search"] = {"num_samples": 4, "searcher": "random"}
    raw["scheduler"] = {"type": "none"}
    path = tmp_path / "mask.yaml"
    path.write_text(yaml.safe_dump(raw))
    res = search.run(path)
    trials = pd.read_parquet(res.run_dir / "trials.parquet")
    assert (trials["status"] == "TERMINATED").all(), trials[["status", "error"]]
    lora, ia3 = trials[trials["method"] == "lora"], trials[trials["method"] == "ia3"]
    assert len(lora) >= 1 and len(ia3) >= 1
    assert all(re.fullmatch(r"0b[01]{2}", v) for v in lora["layers"])
    assert (ia3["layers"] == "[0, 1]").all()
    for _, row in lora.iterrows():
        assert json.loads(row["knobs_json"])["layers"] == row["layers"]
        assert json.loads(row["config_json"])["layers"] == row["layers"]
        # The recorded mask is the one the trial trained with: its parameter count.
        knobs = {"layers": row["layers"], "lora_rank": 2}
        assert row["trainable_params"] == _trainable(tiny_models["bert"], "lora", knobs)
