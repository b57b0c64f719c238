"""The swarm convergence plot as inline SVG (no script, no external asset).

Best fitness per iteration as a polyline on a log scale when every value is
positive (fitness falls by orders of magnitude), linear otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT = 640, 240
PAD_L, PAD_R, PAD_T, PAD_B = 64, 16, 16, 36


@dataclass(frozen=True)
class Plot:
    """A rendered plot.

    Attributes:
        svg: the `<svg>` element (role="img", titled and described).
        points: (iteration, value) pairs plotted.
        log_scale: True when the y axis is log10.
    """

    svg: str
    points: tuple[tuple[int, float], ...]
    log_scale: bool


def convergence_plot(points: Sequence[tuple[int, float]], *, title: str) -> Plot:
    """A polyline of `points` ((iteration, best fitness), iteration order).

    Args:
        points: at least one pair for a line; none gives an empty frame.
        title: accessible name of the image.
    """
    pts = [(i, v) for i, v in points if math.isfinite(v)]
    log = bool(pts) and all(v > 0 for _, v in pts)
    ys = [math.log10(v) if log else v for _, v in pts]
    x0, x1 = (pts[0][0], pts[-1][0]) if pts else (0, 1)
    y0, y1 = (min(ys), max(ys)) if ys else (0.0, 1.0)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y0, y1 = y0 - 1, y1 + 1
    pw, ph = WIDTH - PAD_L - PAD_R, HEIGHT - PAD_T - PAD_B

    def sx(x: float) -> float:
        return PAD_L + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return PAD_T + (1 - (y - y0) / (y1 - y0)) * ph

    line = " ".join(f"{sx(i):.1f},{sy(y):.1f}" for (i, _), y in zip(pts, ys, strict=True))

    def label(y: float) -> str:
        return f"{10 ** y:.3g}" if log else f"{y:.3g}"

    desc = (f"{len(pts)} iterations from {x0} to {x1}; best fitness from "
            f"{label(ys[0])} to {label(ys[-1])}" if pts else "no iterations yet")
    svg = (
        f'<svg class="plot" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
        f'role="img" aria-labelledby="plot-title plot-desc" xmlns="http://www.w3.org/2000/svg">'
        f'<title id="plot-title">{escape(title)}</title><desc id="plot-desc">{escape(desc)}</desc>'
        f'<rect x="{PAD_L}" y="{PAD_T}" width="{pw}" height="{ph}" class="frame"/>'
        f'<text x="{PAD_L - 6}" y="{PAD_T + 10}" text-anchor="end">{label(y1)}</text>'
        f'<text x="{PAD_L - 6}" y="{PAD_T + ph}" text-anchor="end">{label(y0)}</text>'
        f'<text x="{PAD_L}" y="{HEIGHT - 14}">{x0}</text>'
        f'<text x="{PAD_L + pw}" y="{HEIGHT - 14}" text-anchor="end">{x1}</text>'
        f'<text x="{PAD_L + pw / 2}" y="{HEIGHT - 4}" text-anchor="middle">iteration</text>'
        + (f'<polyline points="{line}" class="series"/>' if len(pts) > 1 else "")
        + (f'<circle cx="{sx(pts[-1][0]):.1f}" cy="{sy(ys[-1]):.1f}" r="3" class="series"/>'
           if pts else "")
        + "</svg>"
    )
    return Plot(svg=svg, points=tuple(pts), log_scale=log)
