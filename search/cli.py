"""The ``peftsearch`` command line.

Exit codes: 0 success, 2 bad input (reported before Ray starts; nothing is
written), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from search.rundir import CONFIRM_FILE, CURVES_FILE, REPORT_FILE, TRIALS_FILE

EXIT_BAD_INPUT = 2

SET_HELP = (
    "override a key, repeatable; run: a key path of the space file (search.num_samples=4, "
    "methods.lora.lora_rank={choice: [4, 8]}); values are YAML"
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="peftsearch",
        description="Search fine-tuning methods and their hyperparameters with Ray Tune; "
        "report the task metric vs trainable parameters.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser(
        "run",
        help="run a search (no arguments: the offline demo, spaces/quick.yaml)",
        description="Run a search: validate the space, tokenize once, run the trials with Ray Tune "
        f"(Optuna TPE + ASHA), write <storage>/<name>/{{{TRIALS_FILE}, {CURVES_FILE}}} and {REPORT_FILE}, "
        "print the Pareto table.",
    )
    r.add_argument(
        "space", nargs="?", default=None, help="space YAML file or shipped name (default: quick)"
    )
    r.add_argument(
        "--name",
        help="run name (default: experiment.name, else the file's stem); "
        "an unfinished run of that name resumes, a finished one gets a new name (NAME-2)",
    )
    r.add_argument(
        "--storage", help="folder (or s3:// URI) for runs (default: the space's storage, ./runs)"
    )
    r.add_argument(
        "--num-samples", type=int, help="number of trials (overrides search.num_samples)"
    )
    r.add_argument("--max-concurrent", type=int, help="trials at once (default: one per CPU slot)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    r.add_argument(
        "--resume",
        action="store_true",
        help="continue the unfinished run NAME from its checkpoints. Resuming trusts the run "
        "folder: Ray's own resume state in it (tuner.pkl, the searcher state) is pickled, and "
        "loading a pickle can run code, so resume only runs whose folder nobody else can write",
    )
    r.add_argument(
        "--address",
        help="connect to a running Ray cluster (auto, HOST:PORT or ray://...) "
        "instead of starting a local one",
    )

    t = sub.add_parser(
        "trial",
        help="train one configuration without Ray, through the same code a trial runs",
        description="Train one configuration without Ray and print its metrics. Unset knobs take the "
        "space's fixed value, else the middle of its range.",
    )
    t.add_argument("--method", required=True, help="method name (see: peftsearch methods)")
    t.add_argument("--space", default=None, help="space file for model and data (default: quick)")
    t.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a shared key (epochs, learning_rate, batch_size, max_length, max_train_samples, "
        "max_eval_samples, ...) or a knob of the method (lora_rank=8); repeatable",
    )
    t.add_argument("--json", action="store_true", help="print one JSON object instead of a table")

    v = sub.add_parser(
        "validate",
        help="check a space file without running it",
        description="Check all that can be checked before Ray starts - schema, ranges, known "
        "methods and knobs, method/architecture fit, model loadable, data columns, labels and "
        "non-empty splits, resources this machine has - and print what each method searches; "
        "exit 2 listing every problem with its key and fix.",
        epilog=_schema_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    v.add_argument("space", nargs="?", default=None, help="space YAML file or shipped name")
    v.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)

    me = sub.add_parser(
        "methods",
        help="list the methods with their knobs",
        description="List every method with its knobs, defaults and allowed values.",
    )
    me.add_argument(
        "--matrix",
        action="store_true",
        help="which method applies to which encoder type of the installed transformers, and why not",
    )
    me.add_argument(
        "--seq2seq",
        action="store_true",
        help="with --matrix: the encoder-decoder types (task: seq2seq) instead",
    )

    ex = sub.add_parser(
        "export",
        help="write a trial's trained model where standard tools load it",
        description="Export the best trial (--best) or one trial (--trial ID) of RUN_DIR to OUT_DIR: a "
        "transformers model directory (full, freeze, bitfit, head_only; linear_probe on BERT), a peft "
        "adapter directory (lora, ia3, prompt_tuning, p_tuning) or trainable.safetensors (adapter, "
        "prefix; linear_probe elsewhere); safetensors only; with "
        "trial_config.json, metrics.json and peftsearch.json. Any export loads with "
        "trainables.export.load_model(OUT_DIR). --best skips trials that failed. OUT_DIR must "
        "be new or empty; --force replaces a previous export and nothing else.",
    )
    ex.add_argument("run_dir", help="a run folder (<storage>/<name>)")
    which = ex.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--best",
        action="store_true",
        help="the trial with the best round of the run's ranking metric (experiment.metric)",
    )
    which.add_argument("--trial", metavar="ID", help=f"a trial id ({TRIALS_FILE}, column trial_id)")
    ex.add_argument(
        "out_dir",
        help="output folder: new or empty (export never deletes what it did not write)",
    )
    ex.add_argument(
        "--force",
        action="store_true",
        help="replace a previous export in OUT_DIR: only the files its manifest "
        "(peftsearch.json) lists are removed, and only if OUT_DIR holds nothing else",
    )

    con = sub.add_parser(
        "confirm",
        help="retrain the chosen trials over seeds and evaluate once on the test split",
        description="Retrain RUN_DIR's Pareto-optimal configurations (or the top K by the "
        "ranking metric) with several seeds, in parallel through Ray, and evaluate each run once "
        f"on the test split, which the search never read. Writes RUN_DIR/{CONFIRM_FILE} and adds "
        "the test metric's mean ± std, per-label figures and confusion matrices to the report.",
    )
    con.add_argument("run_dir", help="a run folder (<storage>/<name>)")
    con.add_argument("--seeds", type=int, default=3, help="seeds per configuration (default 3)")
    which = con.add_mutually_exclusive_group()
    which.add_argument("--top", type=int, metavar="K", help="the top K trials instead of the front")
    which.add_argument(
        "--per-method", action="store_true", help="the best trial of each method instead"
    )
    con.add_argument("--address", help="a running Ray cluster (default: a local Ray)")

    res = sub.add_parser(
        "results",
        help="print a run's trials as tables",
        description=f"Print RUN_DIR's trials (from {TRIALS_FILE}): a summary per method, then the "
        "top trials by the run's ranking metric, or the Pareto front with --pareto.",
    )
    res.add_argument("run_dir", help="a run folder (<storage>/<name>)")
    res.add_argument(
        "--pareto", action="store_true", help="only the Pareto-optimal trials (params vs metric)"
    )
    res.add_argument("--top", type=int, default=10, metavar="K", help="top K trials (default 10)")

    rep = sub.add_parser(
        "report",
        help=f"(re)build {REPORT_FILE} from a run's Parquet files",
        description="Build the self-contained HTML report from RUN_DIR's Parquet files.",
    )
    rep.add_argument("run_dir", help="a run folder (<storage>/<name>)")
    rep.add_argument("-o", "--output", help=f"output file (default: RUN_DIR/{REPORT_FILE})")
    return p


def _schema_help() -> str:
    """The space schema, for ``validate --help``: the space module's own description."""
    from search.space import SCHEMA

    return "space file schema (every key, with its default):\n\n" + SCHEMA


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``peftsearch`` console script."""
    args = _parser().parse_args(argv)
    from search.space import SpaceError

    try:
        return {
            "run": cmd_run,
            "trial": cmd_trial,
            "validate": cmd_validate,
            "methods": cmd_methods,
            "report": cmd_report,
            "results": cmd_results,
            "confirm": cmd_confirm,
            "export": cmd_export,
        }[args.command](args)
    except SpaceError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted: results so far are written", file=sys.stderr)
        return 130


def cmd_run(args) -> int:
    from reports.figure_data import objective_front_table, trial_counts
    from search.driver import run

    res = run(
        args.space,
        name=args.name,
        storage=args.storage,
        num_samples=args.num_samples,
        max_concurrent=args.max_concurrent,
        overrides=args.set,
        resume=args.resume,
        address=args.address,
    )
    import pandas as pd

    c = trial_counts(res.trials)
    with pd.option_context("display.width", 200, "display.max_colwidth", 60):
        print(
            f"\n{c['trials']} trials: {c['finished']} finished, {c['stopped']} stopped early, "
            f"{c['errored']} errored"
        )
        print(f"\nPareto front ({_front_label(res.trials)}):")
        print(objective_front_table(res.trials).to_string(index=False))
    print(f"\nresults: {res.run.name_of(TRIALS_FILE)}, {res.run.name_of(CURVES_FILE)}")
    print(f"report:  {res.report}")
    if res.disk:
        print(f"checkpoints: {res.disk['checkpoint_mb']} MB on disk (the best one per trial)")
    if not res.complete:
        print(
            "the search was interrupted: run the same command again to resume it", file=sys.stderr
        )
        return 130
    return 0


def _front_label(trials) -> str:
    """What the front is on: ``trainable_params vs validation accuracy`` (the run's objectives)."""
    from reports.figure_data import objectives

    costs = ", ".join(objectives(trials).columns[1:]).replace(
        "trainable_params", "trainable parameters"
    )
    return f"{costs} vs {_label(trials)}"


def _label(trials) -> str:
    """The run's ranking metric in words: ``validation mcc``."""
    from reports.figure_data import metric_label, ranking

    return metric_label(ranking(trials)[0])


def cmd_trial(args) -> int:
    from search.preflight import max_length_problems, prepare_data
    from search.space import SpaceError, load_space, trial_config
    from trainables.features import uses_cache
    from trainables.layercache import layer_depth, layer_problem
    from trainables.model import load_config
    from trainables.trial import run_trial, split_config

    space = load_space(args.space)
    flat, exp = trial_config(space, args.method, args.set)
    if exp:
        space = load_space(args.space, exp)
    method, knobs, _ = split_config(flat)
    config = load_config(space.model)
    if max_length_problems(space, config):
        raise SpaceError(space.source, max_length_problems(space, config))
    cache = space.experiment.feature_cache and uses_cache(method, knobs, config)
    depth = layer_depth(method, knobs, config)  # the layer cache: for this trial's depth alone
    on = depth and space.experiment.layer_storage != "off" and not layer_problem(config)
    data = prepare_data(
        space, progress=not args.json, features=cache, layers=(depth,) if on else ()
    )

    rounds: list[dict[str, Any]] = []
    metric = space.metric

    def on_eval(metrics: dict, get_state) -> None:
        shown = ("val_loss", "val_accuracy", metric)
        rounds.append({k: metrics[k] for k in ("step", "epoch", *shown) if k in metrics})
        if not args.json:
            scores = "  ".join(
                f"{k} {metrics[k]:.4f}" for k in dict.fromkeys(shown) if k in metrics
            )
            print(f"epoch {metrics['epoch']:.2f}  train_loss {metrics['train_loss']:.4f}  {scores}")

    out = run_trial(flat, data.without("test"), space.model, on_eval, cpus=int(space.resources.cpu))
    result = {
        "config": flat,
        **out,
        f"{metric}_last": out[metric],
        metric: out["best_score"],  # the best round, as in the trials table
        "rounds": rounds,  # every evaluation, in order
    }
    if "val_accuracy" in out and metric != "val_accuracy":
        result.update(val_accuracy_last=out["val_accuracy"], val_accuracy=out["best_val_accuracy"])
    if args.json:
        print(json.dumps(result, default=str))
    else:
        print(
            f"{args.method}: trainable {result['trainable_params']:,} / {result['total_params']:,} "
            f"({100 * result['trainable_fraction']:.3f}%), best {metric} {result[metric]:.4f}"
        )
    return 0


def cmd_validate(args) -> int:
    from search.preflight import (
        check_fit,
        check_resources,
        check_storage,
        dropped_text,
        prepare_data,
    )
    from search.space import load_space

    space = load_space(args.space, args.set)
    check_storage(space, space.storage, space.name)
    check_resources(space, None)
    config = check_fit(space)
    data = prepare_data(space, progress=False)
    sizes = ", ".join(f"{k} {len(v)}" for k, v in data.splits.items())
    print(
        f"{space.source}: ok - {len(space.methods)} methods, {space.num_trials} trials "
        f"({space.search.searcher}, objectives {space.objectives}), "
        f"max_t {space.max_t} evaluation rounds"
    )
    labels = {
        "classification": f"labels {data.label_names}",
        "seq2seq": f"{data.meta.get('source')} -> {data.meta.get('target')}",
    }.get(data.task, "regression")
    print(f"  data: {data.meta['dataset']} ({sizes}; {labels}); ranking metric {space.metric}")
    if data.meta.get("dropped_rows"):
        print(f"  data: {dropped_text(data.meta)}")
    for method in space.methods:
        knobs = space.method_space(method)
        searched = ", ".join(f"{k} ({d.kind})" for k, d in knobs.items() if d.kind != "fixed")
        print(f"  {method}: {searched or 'nothing searched'}{_cache_note(space, method, config)}")
    return 0


def _cache_note(space, method: str, config) -> str:
    """Whether a method's frozen-encoder configurations train on the feature cache, those frozen
    below layer k on the layer cache (its depths), or why not."""
    from trainables.features import cache_problem
    from trainables.layercache import layer_depth, layer_problem
    from trainables.methods import get_method

    if space.experiment.task == "seq2seq":
        return ""  # both caches hold encoder features for a classification head
    variants = space.knob_variants(method)
    frozen = [k for k in variants if get_method(method).frozen(k, config)]
    depths = sorted({d for k in frozen if (d := layer_depth(method, k, config))})
    above = [k for k in frozen if layer_depth(method, k, config) is None]
    note = ""
    if space.experiment.feature_cache and above:
        problem = next((p for k in above if (p := cache_problem(method, k, config))), None)
        note = f"; feature cache: not used ({problem})" if problem else "; feature cache: used"
    if depths and space.experiment.layer_storage != "off":
        problem = layer_problem(config)
        where = f"from layer {', '.join(map(str, depths))}"
        note += f"; layer cache: not used ({problem})" if problem else f"; layer cache: {where}"
    return note


def cmd_methods(args) -> int:
    from trainables.methods import METHODS

    if args.matrix:
        from trainables.methods.support import format_matrix, matrix, seq2seq_matrix

        print(format_matrix(seq2seq_matrix() if args.seq2seq else matrix()))
        return 0
    for m in METHODS.values():
        print(f"{m.name}: {m.help}")
        for k in m.knobs:
            print(f"    {k.name} = {k.default!r}  ({k.describe()}) {k.help}")
    return 0


def cmd_export(args) -> int:
    import pickle

    from search.export import export_trial

    try:
        out = export_trial(
            args.run_dir, args.out_dir, None if args.best else args.trial, force=args.force
        )
    except pickle.UnpicklingError as e:
        print(
            f"error: a checkpoint of {args.run_dir} is not a plain tensor file: {e}",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    from trainables.export import MANIFEST

    manifest = json.loads((out / MANIFEST).read_text())
    print(f"exported {manifest['method']} ({manifest['format']} format) to {out}")
    return 0


def cmd_confirm(args) -> int:
    import pandas as pd

    from reports.figure_data import confirm_summary
    from search.confirm import confirm
    from search.rundir import RunDir

    df = confirm(
        args.run_dir,
        seeds=args.seeds,
        top=args.top,
        address=args.address,
        per_method=args.per_method,
    )
    s = confirm_summary(df)
    name = str(df["metric"].iloc[0]).removeprefix("val_") if len(df) else "accuracy"
    with pd.option_context("display.width", 200, "display.max_colwidth", 60):
        print(f"\ntest {name} over seeds (mean ± std) beside the search's validation {name}:")
        print(
            s.drop(columns=["knobs_json"]).round(4).to_string(index=False)
            if not s.empty
            else "no run succeeded"
        )
    print(f"\nresults: {RunDir.at(args.run_dir).name_of(CONFIRM_FILE)}")
    return 0 if (df["status"] == "ok").all() else 1


def cmd_results(args) -> int:
    import pandas as pd

    from reports.figure_data import method_summary, objective_front_table, rank, ranking
    from search.results import load_results

    trials, _ = load_results(args.run_dir)
    metric, _ = ranking(trials)
    with pd.option_context("display.width", 200, "display.max_colwidth", 60):
        print(f"{args.run_dir}: {len(trials)} trials, ranked by {metric}\n")
        print(method_summary(trials).to_string())
        if args.pareto:
            print(f"\nPareto front ({_front_label(trials)}):")
            print(objective_front_table(trials).to_string(index=False))
        else:
            cols = ["trial_id", "method", "status", *dict.fromkeys([metric, "val_accuracy"]),
                    "trainable_params", "iterations", "wall_time_s", "knobs_json"]  # fmt: skip
            top = rank(trials).head(args.top)
            print(f"\ntop {len(top)} by {_label(trials)}:")
            print(top[[c for c in cols if c in top]].to_string(index=False))
    return 0


def cmd_report(args) -> int:
    from search.results import write_report

    path = write_report(args.run_dir, args.output)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
