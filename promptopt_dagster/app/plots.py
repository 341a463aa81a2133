"""Plots as markdown holding a PNG: Dagster's UI renders an image in markdown metadata, and has no chart
type of its own for one optimization's iterations or for one point per optimization."""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Callable, Sequence


def png_markdown(draw: Callable, alt: str, size: tuple[float, float] = (6.4, 4.0)) -> str:
    """`draw(ax)` on a fresh matplotlib figure (no display needed), returned as `![alt](data:image/png...)`."""
    import matplotlib  # start-up: matplotlib takes ~0.3 s to import; only a run that draws a plot pays it

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=size, dpi=100)
    try:
        draw(ax)
        buffer = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buffer, format="png")
    finally:
        plt.close(fig)
    return f"![{alt}](data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()})"


def _offsets(rings: int = 6, step: float = 11.0) -> list[tuple[float, float, str, str]]:
    """Where a label may go around its point, nearest first: (dx, dy) in points and the text's alignment,
    so the text always starts at the offset and grows away from the point."""
    out = []
    for ring in range(rings):
        gap, lift = 4.0 + ring * step * 0.6, ring * step
        out += [
            (gap, 3.0 + lift, "left", "bottom"),
            (gap, -3.0 - lift, "left", "top"),
            (-gap, 3.0 + lift, "right", "bottom"),
            (-gap, -3.0 - lift, "right", "top"),
        ]
    return out


def place_labels(ax, xs: Sequence[float], ys: Sequence[float], labels: Sequence[str], fontsize: float = 8) -> list:
    """Annotate each point with its label where it overlaps no label placed before it, no plotted point and
    stays inside the axes: the first free place of a few rings of places around the point (right, above,
    then left, then further out, with a thin leader line). Labels of points that sit on one another
    (same cost, same score) thus stack instead of printing over each other.

    Call it last, once the axes' labels and title are set: it lays out the figure first, because the
    places are measured in pixels, and keeps the labels out of later layouts (tight_layout), which would
    otherwise move the axes under them."""
    from matplotlib.text import Text  # start-up: as png_markdown's

    fig = ax.figure
    fig.tight_layout()
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    dots = [ax.transData.transform((x, y)) for x, y in zip(xs, ys)]
    taken: list = []
    placed = []
    for (x, y), label in zip(zip(xs, ys), labels):
        best, best_cost = None, math.inf
        for dx, dy, ha, va in _offsets():
            far = abs(dy) > 6 or abs(dx) > 6
            note = ax.annotate(
                label,
                (x, y),
                textcoords="offset points",
                xytext=(dx, dy),
                ha=ha,
                va=va,
                fontsize=fontsize,
                annotation_clip=False,
                arrowprops=dict(arrowstyle="-", color="0.6", linewidth=0.6, shrinkA=0, shrinkB=2) if far else None,
            )
            note.set_in_layout(False)
            note.update_positions(renderer)  # where the offset puts the text: known only once laid out
            box = Text.get_window_extent(note, renderer).expanded(1.0, 1.08)  # the text, not its leader line
            cost = sum(_overlap(box, other) for other in taken)
            cost += sum(1.0 for px, py in dots if box.x0 - 2 <= px <= box.x1 + 2 and box.y0 - 2 <= py <= box.y1 + 2)
            cost += (
                0.0
                if (box.x0 >= frame.x0 and box.x1 <= frame.x1 and box.y0 >= frame.y0 and box.y1 <= frame.y1)
                else 0.5
            )
            if cost < best_cost:
                if best is not None:
                    best[0].remove()
                best, best_cost = (note, box), cost
            else:
                note.remove()
            if cost == 0:
                break
        taken.append(best[1])
        placed.append(best[0])
    return placed


def _overlap(a, b) -> float:
    """The area two boxes share, relative to the smaller one (0 when they only touch or are apart)."""
    w, h = min(a.x1, b.x1) - max(a.x0, b.x0), min(a.y1, b.y1) - max(a.y0, b.y0)
    if w <= 0 or h <= 0:
        return 0.0
    return 1.0 + w * h / max(1.0, min(a.width * a.height, b.width * b.height))


def label_boxes(ax) -> list:
    """The pixel boxes of the axes' annotations' text as drawn (for checks that no two labels overlap)."""
    from matplotlib.text import Text  # start-up: as png_markdown's

    renderer = ax.figure.canvas.get_renderer()
    return [Text.get_window_extent(t, renderer) for t in ax.texts]


def draw_score_cost(ax, frame) -> None:
    """Best test score against cost (dollars, or model calls when nothing was priced), one point per
    optimization generation with its 95% interval, each labeled where no other label is."""
    priced = frame["cost_usd"].sum() > 0
    x = [float(v) for v in (frame["cost_usd"] if priced else frame["llm_calls"])]
    y = [float(v) for v in frame["best_test_score"]]
    for (_, row), cost in zip(frame.iterrows(), x):
        low, high = row["test_low_95"], row["test_high_95"]
        err = None if math.isnan(low) else [[row["best_test_score"] - low], [high - row["best_test_score"]]]
        ax.errorbar(
            [cost],
            [row["best_test_score"]],
            yerr=err,
            fmt="o" if row["current"] else "x",
            capsize=3,
            alpha=1.0 if row["current"] else 0.5,
        )
    ax.set_xlabel("estimated cost (USD)" if priced else "model calls (no price set)")
    ax.set_ylabel(f"best prompt, test {frame.iloc[0]['metric'] if len(frame) else ''}")
    ax.set_title(f"{frame.iloc[0]['dataset'] if len(frame) else ''}: score vs cost (o current, x older)")
    ax.grid(alpha=0.3)
    ax.margins(x=0.25, y=0.2)  # room for the labels inside the axes
    place_labels(ax, x, y, [f"{r['optimization']} g{r['generation']}" for _, r in frame.iterrows()])


def score_cost_plot(frame) -> str:
    """The leaderboard's plot (draw_score_cost) as markdown holding a PNG."""
    return png_markdown(lambda ax: draw_score_cost(ax, frame), "score vs cost", size=(7.2, 4.8))
