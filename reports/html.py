"""Render a run's tables as one self-contained HTML page (plotly.js inline).

It renders the DataFrames it is given; :func:`search.results.write_report`
reads them from the run folder and writes the page.

Every user-supplied string reaches the page escaped: table cells through
``html.escape``, figure text through plotly's JSON encoding.
"""

from __future__ import annotations

import html
import json

import pandas as pd

from reports.figure_data import (
    COST_TITLES,
    best_per_method,
    compute_data,
    confirm_summary,
    curve_data,
    deployment_measured,
    deployment_table,
    example_generations,
    healthy,
    knob_effects,
    knob_importance,
    knob_summary,
    metric_label,
    metric_title,
    new_parameter_share,
    objectives,
    pareto_front,
    per_label_data,
    ranking,
    run_metadata,
    scatter_data,
    trial_counts,
)
from reports.figure_data import objective_front_table as front_table
from reports.hypervolume import hypervolume_curve
from reports.svg import pareto_svg

PALETTE = [
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
    "#7f7f7f",
]


def _colors(methods) -> dict[str, str]:
    return {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(sorted(methods))}


def pareto_figure(trials: pd.DataFrame):
    """A cost (x) vs the best round of the ranking metric, the frontier drawn.

    One button per cost the run measured (trainable parameters, trainable %,
    latency merged and unmerged, inference memory, artifact size) switches x,
    the axis title and type, and the front drawn to the one on that cost; it
    opens on the run's first cost objective. Hover shows each trial's knobs,
    costs and metrics.
    """
    import plotly.graph_objects as go

    data = scatter_data(trials)
    label = metric_label(data["metric"])
    colors = _colors(data["methods"])
    axes = data["axes"]
    shown = next(a for a in axes if a["default"]) if axes else None
    fig = go.Figure()
    for method, pts in data["methods"].items():
        text = [
            f"{method} ({tid})<br>{knobs}<br>trainable {int(x):,} ({100 * f:.3f}%)"
            + _cost_text(pts["costs"], i)
            + f"<br>{label} {y:.4f}"
            + ("<br>stopped early" if s else "")
            for i, (tid, knobs, x, f, y, s) in enumerate(
                zip(pts["trial_id"], pts["knobs"], pts["x"], pts["fraction"], pts["y"], pts["stopped"])
            )
        ]  # fmt: skip
        fig.add_trace(
            go.Scatter(
                x=shown["methods"][method] if shown else pts["x"],
                y=pts["y"],
                mode="markers",
                name=method,
                text=text,
                hoverinfo="text",
                marker={
                    "color": colors[method],
                    "size": 11,
                    # Trials stopped early: hollow markers.
                    "symbol": ["circle-open" if s else "circle" for s in pts["stopped"]],
                    "line": {"width": 2, "color": colors[method]},
                },
            )
        )
    front = shown["frontier"] if shown else data["frontier"]
    fig.add_trace(
        go.Scatter(
            x=front["x"], y=front["y"], mode="lines", name="Pareto front",
            line={"color": "#444", "dash": "dash", "shape": "hv"}, hoverinfo="skip",
        )
    )  # fmt: skip
    title = shown["title"] if shown else "trainable parameters"
    fig.update_layout(
        title=_pareto_title(title, label),
        xaxis={"title": title, "type": shown["type"] if shown else "log"},
        yaxis={"title": f"best {label}"},
        template="plotly_white",
        height=520,
        updatemenus=[
            {
                "type": "buttons",
                "direction": "right",
                "x": 0,
                "y": 1.12,
                "xanchor": "left",
                "active": axes.index(shown),
                "buttons": _axis_buttons(data, label),
            }
        ]
        if shown
        else [],
    )
    return fig


def _axis_buttons(data: dict, label: str) -> list[dict]:
    """One button per x axis of ``data`` (:func:`scatter_data`): it sets every method's x, the
    front (the last trace) to the one on that axis, and the axis title and type."""
    ys = [pts["y"] for pts in data["methods"].values()]
    return [
        {
            "label": a["label"],
            "method": "update",
            "args": [
                {
                    "x": [*(a["methods"][m] for m in data["methods"]), a["frontier"]["x"]],
                    "y": [*ys, a["frontier"]["y"]],
                },
                {
                    "xaxis.title.text": a["title"],
                    "xaxis.type": a["type"],
                    "xaxis.autorange": True,
                    "title.text": _pareto_title(a["title"], label),
                },
            ],
        }
        for a in data["axes"]
    ]


def _pareto_title(x_title: str, label: str) -> str:
    return f"{x_title[0].upper()}{x_title[1:]} vs {label} (hollow: stopped early)"


# Hover lines for the costs a trial measured: (column, text before, unit).
_HOVER_COSTS = (
    ("infer_ms_b1", "latency", "ms"),
    ("infer_ms_b1_unmerged", "unmerged", "ms"),
    ("infer_peak_mb", "inference memory", "MiB"),
    ("artifact_mb", "artifact", "MiB"),
)


def _cost_text(costs: dict[str, list], i: int) -> str:
    parts = [
        f"{name} {costs[col][i]:.4g} {unit}"
        for col, name, unit in _HOVER_COSTS
        if col in costs and costs[col][i] is not None
    ]
    return "<br>" + ", ".join(parts) if parts else ""


def hypervolume_figure(curve: dict):
    """The hypervolume of the front after each trial ended: against completed trials (left)
    and against trial time (right), as steps; None where there is no curve."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    points = curve.get("per_trial") or []
    if not points:
        return None
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("against completed trials", "against trial time")
    )
    ys = [p["hypervolume"] for p in points]
    for col, xs in ((1, [p["trials"] for p in points]), (2, [p["trial_seconds"] for p in points])):
        fig.add_trace(
            go.Scatter(
                x=xs, y=ys, mode="lines+markers", line={"shape": "hv", "color": "#1f77b4"},
                marker={"size": 5}, showlegend=False, hoverinfo="x+y",
            ),
            row=1, col=col,
        )  # fmt: skip
    fig.update_xaxes(title_text="trials ended (failed ones aside)", row=1, col=1)
    fig.update_xaxes(title_text="trial time (s, all trials)", row=1, col=2)
    fig.update_yaxes(title_text="hypervolume", row=1, col=1)
    fig.update_layout(
        title="Hypervolume of the front on " + ", ".join(curve["objectives"]),
        template="plotly_white",
        height=380,
    )
    return fig


def curves_figure(curves: pd.DataFrame, trials: pd.DataFrame):
    """The ranking metric and the loss by epoch, one line per trial, grouped by method.

    A trial that early stopping cut is dotted and ends in an x where it was cut.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    lines = curve_data(curves, trials)
    colors = _colors({c["method"] for c in lines})
    label = metric_label(ranking(trials)[0])
    fig = make_subplots(rows=1, cols=2, subplot_titles=(label, "validation loss"))
    shown: set[str] = set()
    for c in sorted(lines, key=lambda c: c["method"]):
        for col, key in ((1, "values"), (2, "val_loss")):
            symbols = ["circle"] * len(c["epoch"])
            if c["stopped"] and symbols:
                symbols[-1] = "x"
            fig.add_trace(
                go.Scatter(
                    x=c["epoch"],
                    y=c[key],
                    mode="lines+markers",
                    name=c["method"],
                    legendgroup=c["method"],
                    showlegend=col == 1 and c["method"] not in shown,
                    line={
                        "color": colors[c["method"]],
                        "dash": "dot" if c["stopped"] else "solid",
                    },
                    marker={"symbol": symbols, "size": [6] * (len(symbols) - 1) + [10]},
                    text=f"{c['method']} ({c['trial_id']})"
                    + (" - stopped early here" if c["stopped"] else ""),
                    hoverinfo="text+x+y",
                ),
                row=1,
                col=col,
            )
        shown.add(c["method"])
    fig.update_xaxes(title_text="epoch")
    fig.update_layout(
        title="Learning curves (click a method in the legend to show or hide it; "
        "dotted, ending in x: stopped early)",
        template="plotly_white",
        height=440,
    )
    return fig


def compute_figure(trials: pd.DataFrame):
    """Trial time per method: finished trials and trials stopped early, stacked."""
    import plotly.graph_objects as go

    data = compute_data(trials)
    methods = list(data["per_method"])
    fig = go.Figure()
    for key, name, color in (
        ("finished_s", "ran to the end", "#4c78a8"),
        ("stopped_s", "stopped early", "#f58518"),
    ):
        fig.add_trace(
            go.Bar(
                y=methods,
                x=[data["per_method"][m][key] for m in methods],
                name=name,
                orientation="h",
                marker={"color": color},
            )
        )
    fig.update_layout(
        barmode="stack",
        title=f"Trial time by method: {data['trial_time_s']:.0f} s in all; early stopping saved "
        f"about {data['saved_s']:.0f} s ({100 * data['saved_fraction']:.0f}% of running every "
        "trial to the end)",
        xaxis={"title": "seconds of trial time"},
        template="plotly_white",
        height=120 + 40 * max(1, len(methods)),
    )
    return fig


def knobs_figure(trials: pd.DataFrame, knobs: list[str]):
    """Best validation accuracy against each knob that varies, one panel per knob."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    effects = knob_effects(trials, knobs)
    if not effects:
        return None
    names = list(effects)
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=names)
    colors = _colors({m for per in effects.values() for m in per})
    shown: set[str] = set()
    for i, knob in enumerate(names):
        r, c = i // cols + 1, i % cols + 1
        for method, pts in effects[knob].items():
            fig.add_trace(
                go.Scatter(
                    x=pts["x"], y=pts["y"], mode="markers", name=method, legendgroup=method,
                    showlegend=method not in shown, marker={"color": colors[method], "size": 8},
                    text=pts["trial_id"], hoverinfo="text+x+y",
                ),
                row=r, col=c,
            )  # fmt: skip
            shown.add(method)
        numeric = all(isinstance(v, (int, float)) for p in effects[knob].values() for v in p["x"])
        # The search records which knobs are log-scaled in the table's metadata.
        if knob in trials.attrs.get("log_knobs", ()) and numeric:
            fig.update_xaxes(type="log", row=r, col=c)
    label = metric_label(ranking(trials)[0])
    fig.update_yaxes(title_text=label, col=1)
    fig.update_layout(
        title=f"Knob effects: best {label} against each searched knob",
        template="plotly_white",
        height=300 * rows + 80,
    )
    return fig


def table_html(df: pd.DataFrame) -> str:
    """An HTML table with every cell escaped."""
    if df.empty:
        return "<p><em>none</em></p>"
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = []
    for _, r in df.iterrows():
        cells = "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in r.tolist())
        rows.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _best_table(trials: pd.DataFrame) -> pd.DataFrame:
    best = best_per_method(trials)
    metric, _ = ranking(trials)
    return pd.DataFrame(
        {
            "method": best["method"],
            "trial_id": best["trial_id"],
            metric: best[metric].round(4),
            "trainable_params": best["trainable_params"].astype("int64"),
            "trainable_%": (100 * best["trainable_fraction"]).round(3),
            "wall_time_s": best["wall_time_s"].round(1),
            "knobs": best["knobs_json"].map(knob_summary),
        }
    )


def _summary(trials: pd.DataFrame) -> pd.DataFrame:
    c = trial_counts(trials)
    return pd.DataFrame(
        {
            "trials": [c["trials"]],
            "finished": [c["finished"]],
            "stopped early": [c["stopped"]],
            "errored": [c["errored"]],
            "trial time (s)": [round(float(trials["wall_time_s"].fillna(0).sum()), 1)],
        }
    )


def _confirm_table(confirmed: pd.DataFrame | None) -> str:
    if confirmed is None or confirmed.empty:
        return (
            "<p><em>Not confirmed yet: <code>peftsearch confirm RUN_DIR --seeds 3</code> retrains "
            "the Pareto-optimal configurations with 3 seeds and evaluates each once on the test "
            "split.</em></p>"
        )
    s = confirm_summary(confirmed)
    name = s.attrs.get("metric", "val_accuracy").removeprefix("val_") if len(s) else "accuracy"
    name = metric_title(name)
    table = pd.DataFrame(
        {
            "trial_id": s["trial_id"],
            "method": s["method"],
            "trainable_params": s["trainable_params"].astype("int64"),
            f"val {name} (search)": s["val_metric_search"].round(4),
            f"val {name} (retrained, mean)": s["val_metric_retrained"].round(4),
            f"test {name}": _mean_std(s["test_metric_mean"], s["test_metric_std"]),
            "seeds": s["seeds"],
            "knobs": s["knobs_json"].map(knob_summary),
        }
    ) if len(s) else pd.DataFrame()  # fmt: skip
    if len(s) and name != "accuracy" and s["test_accuracy_mean"].notna().any():
        table.insert(6, "test accuracy", _mean_std(s["test_accuracy_mean"], s["test_accuracy_std"]))
    failed = confirmed[confirmed["status"] != "ok"]
    note = (
        f"<p>{len(failed)} run(s) failed; their errors are in the confirm table.</p>"
        if len(failed)
        else ""
    )
    n_test = confirmed["n_test"].iloc[0] if "n_test" in confirmed else "?"
    return (
        f"<p>Each configuration retrained with the seeds shown and evaluated once on the test split "
        f"({html.escape(str(n_test))} examples), at its best validation round.</p>"
        + table_html(table)
        + note
    )


def _mean_std(mean: pd.Series, std: pd.Series) -> list[str]:
    return [f"{m:.4f} ± {sd:.4f}" if pd.notna(m) else "" for m, sd in zip(mean, std)]


def _per_label_html(trials: pd.DataFrame, confirmed: pd.DataFrame | None) -> str:
    """Per-label test figures and the confusion matrix of each confirmed Pareto-optimal
    configuration (classification); every label escaped."""
    front = pareto_front(healthy(trials))["trial_id"].tolist()
    parts = []
    for d in per_label_data(confirmed, front):
        scores = pd.DataFrame(
            {
                "label": d["labels"],
                "precision": [round(v, 4) for v in d["precision"]],
                "recall": [round(v, 4) for v in d["recall"]],
                "F1": [round(v, 4) for v in d["f1"]],
                "support": d["support"],
            }
        )
        matrix = pd.DataFrame(d["confusion"], columns=d["labels"])
        matrix.insert(0, "true \\ predicted", d["labels"])
        parts.append(
            f"<h3>{html.escape(d['method'])} ({html.escape(str(d['trial_id']))})</h3>"
            f"<p>Test split, {d['seeds']} seed(s): precision, recall and F1 per label (mean over "
            "seeds); the confusion matrix summed over seeds.</p>"
            + table_html(scores)
            + table_html(matrix)
        )
    return "".join(parts)


def _pareto_heading(trials: pd.DataFrame) -> str:
    """``Pareto front: <the cost the plot opens on> vs <metric>``, escaped."""
    axes = scatter_data(trials)["axes"]
    x = next((a["title"] for a in axes if a["default"]), "trainable parameters")
    return f"Pareto front: {html.escape(x)} vs {html.escape(metric_label(ranking(trials)[0]))}"


def _static_copy(figure_file: str | None) -> str:
    if not figure_file:
        return ""
    return (
        f"<p>Static copy (trainable parameters): <code>{html.escape(figure_file)}</code> beside "
        "this file.</p>"
    )


def _front_html(trials: pd.DataFrame) -> str:
    """The Pareto-optimal trials on the run's objectives; with two costs or more, said to be the
    front on all of them, of which the plot above is a projection."""
    obj = objectives(trials)
    names = ", ".join(obj.names)
    if len(obj.columns) > 2:
        intro = (
            f"<p>Not dominated on all {len(obj.columns)} objectives at once ({html.escape(names)})."
            " The plot above is a 2-D projection: its dashed line is the front on the plotted "
            "cost alone.</p>"
        )
    else:
        intro = f"<p>On the run's objectives: {html.escape(names)}.</p>"
    table = front_table(trials)
    if new_parameter_share(trials) is not None:
        rows = trials.drop_duplicates("trial_id").set_index("trial_id")
        new = table["trial_id"].map(rows["new_params"]).astype(float)
        total = table["trial_id"].map(rows["total_params"]).astype(float)
        at = table.columns.get_loc("trainable_%") + 1
        table.insert(at, "method_%", (100 * (table["trainable_params"] - new) / total).round(3))
    return intro + _new_parameters_html(trials) + table_html(table) + _examples_html(trials)


def _new_parameters_html(trials: pd.DataFrame) -> str:
    """Where loading initialised parameters anew (they train under every method): how many, and
    the trainable share of each Pareto-optimal trial without them."""
    share = new_parameter_share(trials)
    if share is None:
        return ""
    return (
        f"<p>Loading initialised {share:.1f}% of the model's parameters anew (missing from the "
        "checkpoint: a warm-started encoder-decoder's cross-attention and LM-head transform). "
        f"They train under every method, so no method here trains less than {share:.1f}%; "
        "<code>method_%</code> is each trial's trainable share without them.</p>"
    )


def _examples_html(trials: pd.DataFrame) -> str:
    """Example generations of the Pareto-optimal configurations: source, reference and output
    side by side (escaped); empty for runs that generate nothing."""
    shown = example_generations(trials)
    if not shown:
        return ""
    parts = [
        '<h3 id="examples">Example generations</h3><p>Validation sources, their references and '
        "the output of each Pareto-optimal configuration's best round.</p>"
    ]
    for t in shown:
        head = f"{t['method']} ({t['trial_id']}) {t['knobs']}"
        parts.append(f"<h4>{html.escape(head)}</h4>{table_html(pd.DataFrame(t['examples']))}")
    return "".join(parts)


def _deployment_html(trials: pd.DataFrame) -> str:
    """The best configuration of each method and what it costs to serve and to train."""
    table = deployment_table(trials)
    legend = ", ".join(
        f"<code>{c}</code>: {html.escape(COST_TITLES[c])}"
        for c in table.columns
        if c in COST_TITLES
    )
    note = (
        "<p>Each method's best trial. Merged: the method's weights folded into the model where "
        f"it allows (LoRA, IA3, ...); unmerged: as trained. {legend}.</p>"
        if deployment_measured(trials)
        else "<p><em>This run measured no serving costs (latency, memory, size): runs before "
        "they were measured record trainable parameters only.</em></p>"
    )
    # Eleven columns or so: the table scrolls rather than widening the page.
    return note + f'<div style="overflow-x: auto">{table_html(table)}</div>'


def _hypervolume_html(curve: dict, div: str) -> str:
    """The hypervolume figure and, under it, its objectives, scales and reference point."""
    if curve["reference"] is None:
        return f"<p><em>{html.escape(curve['reference_note'])}</em></p>"
    scales = ", ".join(f"{c} ({s})" for c, s in zip(curve["columns"], curve["scales"]))
    final = curve["final"]
    return (
        div + f"<p>Final hypervolume {final:.4g}. Objectives, all turned to minimisation: "
        f"{html.escape(scales)}. {html.escape(curve['reference_note'])} The reference follows "
        "from the model and the task, not from the trials, so two searches on the same model "
        "and data are comparable.</p>"
    )


def _importance_html(importance: dict) -> str:
    """Knob importance per method as a table, and why a method has none."""
    rows, notes = [], []
    for method, entry in importance["methods"].items():
        if "importances" in entry:
            for knob, share in entry["importances"].items():
                rows.append(
                    {"method": method, "knob": knob, "importance": round(share, 3),
                     "trials": entry["trials"]}
                )  # fmt: skip
        elif "too_few" in entry:
            notes.append(
                f"{method}: too few trials to tell ({entry['too_few']} of {entry['needed']})"
            )
        elif "no_knob_varies" in entry:
            notes.append(f"{method}: no searched knob took two values")
        else:
            notes.append(f"{method}: the evaluator failed: {entry.get('error')}")
    intro = (
        f"<p>How much each searched knob explains of the variation in "
        f"{html.escape(metric_label(importance['metric']))}, per method (shares sum to 1), "
        f"by Optuna's {html.escape(importance['evaluator'])} on the trials that ended (failed "
        f"ones aside; stopped-early ones at their best round); a method needs "
        f"{importance['needed']} trials.</p>"
    )
    items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    return intro + table_html(pd.DataFrame(rows)) + (f"<ul>{items}</ul>" if items else "")


def _searched_knobs(trials: pd.DataFrame) -> list[str]:
    """The knobs any trial sampled (from ``knobs_json``), learning rate first."""
    names: set[str] = set()
    for text in trials.get("knobs_json", pd.Series(dtype=str)).dropna():
        names |= set(json.loads(text))
    return sorted(names, key=lambda k: (k != "learning_rate", k))


# Collects any JavaScript error, and marks the page rendered once every figure is drawn:
# the headless-browser test reads both from the DOM.
WATCH = """<script>
window.peftsearchErrors = [];
window.addEventListener("error", function (e) { window.peftsearchErrors.push(String(e.message)); });
</script>"""
DONE = """<script>
(function () {
  var drawn = Array.prototype.slice.call(document.querySelectorAll(".js-plotly-plot"));
  var pareto = document.getElementById("fig-pareto");
  var menus = (pareto && pareto.layout && pareto.layout.updatemenus) || [];
  document.getElementById("js-status").textContent = JSON.stringify({
    errors: window.peftsearchErrors,
    figures: drawn.length,
    figure_ids: drawn.map(function (d) { return d.id; }),
    pareto_buttons: menus.length ? menus[0].buttons.map(function (b) { return b.label; }) : []
  });
})();
</script>"""


def render(
    trials: pd.DataFrame,
    curves: pd.DataFrame,
    title: str,
    confirmed: pd.DataFrame | None = None,
    figure_file: str | None = None,
) -> str:
    """The report page as a string (``figure_file``: the static figure's name beside it)."""
    from plotly.offline import get_plotlyjs

    meta = run_metadata(trials)
    meta_table = pd.DataFrame({"": list(meta), "value": [str(v) for v in meta.values()]})
    errors = trials.loc[trials["status"] == "ERROR", ["trial_id", "method", "error"]]
    curve = hypervolume_curve(trials)
    figs = {
        "pareto": pareto_figure(trials),
        "hypervolume": hypervolume_figure(curve),
        "curves": curves_figure(curves, trials),
        "compute": compute_figure(trials),
        "knobs": knobs_figure(trials, _searched_knobs(trials)),
    }
    divs = {
        k: f.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig-{k}")
        if f is not None
        else "<p><em>no knob varied</em></p>"
        for k, f in figs.items()
    }
    t = html.escape(title)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>peftsearch: {t}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; }}
th {{ background: #f3f3f3; }}
code {{ font-size: 0.85em; }}
#js-status {{ display: none; }}
</style>
{WATCH}
<script type="text/javascript">{get_plotlyjs()}</script>
</head><body>
<h1>peftsearch: {t}</h1>
{table_html(_summary(trials))}
<h2>{_pareto_heading(trials)}</h2>
{divs["pareto"]}
{_static_copy(figure_file)}
<h3>Pareto-optimal trials</h3>
{_front_html(trials)}
<h3>Best trial per method</h3>
{table_html(_best_table(trials))}
<h2 id="deployment">Deployment: what each method's best configuration costs</h2>
{_deployment_html(trials)}
<h2 id="hypervolume">Hypervolume over time</h2>
{_hypervolume_html(curve, divs["hypervolume"])}
<h2>Confirmed on the test split</h2>
{_confirm_table(confirmed)}
{_per_label_html(trials, confirmed)}
<h2>Learning curves</h2>
{divs["curves"]}
<h2>Compute</h2>
{divs["compute"]}
<h2>Knob effects</h2>
{divs["knobs"]}
<h2 id="knob-importance">Knob importance</h2>
{_importance_html(knob_importance(trials))}
<h2>Failed trials</h2>
{table_html(errors)}
<h2>Run</h2>
{table_html(meta_table)}
<pre id="js-status"></pre>
{DONE}
</body></html>
"""


def render_report(
    trials: pd.DataFrame,
    curves: pd.DataFrame,
    title: str,
    confirmed: pd.DataFrame | None,
    figure_file: str,
) -> tuple[str, str]:
    """(the report page, its static Pareto figure as SVG, which the page names ``figure_file``)."""
    page = render(trials, curves, title, confirmed, figure_file)
    svg = pareto_svg(scatter_data(trials), _colors(trials["method"].dropna().unique()), title)
    return page, svg
