"""Plots as markdown holding a PNG: Dagster's UI renders an image in markdown metadata, and has no chart
type of its own for one optimization's iterations or for one point per optimization."""

from __future__ import annotations

import base64
import io
from typing import Callable


def png_markdown(draw: Callable, alt: str, size: tuple[float, float] = (6.4, 4.0)) -> str:
    """`draw(ax)` on a fresh matplotlib figure (no display needed), returned as `![alt](data:image/png...)`."""
    import matplotlib

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
