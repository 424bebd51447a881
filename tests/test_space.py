"""The space schema: every shipped file loads; broken ones name the key and the fix."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from search.preflight import check_fit
from search.searcher import DefineByRun
from search.space import (
    SPACES_DIR,
    SpaceError,
    _Loader,
    apply_overrides,
    load_space,
    validate,
)

SHIPPED = sorted(SPACES_DIR.glob("*.yaml"))
BASE = {
    "methods": {
        "full": {"learning_rate": {"log": [1e-5, 1e-3]}},
        "lora": {"lora_rank": {"choice": [4, 8]}},
    }
}


def test_there_are_shipped_spaces():
    assert any(p.name == "quick.yaml" for p in SHIPPED)


# Hub models a shipped space names, as their published configs (nothing is downloaded in the
# tests): the space's methods are checked against the same architecture and sizes.
HUB_CONFIGS = {
    # huggingface.co/Helsinki-NLP/opus-mt-en-ro/blob/main/config.json
    "Helsinki-NLP/opus-mt-en-ro": lambda: __import__("transformers").MarianConfig(
        vocab_size=59543, d_model=512, encoder_layers=6, decoder_layers=6,
        encoder_attention_heads=8, decoder_attention_heads=8, encoder_ffn_dim=2048,
        decoder_ffn_dim=2048, max_position_embeddings=512, pad_token_id=59542,
        decoder_start_token_id=59542, eos_token_id=0,
    ),
}  # fmt: skip


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_space_validates(path: Path, tmp_path: Path):
    space = load_space(path)
    if space.model in HUB_CONFIGS:  # offline: its published config, saved where check_fit reads
        HUB_CONFIGS[space.model]().save_pretrained(tmp_path)
        space.experiment.model = str(tmp_path)
    check_fit(space)  # every method, at every knob extreme, applies to the space's model
    assert space.methods and space.search.num_samples >= 1
    assert path.read_text().startswith("#"), (
        "a space file starts with a comment showing how to run it"
    )


def test_quick_space_is_the_offline_demo():
    space = load_space()
    assert space.model == "minilm" and space.dataset.name == "bbc_news"
    assert {"full", "linear_probe", "adapter", "lora"} <= set(space.methods)
    assert space.method_space("adapter")["adapter_size"].kind != "fixed"
    assert space.method_space("lora")["lora_rank"].kind != "fixed"
    assert all(space.method_space(m)["learning_rate"].kind == "log" for m in space.methods)


def _with(path: str, value):
    raw = yaml.safe_load(yaml.safe_dump(BASE))
    return apply_overrides(raw, [f"{path}={value}"])


BROKEN = [
    ("methods.lorax", "{}", "methods.lorax", "known methods"),
    ("methods.lora.rank", "8", "methods.lora.rank", "unknown key"),
    ("methods.lora.lora_rank", "{int: [16, 4]}", "methods.lora.lora_rank", "swap them"),
    ("methods.full.learning_rate", "{log: [0, 1e-3]}", "methods.full.learning_rate", "low > 0"),
    ("methods.lora.lora_rank", "{choice: []}", "methods.lora.lora_rank", "non-empty list"),
    ("methods.lora.lora_rank", "{range: [1, 2]}", "methods.lora.lora_rank", "exactly one key"),
    ("methods.lora.lora_rank", "0", "methods.lora.lora_rank", ">= 1"),
    ("methods.lora.lora_targets", "everything", "methods.lora.lora_targets", "one of"),
    ("search.num_samples", "0", "search.num_samples", ">= 1"),
    ("search.searcher", "bayes", "search.searcher", "tpe"),
    ("search.searcher", "grid", "methods.full.learning_rate", "grid search takes"),
    ("search.objectives", "[trainable_params]", "search.objectives", "the ranking metric"),
    ("search.objectives", "[val_loss]", "search.objectives", "set experiment.metric"),
    ("experiment.metric", "auc", "experiment.metric", "f1_macro"),
    ("experiment.task", "ranking", "experiment.task", "regression"),
    ("experiment.positive_label", "yes", "experiment.positive_label", "metric: f1"),
    ("search.objectives", "[val_accuracy, val_loss]", "search.objectives", "trainable_params"),
    ("search.objectives", "[val_accuracy, val_loss]", "search.objectives", "not a measured cost"),
    ("search.objectives", "[]", "search.objectives", "up to two costs"),
    (
        "search.objectives",
        "[val_accuracy, infer_latncy_ms]",
        "search.objectives",
        "infer_latency_ms?",
    ),
    ("search.objectives", "[val_accuracy, gpu_hours]", "search.objectives", "artifact_mb"),
    (
        "search.objectives",
        "[val_accuracy, infer_ms_b1, infer_latency_ms]",
        "search.objectives",
        "named twice",
    ),
    (
        "search.objectives",
        "[val_accuracy, trainable_params, artifact_mb, infer_ms_b1]",
        "search.objectives",
        "up to two costs",
    ),
    ("search.time_budget_s", "0", "search.time_budget_s", "seconds > 0"),
    ("search.max_failures", "-1", "search.max_failures", ">= 0"),
    ("search.max_concurrent", "0", "search.max_concurrent", ">= 1"),
    ("scheduler.grace_period", "0", "scheduler.grace_period", ">= 1"),
    ("scheduler.reduction_factor", "1", "scheduler.reduction_factor", "> 1"),
    ("resources.gpu", "1.5", "resources.gpu", "whole number"),
    ("resources.cpu", "0", "resources.cpu", "> 0"),
    (
        "experiment.dataset.files",
        "{validation: a.tsv}",
        "experiment.dataset.files",
        "at least train",
    ),
    (
        "experiment.dataset.files",
        "{train: /nonexistent/a.tsv}",
        "experiment.dataset.files.train",
        "no such file",
    ),
    ("experiment.dataset.text", "''", "experiment.dataset.text", "name of a column"),
    ("experiment.max_length", "0", "experiment.max_length", "> 0"),
    ("experiment.dataset.name", "imdb", "experiment.dataset.name", "built-in"),
    ("experiment.dataset.path", "/nonexistent/file.tsv", "experiment.dataset.path", "no such file"),
    ("experiment.split.validation", "0.9", "experiment.split", "sum below 1"),
    ("train.learning_rate", "-1", "train.learning_rate", "learning_rate"),
    ("train.epochs", "{choice: [1, 0]}", "train.epochs", "epochs"),
    ("scheduler.type", "hyperband", "scheduler.type", "asha"),
    ("resources.gpu", "-1", "resources.gpu", ">= 0"),
    ("searcher", "tpe", "<top>.searcher", "unknown key"),
    ("scheduler.grace_period", "5", "scheduler.grace_period", "lower grace_period to 4"),
    ("experiment.name", "../up", "experiment.name", "not a plain name"),
    ("experiment.name", "a/b", "experiment.name", "no path separator"),
    ("experiment.dataset.encoding", "utf-9", "experiment.dataset.encoding", "latin-1"),
    ("experiment.dataset.drop_invalid", "maybe", "experiment.dataset.drop_invalid", "true or"),
    ("experiment.max_test_samples", "0", "experiment.max_test_samples", "> 0 or null"),
]


@pytest.mark.parametrize("path,value,key,fix", BROKEN, ids=[b[0] + "=" + b[1] for b in BROKEN])
def test_broken_space_names_key_and_fix(path, value, key, fix):
    with pytest.raises(SpaceError) as err:
        validate(_with(path, value), "broken.yaml")
    keys = [k for k, _ in err.value.problems]
    assert key in keys, err.value
    assert fix in str(err.value)
    assert "broken.yaml" in str(err.value)


def test_all_problems_are_reported_at_once():
    raw = apply_overrides(
        BASE, ["search.num_samples=0", "methods.lorax={}", "experiment.max_length=-3"]
    )
    with pytest.raises(SpaceError) as err:
        validate(raw)
    assert len(err.value.problems) == 3


def test_the_metric_owns_the_objectives_and_must_fit_the_task():
    space = validate(apply_overrides(BASE, ["experiment.metric=mcc"]))
    assert space.objectives == ["val_mcc"] and (space.metric, space.mode) == ("val_mcc", "max")
    two = ["experiment.metric=mcc", "search.objectives=[val_mcc, trainable_params]"]
    assert validate(apply_overrides(BASE, two)).objectives == ["val_mcc", "trainable_params"]
    three = ["search.objectives=[val_accuracy, infer_latency_ms, artifact_mb]"]
    space = validate(apply_overrides(BASE, three))
    assert space.search.costs == ["infer_ms_b1", "artifact_mb"]  # the alias resolved
    loss = validate(apply_overrides(BASE, ["experiment.metric=loss"]))
    assert (loss.metric, loss.mode) == ("val_loss", "min")
    # Regression ranks by pearson unless told otherwise; a classification metric does not fit.
    assert validate(apply_overrides(BASE, ["experiment.task=regression"])).metric == "val_pearson"
    bad = ["experiment.task=regression", "experiment.metric=mcc", "search.objectives=[val_f1]"]
    with pytest.raises(SpaceError) as err:
        validate(apply_overrides(BASE, bad))
    problems = dict(err.value.problems)
    assert "'mcc' does not fit a regression task" in problems["experiment.metric"]
    assert "pearson" in problems["experiment.metric"]
    assert "the first objective is the ranking metric, val_mcc" in problems["search.objectives"]


def test_malformed_yaml_and_missing_methods(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("methods: {full: [unclosed\n")
    with pytest.raises(SpaceError, match="not valid YAML"):
        load_space(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("search: {num_samples: 2}\n")
    with pytest.raises(SpaceError, match="methods: missing"):
        load_space(empty)


def test_scientific_notation_is_a_float_and_overrides_apply():
    space = validate(
        apply_overrides(BASE, ["methods.full.learning_rate={log: [1e-5, 1e-3]}", "train.epochs=3"])
    )
    d = space.method_space("full")["learning_rate"]
    assert (d.low, d.high) == (1e-5, 1e-3)
    assert space.max_t == 3 * 4


def test_the_documented_schema_is_a_valid_space():
    from search.space import SCHEMA

    text = SCHEMA.split("\n\nA distribution")[0]
    space = validate(yaml.safe_load(text), "SCHEMA")
    assert space.objectives == ["val_accuracy"] and space.scheduler.type == "asha"


def test_the_readme_shows_the_schema_as_it_is():
    from search.space import SCHEMA

    readme = (SPACES_DIR.parent / "README.md").read_text()
    assert SCHEMA.split("\n\nA distribution")[0] in readme


def test_grid_enumerates_every_combination_of_every_method():
    raw = apply_overrides(
        BASE,
        [
            "search.searcher=grid",
            "methods.full.learning_rate={choice: [1e-4, 3e-4]}",
            "train.batch_size={choice: [8, 16]}",
        ],
    )
    space = validate(raw)
    grid = space.grid()
    assert space.num_trials == len(grid) == 2 * 2 + 2 * 2  # full: lr x bs; lora: rank x bs
    assert {"method": "lora", "lora.lora_rank": 8, "lora.batch_size": 16, "lora.seed": 0} in grid


def test_define_by_run_samples_only_the_chosen_methods_knobs():
    space = validate(apply_overrides(BASE, ["train.batch_size=8"]))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(20):
        trial = study.ask()
        consts = DefineByRun(space)(trial)
        method = trial.params["method"]
        seen.add(method)
        assert all(k == "method" or k.startswith(method + ".") for k in trial.params)
        assert consts == {f"{method}.batch_size": 8, f"{method}.seed": 0}
        if method == "lora":
            assert trial.params["lora.lora_rank"] in (4, 8)
        study.tell(trial, 0.5)
    assert seen == {"full", "lora"}


def test_grace_period_within_the_rounds_or_no_scheduler_is_fine():
    assert validate(_with("scheduler.grace_period", "4")).max_t == 4
    raw = apply_overrides(BASE, ["scheduler.grace_period=9", "scheduler.type=none"])
    assert validate(raw).scheduler.grace_period == 9  # unused without a scheduler
    raw = apply_overrides(BASE, ["scheduler.grace_period=9", "methods.lora.epochs=3"])
    assert validate(raw).max_t == 12  # the longest method's rounds count


def test_a_key_given_twice_names_its_line(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text(
        "experiment: {seed: 1}\n"
        "methods:\n  full: {}\n"
        "search:\n  num_samples: 2\n  searcher: tpe\n  num_samples: 3\n"
    )
    with pytest.raises(SpaceError) as err:
        load_space(path)
    assert "duplicate key 'num_samples' at line 7 (first at line 5)" in str(err.value)
    path.write_text("methods: {full: {}}\nexperiment: {seed: 1}\nexperiment: {seed: 2}\n")
    with pytest.raises(SpaceError, match="duplicate key 'experiment' at line 3"):
        load_space(path)
    # a merge key may be overridden: that is what it is for
    assert yaml.load("a: &b {x: 1}\nc: {<<: *b, x: 2}\n", Loader=_Loader)["c"] == {"x": 2}
    with pytest.raises(SpaceError, match="--set"):
        apply_overrides(BASE, ["methods.lora={lora_rank: 4, lora_rank: 8}"])


def test_max_positions_per_architecture(tiny_models):
    from search.preflight import max_positions
    from trainables.model import load_config

    # all tiny models have max_position_embeddings 64 and pad_token_id 0
    got = {arch: max_positions(load_config(str(p))) for arch, p in tiny_models.items()}
    assert got == {"bert": 64, "roberta": 63, "distilbert": 64, "deberta-v2": 64, "modernbert": 64,
                   "mpnet": 63, "albert": 64}  # fmt: skip
    roberta = load_config(str(tiny_models["roberta"]))
    roberta.pad_token_id = 1  # roberta-base: 514 positions, padding index 1 -> 512 tokens
    roberta.max_position_embeddings = 514
    assert max_positions(roberta) == 512
    deberta = load_config(str(tiny_models["deberta-v2"]))
    deberta.position_biased_input = False  # DeBERTa-v3: relative positions only
    assert max_positions(deberta) is None


def test_max_length_beyond_the_positions_is_refused_by_check_fit(tmp_path, tiny_models, topics_tsv):
    from conftest import tiny_space

    raw = tiny_space(tiny_models["roberta"], topics_tsv, tmp_path)
    raw["experiment"]["max_length"] = 64
    with pytest.raises(SpaceError, match="64 tokens, but the model has 63 positions"):
        check_fit(validate(raw))
    raw["experiment"]["max_length"] = 63
    check_fit(validate(raw))
