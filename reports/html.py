"""Render a run's Parquet files as one self-contained HTML page (plotly.js inline).

Every user-supplied string reaches the page escaped: table cells through
``html.escape``, figure text through plotly's JSON encoding.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import pandas as pd

from reports.atomic import atomic_write
from reports.pareto import best_per_method, curve_data, knob_summary, pareto_table, scatter_data

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
    """Trainable parameters (log x) vs best validation accuracy, frontier drawn."""
    import plotly.graph_objects as go

    data = scatter_data(trials)
    colors = _colors(data["methods"])
    fig = go.Figure()
    for method, pts in data["methods"].items():
        text = [
            f"{method} ({tid})<br>{knobs}<br>trainable {int(x):,} ({100 * f:.3f}%)<br>val acc {y:.4f}"
            + ("<br>stopped early" if s else "")
            for tid, knobs, x, f, y, s in zip(
                pts["trial_id"], pts["knobs"], pts["x"], pts["fraction"], pts["y"], pts["stopped"]
            )
        ]
        fig.add_trace(
            go.Scatter(
                x=pts["x"],
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
    front = data["frontier"]
    fig.add_trace(
        go.Scatter(
            x=front["x"], y=front["y"], mode="lines", name="Pareto front",
            line={"color": "#444", "dash": "dash", "shape": "hv"}, hoverinfo="skip",
        )
    )  # fmt: skip
    fig.update_layout(
        title="Trainable parameters vs validation accuracy (hollow: stopped early)",
        xaxis={"title": "trainable parameters", "type": "log"},
        yaxis={"title": "best validation accuracy"},
        template="plotly_white",
        height=520,
    )
    return fig


def curves_figure(curves: pd.DataFrame, trials: pd.DataFrame):
    """Validation accuracy by epoch, one line per trial, coloured by method."""
    import plotly.graph_objects as go

    lines = curve_data(curves, trials)
    colors = _colors({c["method"] for c in lines})
    fig = go.Figure()
    shown: set[str] = set()
    for c in lines:
        fig.add_trace(
            go.Scatter(
                x=c["epoch"],
                y=c["val_accuracy"],
                mode="lines+markers",
                name=c["method"],
                legendgroup=c["method"],
                showlegend=c["method"] not in shown,
                line={"color": colors[c["method"]], "dash": "dot" if c["stopped"] else "solid"},
                text=f"{c['method']} ({c['trial_id']})"
                + (" - stopped early" if c["stopped"] else ""),
                hoverinfo="text+x+y",
            )
        )
        shown.add(c["method"])
    fig.update_layout(
        title="Learning curves (dotted: stopped early)",
        xaxis={"title": "epoch"},
        yaxis={"title": "validation accuracy"},
        template="plotly_white",
        height=420,
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
    return pd.DataFrame(
        {
            "method": best["method"],
            "trial_id": best["trial_id"],
            "val_accuracy": best["val_accuracy"].round(4),
            "trainable_params": best["trainable_params"].astype("int64"),
            "trainable_%": (100 * best["trainable_fraction"]).round(3),
            "wall_time_s": best["wall_time_s"].round(1),
            "knobs": best["knobs_json"].map(knob_summary),
        }
    )


def _summary(trials: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "trials": [len(trials)],
            "finished": [
                int(((trials["status"] == "TERMINATED") & ~trials["stopped_early"]).sum())
            ],
            "stopped early": [int(trials["stopped_early"].sum())],
            "errored": [int((trials["status"] == "ERROR").sum())],
            "trial time (s)": [round(float(trials["wall_time_s"].fillna(0).sum()), 1)],
        }
    )


def render(trials: pd.DataFrame, curves: pd.DataFrame, title: str) -> str:
    """The report page as a string."""
    from plotly.offline import get_plotlyjs

    meta_cols = [
        c
        for c in ("model", "dataset", "n_train", "n_validation", "max_length", "seed", "git_commit")
        if c in trials
    ]
    meta = trials[meta_cols].iloc[:1] if len(trials) else pd.DataFrame()
    errors = trials.loc[trials["status"] == "ERROR", ["trial_id", "method", "error"]]
    figs = [pareto_figure(trials), curves_figure(curves, trials)]
    divs = [
        f.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig{i}")
        for i, f in enumerate(figs)
    ]
    versions = trials["versions"].iloc[0] if "versions" in trials and len(trials) else "{}"
    t = html.escape(title)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>peftsearch: {t}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; }}
th {{ background: #f3f3f3; }}
code {{ font-size: 0.85em; }}
</style>
<script type="text/javascript">{get_plotlyjs()}</script>
</head><body>
<h1>peftsearch: {t}</h1>
{table_html(meta)}
{table_html(_summary(trials))}
<h2>Pareto front: trainable parameters vs accuracy</h2>
{divs[0]}
<h3>Pareto-optimal trials</h3>
{table_html(pareto_table(trials))}
<h3>Best trial per method</h3>
{table_html(_best_table(trials))}
<h2>Learning curves</h2>
{divs[1]}
<h2>Failed trials</h2>
{table_html(errors)}
<p>Versions: <code>{html.escape(str(json.loads(versions)))}</code></p>
</body></html>
"""


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Build ``report.html`` from ``trials.parquet`` and ``curves.parquet`` (atomically)."""
    run_dir = Path(run_dir)
    trials = pd.read_parquet(run_dir / "trials.parquet")
    curves = pd.read_parquet(run_dir / "curves.parquet")
    title = (
        str(trials["run_name"].iloc[0]) if "run_name" in trials and len(trials) else run_dir.name
    )
    out = Path(out) if out else run_dir / "report.html"
    page = render(trials, curves, title)
    return atomic_write(out, lambda tmp: tmp.write_text(page, encoding="utf-8"))
