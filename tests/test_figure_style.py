"""Heatmaps draw cell borders, not the style's grid through the middle of every cell."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402


def _figures_module():
    path = Path(__file__).parents[1] / "analyses" / "localization_figures.py"
    spec = importlib.util.spec_from_file_location("localization_figures", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_head_heatmap_lines_fall_between_cells():
    lf = _figures_module()
    sns.set_theme(style="whitegrid")  # the style that draws a grid at every tick
    grid = pd.DataFrame(np.arange(12.0).reshape(3, 4), index=[0, 1, 2], columns=pd.Index([0, 1, 2, 3], name="head"))
    fig, ax = plt.subplots()
    lf.heatmap(ax, grid, "t", truth="L1H2")
    fig.canvas.draw()
    assert not any(line.get_visible() for line in ax.xaxis.get_gridlines() + ax.yaxis.get_gridlines())  # none at centres
    assert list(ax.xaxis.get_minorticklocs()) == [-0.5, 0.5, 1.5, 2.5, 3.5]
    assert list(ax.yaxis.get_minorticklocs()) == [-0.5, 0.5, 1.5, 2.5]
    minor = [t.gridline for t in ax.xaxis.get_minor_ticks() + ax.yaxis.get_minor_ticks()]
    assert len(minor) == 9 and all(g.get_visible() for g in minor)  # one line on every cell border
    plt.close(fig)
