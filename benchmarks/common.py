"""What the benchmark scripts share: running jobs as separate processes, a few at a time."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any


def run_parallel(jobs: Sequence[tuple[str, list[str]]], workers: int) -> list[bool]:
    """Run ``(name, command)`` jobs, ``workers`` at a time; print each outcome; return successes."""

    def launch(job: tuple[str, list[str]]) -> bool:
        name, command = job
        done = subprocess.run(command, capture_output=True, text=True)
        print(f"{name}: " + ("done" if done.returncode == 0 else f"FAILED\n{done.stderr[-2000:]}"), flush=True)
        return done.returncode == 0

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(launch, jobs))


def report(result: dict[str, Any], path: str | None) -> None:
    """Print ``result`` as JSON, and write it to ``path`` too when one is given."""
    print(json.dumps(result, indent=2))
    if path:
        write_json(result, path)


def write_json(result: dict[str, Any], path: str) -> None:
    """Write ``result`` to ``path`` as indented JSON."""
    with open(path, "w") as handle:
        json.dump(result, handle, indent=2)


def interquartile_mean(values: Sequence[float]) -> float:
    """The mean of the middle half of ``values`` (a quarter trimmed from each end, as rliable's IQM).

    Robuster than the mean to one failed seed, and uses more of the runs than the median.
    """
    import numpy as np

    ordered = np.sort(np.asarray(values, dtype=float))
    cut = int(len(ordered) * 0.25)
    return float(ordered[cut : len(ordered) - cut].mean())


def bootstrap_interval(values: Sequence[float], reps: int = 5000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the :func:`interquartile_mean` of ``values`` over runs."""
    import numpy as np

    data = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    samples = data[rng.integers(0, len(data), size=(reps, len(data)))]
    samples.sort(axis=1)
    cut = int(len(data) * 0.25)
    iqms = samples[:, cut : len(data) - cut].mean(axis=1)
    low, high = np.percentile(iqms, [2.5, 97.5])
    return float(low), float(high)
