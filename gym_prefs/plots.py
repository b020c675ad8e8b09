"""Learning curves of runs: true return, labels and reward-model quality against timesteps."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CURVES", "load_curves", "plot_runs"]

#: (logger key, axis title) of every panel, in order.
CURVES = (
    ("rollout/ep_true_rew_mean", "true episode return"),
    ("preferences/labels", "labels"),
    ("reward_model/true_reward_corr", "correlation of r̂ with the true reward"),
)


def load_curves(run_dir: str | os.PathLike[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(timesteps, values) of every curve logged in ``run_dir/progress.csv`` (empty rows skipped).

    Raises:
        FileNotFoundError: if the folder has no ``progress.csv`` (SB3's CSV log).
    """
    path = Path(run_dir) / "progress.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: plot reads the CSV log that `gym-prefs train` writes")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    curves = {}
    for key, _ in CURVES:
        points = [
            (float(row["time/total_timesteps"]), float(row[key]))
            for row in rows
            if row.get(key) not in (None, "") and row.get("time/total_timesteps") not in (None, "")
        ]
        steps, values = (np.array(column) for column in zip(*points, strict=True)) if points else (np.zeros(0),) * 2
        curves[key] = (steps, values)
    return curves


def plot_runs(run_dirs: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str]) -> Any:
    """Draw every run's curves on one figure (one panel per curve, one line per run) and save a PNG.

    Returns:
        The matplotlib figure.

    Example:
        >>> figure = plot_runs(["runs/Pendulum-v1-ppo-1", "runs/Pendulum-v1-ppo-2"], "curves.png")  # doctest: +SKIP
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("plots need matplotlib: pip install 'gym-prefs[plots]'") from error
    figure, axes = plt.subplots(1, len(CURVES), figsize=(5 * len(CURVES), 4), constrained_layout=True)
    for run in run_dirs:
        curves = load_curves(run)
        for axis, (key, _) in zip(axes, CURVES, strict=True):
            steps, values = curves[key]
            axis.plot(steps, values, label=Path(run).name)
    for axis, (_, title) in zip(axes, CURVES, strict=True):
        axis.set_title(title)
        axis.set_xlabel("timesteps")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.savefig(out, dpi=110)
    return figure
