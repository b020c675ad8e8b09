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
