"""The one plot style of the toolkit, and the one way figures are saved (PNG and PDF side by side)."""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # scripts run headless (servers, CI); never open windows
import matplotlib.pyplot as plt  # noqa: E402

PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]

STYLE = {
    "figure.figsize": (7.0, 4.5),
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "savefig.bbox": "tight",
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.prop_cycle": matplotlib.cycler(color=PALETTE),
    "font.size": 10,
    "axes.titlesize": 11,
    "legend.fontsize": 9,
    "legend.frameon": False,
}


def use_style():
    """Apply the toolkit's matplotlib style (colour-blind safe palette, light grid)."""
    matplotlib.rcParams.update(STYLE)


def new_figure(*args, **kwargs):
    """``plt.subplots`` with the toolkit style applied."""
    use_style()
    return plt.subplots(*args, **kwargs)


def save_figure(fig, path, formats=("png", "pdf")):
    """Save ``fig`` as ``path.<fmt>`` for each format (the suffix of ``path`` is ignored) and close it.

    Returns the list of written paths.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        target = path.with_suffix(f".{fmt}")
        fig.savefig(target)
        written.append(target)
    plt.close(fig)
    return written
