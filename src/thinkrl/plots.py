"""What the run report (`report`) and the paper's analyses (`evaluation.analyze`) draw with:
one plot rendered to PNG bytes (matplotlib, imported when a plot is drawn)."""

from __future__ import annotations

import io


def render_png(title, ylabel, draw, unit=False, xlabel="step") -> bytes | None:
    """Run draw(ax) -> bool on a fresh figure; the PNG bytes, or None if nothing was drawn."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(6.4, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if not draw(ax):
        return None
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    if unit and 0 <= ax.dataLim.y0 and ax.dataLim.y1 <= 1:  # a share: show all of [0, 1]
        ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    handles, labels = [], []
    for a in fig.axes:
        h, l = a.get_legend_handles_labels()
        handles, labels = handles + h, labels + l
    if len(handles) > 1:
        fig.axes[-1].legend(handles, labels, fontsize=7, ncol=2 if len(handles) > 5 else 1, framealpha=0.8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
