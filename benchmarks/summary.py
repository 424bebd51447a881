"""The README's benchmark summary: one line per benchmark from results/*.json.

python benchmarks/summary.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS  # noqa: E402


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _loaded(r: dict) -> str:
    """A note when a timing was measured on a busy machine (load above the core count)."""
    load, cores = r.get("loadavg_start"), r["machine"]["cpu_count"]
    if not load or max(load[0], r.get("loadavg_end", load)[0]) <= cores:
        return ""
    return (f"; measured under load: 1-min load average {load[0]:.1f} to "
            f"{r['loadavg_end'][0]:.1f} on {cores} cores")  # fmt: skip


def _vs(rows: list[dict], other: str) -> str:
    """overhead: peftsearch / ``other`` per method, with the IQR and the verdict."""
    return ", ".join(f"{x['method']} {x[f'ratio_vs_{other}']:.2f}x "
                     f"[{x[f'ratio_vs_{other}_iqr'][0]:.2f}, {x[f'ratio_vs_{other}_iqr'][1]:.2f}] "
                     f"{x[f'vs_{other}']}" for x in rows)  # fmt: skip


def lines() -> list[tuple[str, str, str, str]]:
    """(benchmark, figure, goal, met) rows for what has results."""
    out = []
    if r := _load("overhead"):
        yn = "yes" if r["met"] else "no"
        if "reps" in r["rows"][0]:  # repetitions in alternating order, with the IQR
            x0, rows = r["rows"][0], r["rows"]
            out.append(("overhead", f"peftsearch step time (median of {x0['reps']} repetitions of "
                        f"{x0['steps']} steps, alternating order; [IQR of per-repetition ratios]) "
                        f"/ bare loop: {_vs(rows, 'bare')}; / Trainer: {_vs(rows, 'trainer')}"
                        + _loaded(r),
                        "≤ 1.03x bare (IQR's upper end), < 1x Trainer (IQR below 1)", yn))  # fmt: skip
        else:  # the old format: one run per runner in a fixed order, no spread
            worst_bare = max(x["ratio_vs_bare"] for x in r["rows"])
            worst_tr = max(x["ratio_vs_trainer"] for x in r["rows"])
            out.append(("overhead", f"step time ≤ {worst_bare:.2f}x bare loop, ≤ {worst_tr:.2f}x "
                        f"Trainer ({', '.join(x['method'] for x in r['rows'])}); one run each in a "
                        "fixed order, no spread: does not resolve 3%", "≤ 1.03x bare, < 1x Trainer",
                        yn))  # fmt: skip
    if r := _load("startup"):
        tok = r["tokenization"]
        worst = max(x["ratio_vs_bare"] for x in r["rows"])
        out.append(("startup", f"{tok['passes']:g} tokenization pass per search, "
                    f"{tok['trial_tokenizer_calls']} in trials; first step ≤ {worst:.2f}x a "
                    "hand-written load + step", "one tokenization pass", "yes" if r["met"] else "no"))  # fmt: skip
    if r := _load("early_stopping"):
        rows = {x["scheduler"]: x for x in r["rows"]}
        parts = [f"{s}: {x['compute_vs_none']:.2f}x time ({x.get('rounds_vs_none', float('nan')):.2f}x "
                 f"rounds), best {x['best_minus_none_points']:+.1f} pt"
                 for s, x in rows.items() if s != "none"]  # fmt: skip
        out.append(("early_stopping", "; ".join(parts), "best within 0.5 pt at ≤ 1/3 compute",
                    ", ".join(f"{k}: {'yes' if v else 'no'}" for k, v in r["met"].items())))  # fmt: skip
    if r := _load("feature_cache"):
        rows, m = r["rows"], r["met"]
        out.append(("feature_cache", "one trial, with the one-time feature pass: "
                    + ", ".join(f"{x['method']} {x['speedup_single_trial']:.1f}x" for x in rows)
                    + "; amortised over 10 / 100 trials sharing the pass: "
                    + ", ".join(f"{x['method']} {x['speedup_amortised']['10']:.0f}x / "
                                f"{x['speedup_amortised']['100']:.0f}x" for x in rows)
                    + "; train + eval alone: "
                    + ", ".join(f"{x['method']} {x['speedup_per_trial']:.0f}x" for x in rows)
                    + "; accuracy cached - tokens: "
                    + ", ".join(f"{x['method']} {x['acc_diff_points']:+.1f} pt" for x in rows)
                    + _loaded(r),
                    "≥ 10x, same accuracy",
                    f"one trial: {'yes' if m['single_trial'] else 'no'}, 10 trials: "
                    f"{'yes' if m['amortised_10_trials'] else 'no'}, train + eval alone: "
                    f"{'yes' if m['per_trial_without_feature_pass'] else 'no'}"))  # fmt: skip
    if r := _load("layer_cache"):
        m = r["met"]
        out.append(("layer_cache", "epoch speed-up from the cached states entering layer k "
                    f"(MiniLM, L = {r['layers']}), vs its bound (measured; backward = 2x forward): "
                    + ", ".join(f"k={x['k']} {x['speedup']:.2f}x ({x['bound_measured']:.2f}x; "
                                f"{x['bound_2x']:.2f}x)" for x in r["rows"])
                    + f"; one-time pass {r['cache_pass_s']:.0f} s" + _loaded(r),
                    ">= 2.5x at k = L-1, >= 80% of the bound at k = L/2",
                    ", ".join(f"{k}: {'yes' if v else 'no'}" for k, v in m.items())))  # fmt: skip
    if r := _load("design_space"):
        out.append(("design_space", _design(r) + _loaded(r),
                    "(b) and (c) above (a); (c) above (b) at equal trial-seconds",
                    _design_met(r)))  # fmt: skip
    if r := _load("memory"):  # like for like only: as is vs as is, checkpointing vs checkpointing
        plain, ckpt = r["worst_peft_ratio"], r["worst_peft_ckpt_vs_full_ckpt"]
        out.append(("memory", f"worst PEFT / full peak RSS, like for like: {plain:.2f}x both as "
                    f"is, {ckpt:.2f}x both with gradient checkpointing", "≤ 0.7x",
                    f"as is: {'yes' if plain <= 0.7 else 'no'}, with checkpointing: "
                    f"{'yes' if ckpt <= 0.7 else 'no'}"))  # fmt: skip
    if r := _load("quality"):
        v = r["verdicts"]
        out.append(("quality", "; ".join(
            f"{_named(t, x)}: full {x['full']} ± {x.get('full_std')}, {x.get('under_1pct_method')} (best ≤1% by "
            f"validation) {x['best_under_1pct']} ± {x.get('best_under_1pct_std')}, "
            f"{x.get('best_method')} (best by validation) {x['best']} ± {x.get('best_std')}"
            for t, x in v.items()), "≤1% params within 1 pt of full (test, methods picked on "
            "validation)", ", ".join(f"{t}: {'yes' if x['under_1pct_within_1pt'] else 'no'}"
                                     for t, x in v.items())))  # fmt: skip
    if r := _load("report_scale"):
        k = next(x for x in r["rows"] if x["trials"] == 1000)
        out.append(("report_scale", f"1,000 trials: {k['build_s']} s, {k['html_mb']} MB",
                    "a few seconds, < 10 MB", "yes" if r["met"] else "no"))  # fmt: skip
    if r := _load("cluster_scaling"):
        out.append(("cluster_scaling", f"2 local Ray nodes (1 CPU each, one host) / 1 node: "
                    f"{r['ratio']:.2f}x trials per hour{_loaded(r)}", "≥ 1.8x", "yes" if r["met"] else "no"))  # fmt: skip
    if r := _load("trial_start"):
        w, wo = r["summary"]["with_reuse"], r["summary"]["without_reuse"]
        own = {reuse: sorted(x["trial_own_s"] for x in r["rows"] if x["reuse_actors"] is reuse)
               for reuse in (True, False)}  # fmt: skip
        out.append(("trial_start", f"fixed start per trial (search wall time per trial minus the "
                    f"trial's own time; {r['trials_per_search']} short trials one at a time, median "
                    f"of {len(wo['fixed_start_s'])}): {wo['fixed_start_s_median']:.2f} s without "
                    f"actor reuse (Tune's default), {w['fixed_start_s_median']:.2f} s with it "
                    f"(peftsearch); the trial's own time {own[False][len(own[False]) // 2]:.2f} s "
                    f"-> {own[True][len(own[True]) // 2]:.2f} s (warm imports){_loaded(r)}",
                    "cut the ~6 s fixed start", "yes" if w["fixed_start_s_median"] < 1 else "no"))  # fmt: skip
    if r := _load("peer"):
        out.append(("peer", "; ".join(
            f"{x['pairing']} (peftsearch {x['peftsearch_precision']} vs Trainer "
            f"{x['peer_precision']}): wall {x['wall_s'][0]:.0f} ± {x['wall_s'][1]:.0f} s vs "
            f"{x['peer_wall_s'][0]:.0f} ± {x['peer_wall_s'][1]:.0f} s = {x['wall_ratio']:.2f}x, "
            f"best val accuracy {100 * x['best_val_accuracy'][0]:.1f} ± "
            f"{100 * x['best_val_accuracy'][1]:.1f} vs {100 * x['peer_best_val_accuracy'][0]:.1f} ± "
            f"{100 * x['peer_best_val_accuracy'][1]:.1f}"
            for x in r["rows"]) + f" (mean ± std over {r['seeds']} seeds){_loaded(r)}",
            "defaults: ≤ 0.5x the Trainer search's wall time, accuracy within the spread; "
            "both bf16, both fp32: faster",
            ", ".join(f"{x['pairing']}: {'yes' if x['met'] else 'no'}{_unresolved(x)}"
                      for x in r["rows"])))  # fmt: skip
    if r := _load("spot_check"):
        out.append(("spot_check", _spot(r), "every method the support matrix accepts runs on a "
                    "12-layer, 110M encoder; wall time per method",
                    "yes" if r["met"] else f"no: {', '.join(r['failed']) or 'nothing ran'}"))  # fmt: skip
    if r := _load("gpu"):
        out.append(("gpu", _gpu(r), "measured where a CUDA GPU is available", "measured"))
    if r := _load("inference_cost"):
        out.append(("inference_cost", _inference(r), "each method's cost to serve, measured",
                    "measured"))  # fmt: skip
    if r := _load("warm_start"):
        out.append(("warm_start", _warm(r), "warm start ahead of cold at equal trial-seconds",
                    "yes" if _warm_ahead(r) else "no"))  # fmt: skip
    if r := _load("headlines"):
        out.append(("headlines", _headlines(r) + _loaded(r),
                    "`peftsearch run headlines` ≤ 10 min on 2 cores, ≥ 4 methods, ASHA, a report",
                    "yes" if r["met"]["demo_under_10_min"] and len(r["demo_methods"]) >= 4
                    else "no"))  # fmt: skip
    return out


def _headlines(r: dict) -> str:
    """The seq2seq demo's wall time, then each method's confirmed test ROUGE-1/2/L."""
    per = "; ".join(
        f"{x['method']} ({x['trainable_%']:g}% trainable, {x['method_%']:g}% without the new "
        f"cross-attention) {x['test_rouge1']} / {x['test_rouge2']} / {x['test_rougeL']}, "
        f"val-test gap {x['val_test_gap']:+.2f}"
        for x in sorted(r["rows"], key=lambda x: x["trainable_%"])
    )
    return (f"demo: {r['demo_trials']} trials of {len(r['demo_methods'])} methods in "
            f"{r['demo_wall_s']} s; each method's best by validation ROUGE-L retrained over "
            f"{r['settings']['seeds']} seeds, test ROUGE-1 / 2 / L (mean ± std, whole test split): "
            + per)  # fmt: skip


def _design_full(r: dict) -> list[dict]:
    """The design-space rows at each task's whole equal budget."""
    budget: dict[str, float] = {}
    for x in r["rows"]:
        budget[x["task"]] = max(budget.get(x["task"], 0.0), x["trial_seconds"])
    return [x for x in r["rows"] if x["trial_seconds"] == budget[x["task"]]]


def _design(r: dict) -> str:
    """Hypervolume of (val accuracy, trainable params) at equal trial-seconds, per task and arm."""
    s = r["settings"]
    return (f"hypervolume at equal trial-seconds ({len(s['seeds'])} seeds, {s['trials']} trials "
            f"of {s['train']} examples; mean ± std): "
            + "; ".join(f"{x['task']} ({x['trial_seconds']:.0f} s): fixed {x['fixed']}, "
                        f"placement {x['placement']}, cached {x['cached']}"
                        for x in _design_full(r)))  # fmt: skip


def _design_met(r: dict) -> str:
    """Per task: whether placement beat fixed and the cache beat placement, by more than the
    spread (the larger std of the two)."""

    def ahead(x: dict, a: str, b: str) -> str:
        gap, spread = x[f"{a}_mean"] - x[f"{b}_mean"], max(x[f"{a}_std"], x[f"{b}_std"])
        return "yes" if gap > spread else ("within noise" if gap > -spread else "no")

    return "; ".join(f"{x['task']}: placement {ahead(x, 'placement', 'fixed')}, cache "
                     f"{ahead(x, 'cached', 'placement')}" for x in _design_full(r))  # fmt: skip


def _inference(r: dict) -> str:
    """inference_cost: ms per example at batch 1 merged (unmerged) and batch 32, artifact MB."""
    rows = ", ".join(
        f"{x['method']} {x['infer_ms_b1']:.1f}"
        + (f" ({x['infer_ms_b1_unmerged']:.1f} unmerged)"
           if x["infer_ms_b1_unmerged"] != x["infer_ms_b1"] else "")
        + f" / {x['infer_ms_b32']:.1f} ms, {x['artifact_mb']:.2f} MB"
        for x in r["rows"]
    )  # fmt: skip
    return (f"{r['model']}, {r['max_length']} tokens, {r['precision']}, {r['threads']} threads, "
            f"median of {r['rounds']} rounds; per method ms per example at batch 1 / batch 32 "
            f"(merged where peft allows it), export size: {rows}" + _loaded(r))  # fmt: skip


def _warm_at_budget(r: dict) -> dict:
    return max(r["rows"], key=lambda x: x["trial_seconds"])


def _warm_ahead(r: dict) -> bool:
    x = _warm_at_budget(r)
    return x["diff_mean"] > x["diff_std"]  # ahead by more than the seeds' spread


def _warm(r: dict) -> str:
    """warm_start: hypervolume warm vs cold at the trial-seconds budget and per trials."""
    s, x = r["settings"], _warm_at_budget(r)
    trials = "; ".join(f"after {t['trials']} trials warm {t['warm']}, cold {t['cold']}"
                       for t in r.get("by_trials", []))  # fmt: skip
    return (f"AG News searches ({s['trials']} trials of {', '.join(s['methods'])}, "
            f"{s['train']} training examples, {s['model']}) warm-started from an SST-2 run vs "
            f"cold, {len(s['seeds'])} seeds each: hypervolume of (val_accuracy, trainable_params) "
            f"after {r['budget_trial_seconds']} trial-seconds warm {x['warm']}, cold {x['cold']} "
            f"(warm - cold {x['warm - cold']}); {trials}. The source run reached "
            f"{r['source']['best_val_accuracy']:.2f} on SST-2" + _loaded(r))  # fmt: skip


def _unresolved(x: dict) -> str:
    """peer: a note where the two sides' wall times differ by less than their spreads together."""
    gap = abs(x["wall_s"][0] - x["peer_wall_s"][0])
    return (
        " (not resolved: the seeds' spread exceeds the gap)"
        if gap < x["wall_s"][1] + x["peer_wall_s"][1]
        else ""
    )


def _gpu(r: dict) -> str:
    """gpu: steps per second fp32 -> bf16 per encoder and method, and packed trials per hour."""
    parts = []
    for enc in dict.fromkeys(x["encoder"] for x in r["speed"]):
        rows = {(x["method"], x["precision"]): x for x in r["speed"] if x["encoder"] == enc}
        methods = dict.fromkeys(m for m, _ in rows)
        steps = ", ".join(f"{m} {rows[m, 'fp32']['steps_per_s']:.0f}→{rows[m, 'bf16']['steps_per_s']:.0f}"
                          for m in methods)  # fmt: skip
        peak = max(x["peak_gb"] for x in rows.values())
        parts.append(f"{enc} (random weights) steps/s fp32→bf16: {steps}; peak ≤ {peak:.1f} GB")
    packed = ", ".join(f"{x['trials_packed']} per GPU {x['trials_per_hour']}/h "
                       f"(util {x['gpu_util_pct']}%)" for x in r["packing"])  # fmt: skip
    return (
        f"{r['gpu']}, batch {r['batch_size']} x {r['length']} tokens: "
        + "; ".join(parts)
        + f"; whole lora trials ({r['steps'] * 5} steps, cold process) packed: {packed}"
    )


def _spot(r: dict) -> str:
    """spot_check: per method wall time (validation accuracy), and what was refused."""
    ran = [x for x in r["rows"] if x["status"] != "refused"]
    refused = [x for x in r["rows"] if x["status"] == "refused"]
    times = ", ".join(
        f"{x['method']} {x['wall_time_s']:.0f} s ({x['val_accuracy']:.2f})"
        if x["status"] == "ok" else f"{x['method']} {x['status']}" for x in ran
    )  # fmt: skip
    return (
        f"{r['model_name']} ({r['model_type']}, {r['layers']} layers, "
        f"{r['total_params'] / 1e6:.0f}M parameters) on BBC News, {r['train']} training / "
        f"{r['validation']} validation articles, {r['max_length']} tokens, {r['epochs']} epoch, "
        f"one trial per method, one at a time on {r['cpus']} cores; wall time per trial "
        f"(validation accuracy): {times}; feature pass (linear_probe, head_only) "
        f"{r['features_s']} s; refused before Ray: "
        + (", ".join(x["method"] for x in refused) or "none")
        + _loaded(r)
    )


# A quality row's figures of its ranking metric; rows recorded before the metric was a
# choice have accuracy only (val_acc_mean, test_acc_*).
FIGURES = {"val": ("val_metric_mean", "val_acc_mean"), "test": ("test_metric_mean", "test_acc_mean"),
           "std": ("test_metric_std", "test_acc_std")}  # fmt: skip


def _fig(x: dict, name: str) -> float:
    new, old = FIGURES[name]
    return x[new] if new in x else x[old]


def _named(task: str, x: dict) -> str:
    """The task, with its metric where that is not accuracy: ``rte (f1_macro)``."""
    metric = x.get("metric", "accuracy")
    return task if metric == "accuracy" else f"{task} ({metric})"


def quality_lines() -> list[str]:
    """Test accuracy per task and method (mean ± std over seeds), from quality.json."""
    r = _load("quality")
    if not r:
        return []
    caps = ", ".join(
        f"{t}: {v['train_cap']} training examples"
        + (f" in batches of {v['batch_size']}" if v.get("batch_size", 32) != 32 else "")
        + f", {v['trials_per_method']} trials per method"
        for t, v in r["verdicts"].items()
    )
    # Accuracy throughout, as before; where a task ranks by another metric, it is named
    # beside the task, and the test accuracy is shown beside its test figure.
    other = any(v.get("metric", "accuracy") != "accuracy" for v in r["verdicts"].values())
    what = ("value of the task's metric (mean): accuracy, or the metric named beside the task "
            "(then its test accuracy in brackets)" if other else "accuracy (mean)")  # fmt: skip
    out = ["Quality: MiniLM; per task and method a search of its own, then the method's best "
           "configuration by validation retrained over 3 seeds and read once on the whole test "
           "split (mean ± std over seeds); " + caps + ". Validation is the retrained validation "
           f"{what}; gap = validation - test.", "",
           f"| task | method | trainable % | validation | test {'metric' if other else 'accuracy'} "
           "| gap | published, other models |",
           "|---|---|---|---|---|---|---|"]  # fmt: skip
    for task, v in r["verdicts"].items():
        rows = sorted((x for x in r["rows"] if x["task"] == task), key=lambda x: x["trainable_%"])
        for i, x in enumerate(rows):
            context = v["published_context"] if i == 0 else ""
            acc = (f" ({x['test_acc_mean']:.2f})" if x.get("metric", "accuracy") != "accuracy"
                   and x.get("test_acc_mean") is not None else "")  # fmt: skip
            out.append(f"| {_named(task, x)} | {x['method']} | {x['trainable_%']:g} | {_fig(x, 'val'):.2f} | "
                       f"{_fig(x, 'test'):.2f} ± {_fig(x, 'std'):.2f}{acc} | {x['val_test_gap']:+.2f} | "
                       f"{context} |")  # fmt: skip
    return out


if __name__ == "__main__":
    print("| benchmark | measured | goal | met |\n|---|---|---|---|")
    for row in lines():
        print("| " + " | ".join(row) + " |")
    if quality := quality_lines():
        print("\n" + "\n".join(quality))
