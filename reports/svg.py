"""A static SVG of the Pareto plot, for papers and slides (no browser, no kaleido).

Drawn from the same :func:`reports.figure_data.scatter_data` as the interactive
figure: trainable parameters on a log x axis, the ranking metric on y, one
colour per method, hollow markers for trials stopped early, the frontier as
a dashed step line.
"""

from __future__ import annotations

import math
from html import escape
from typing import Any

from reports.figure_data import metric_label

W, H = 720, 440
LEFT, RIGHT, TOP, BOTTOM = 70, 170, 40, 50


def pareto_svg(data: dict[str, Any], colors: dict[str, str], title: str) -> str:
    """The SVG document (a string) for ``data`` = ``scatter_data(trials)``."""
    xs = [x for pts in data["methods"].values() for x in pts["x"] if x > 0]
    ys = [y for pts in data["methods"].values() for y in pts["y"]]
    if not xs:
        return _frame(title, "<text x='50%' y='50%' text-anchor='middle'>no trials</text>")
    lo, hi = math.floor(math.log10(min(xs))), math.ceil(math.log10(max(xs)))
    hi = max(hi, lo + 1)
    ylo, yhi = min(ys), max(ys)
    pad = max(0.02, (yhi - ylo) * 0.08)
    # Scores within [0, 1] (accuracy, F1) stay there; correlations reach -1, losses pass 1.
    floor = 0.0 if ylo >= 0 else -1.0
    ylo, yhi = max(floor, ylo - pad), (min(1.0, yhi + pad) if yhi <= 1 else yhi + pad)
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def sx(x: float) -> float:
        return LEFT + (math.log10(x) - lo) / (hi - lo) * pw

    def sy(y: float) -> float:
        return TOP + (1 - (y - ylo) / (yhi - ylo or 1)) * ph

    parts = [f"<rect x='{LEFT}' y='{TOP}' width='{pw}' height='{ph}' fill='none' stroke='#999'/>"]
    for e in range(lo, hi + 1):  # decades
        x = sx(10**e)
        parts.append(f"<line x1='{x:.1f}' y1='{TOP}' x2='{x:.1f}' y2='{TOP + ph}' stroke='#eee'/>")
        parts.append(
            f"<text x='{x:.1f}' y='{TOP + ph + 18}' text-anchor='middle' font-size='12'>1e{e}</text>"
        )
    for k in range(6):
        y = ylo + (yhi - ylo) * k / 5
        py = sy(y)
        parts.append(
            f"<line x1='{LEFT}' y1='{py:.1f}' x2='{LEFT + pw}' y2='{py:.1f}' stroke='#eee'/>"
        )
        parts.append(
            f"<text x='{LEFT - 6}' y='{py + 4:.1f}' text-anchor='end' font-size='12'>{y:.3f}</text>"
        )
    front = data["frontier"]
    if front["x"]:
        pts, prev = [], None
        for x, y in zip(front["x"], front["y"]):
            if prev is not None:
                pts.append(
                    f"{sx(x):.1f},{sy(prev):.1f}"
                )  # step: hold the metric until the next point
            pts.append(f"{sx(x):.1f},{sy(y):.1f}")
            prev = y
        parts.append(
            f"<polyline points='{' '.join(pts)}' fill='none' stroke='#444' stroke-dasharray='5,4'/>"
        )
    for i, (method, p) in enumerate(data["methods"].items()):
        c = escape(colors[method], quote=True)
        for x, y, stopped in zip(p["x"], p["y"], p["stopped"]):
            if x <= 0:
                continue
            fill = "white" if stopped else c
            parts.append(
                f"<circle cx='{sx(x):.1f}' cy='{sy(y):.1f}' r='5' fill='{fill}' stroke='{c}' "
                "stroke-width='2'/>"
            )
        ly = TOP + 10 + 20 * i
        parts.append(f"<circle cx='{W - RIGHT + 20}' cy='{ly}' r='5' fill='{c}'/>")
        parts.append(
            f"<text x='{W - RIGHT + 32}' y='{ly + 4}' font-size='13'>{escape(method)}</text>"
        )
    parts.append(
        f"<text x='{LEFT + pw / 2}' y='{H - 10}' text-anchor='middle' font-size='13'>"
        "trainable parameters (log scale)</text>"
    )
    label = metric_label(data.get("metric", "val_accuracy"))
    parts.append(
        f"<text x='16' y='{TOP + ph / 2}' text-anchor='middle' font-size='13' "
        f"transform='rotate(-90 16 {TOP + ph / 2})'>best {escape(label)}</text>"
    )
    return _frame(title, "\n".join(parts))


def _frame(title: str, body: str) -> str:
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{W}' height='{H}' "
        f"viewBox='0 0 {W} {H}' font-family='sans-serif'>\n"
        f"<rect width='{W}' height='{H}' fill='white'/>\n"
        f"<text x='{LEFT}' y='24' font-size='15'>{escape(title)}</text>\n{body}\n</svg>\n"
    )
