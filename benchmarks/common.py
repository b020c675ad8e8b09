"""What the benchmark scripts share: running jobs as separate processes, a few at a time."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor


def run_parallel(jobs: Sequence[tuple[str, list[str]]], workers: int) -> list[bool]:
    """Run ``(name, command)`` jobs, ``workers`` at a time; print each outcome; return successes."""

    def launch(job: tuple[str, list[str]]) -> bool:
        name, command = job
        done = subprocess.run(command, capture_output=True, text=True)
        print(f"{name}: " + ("done" if done.returncode == 0 else f"FAILED\n{done.stderr[-2000:]}"), flush=True)
        return done.returncode == 0

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(launch, jobs))
