"""The labelling page under load: scripted people answer in real browsers while RL trains beside.

First records a store of ``--queries`` pending queries with clips from the env's initial policy
(a source that records clips and answers nothing). Then serves it (``python -m gym_prefs.web``)
while the algorithm trains on the same env in another process, opens ``--pages`` pages in
Chromium (one browser context each, as different people), and has each answer every
``--think`` seconds until RL has run ``--rl-steps`` (at most ``--seconds``). Reports the time
from an answer to the next pair on screen (median, 95th percentile), the clip frames a second
each page showed, the labels a minute stored, and RL's steps a second beside all this;
``--no-people`` times RL alone.

    nice -n 19 python benchmarks/web.py --env HalfCheetah-v5 --pages 1 --think 2 --seconds 90
    nice -n 19 python benchmarks/web.py --env ALE/Pong-v5 --pages 3 --think 2 --seconds 90
    python benchmarks/web.py --env HalfCheetah-v5 --no-people
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from common import write_json

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip

TRAINING = textwrap.dedent(
    """
    import sys, time
    import gymnasium as gym
    from stable_baselines3 import A2C, PPO
    from stable_baselines3.common.env_util import make_vec_env
    import gym_prefs
    from gym_prefs.sources import WebLabeler

    import torch
    torch.set_num_threads(1)  # one core for RL, as in benchmarks/overhead.py: the other serves
    env_id, store, steps, record = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    if env_id.startswith("ALE/"):
        from gym_prefs.atari import make_atari_env
        venv = make_atari_env(env_id, n_envs=4, seed=0, render_mode="rgb_array")
        algo = A2C("CnnPolicy", venv, n_steps=5, seed=0)
    else:
        venv = gym_prefs.VecLearnedReward(make_vec_env(env_id, n_envs=4, seed=0))
        algo = PPO("MlpPolicy", venv, n_steps=512, batch_size=64, seed=0)

    class RecordOnly:
        # Records clips and never answers: the queries stay pending in the store for people.
        name, needs_clips, pending = "web", True, 0
        def request(self, queries): pass
        def poll(self, timeout=0.0): return []
        def close(self): pass

    callback = None
    if record:
        callback = gym_prefs.PreferenceCallback(
            RecordOnly(), total_labels=record, initial_label_fraction=1.0, store=store, fitting="inline"
        )
    start = time.perf_counter()
    algo.learn(steps, callback=callback)
    print(f"STEPS_PER_SECOND {steps / (time.perf_counter() - start):.1f}", flush=True)
    """
)


def with_people(args: argparse.Namespace) -> dict:
    from playwright.sync_api import sync_playwright

    store = Path(tempfile.mkdtemp()) / "preferences.db"
    env = dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))
    record = [sys.executable, "-c", TRAINING, args.env, str(store), "1", str(args.queries)]
    subprocess.run(record, check=True, capture_output=True, env=env)
    server = subprocess.Popen(
        [sys.executable, "-m", "gym_prefs.web", str(store), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=_normal_priority,
    )
    url = next(m.group(1) for line in server.stdout if (m := re.search(r"label at (\S+)", line)))
    training = subprocess.Popen(  # RL beside the server, as in a real run
        [sys.executable, "-c", TRAINING, args.env, "unused.db", str(args.rl_steps), "0"],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=_normal_priority,
    )
    timings: list[float] = []
    refused: list[str] = []  # answers the server did not take, with its reasons
    frames = 0
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        pages = []
        for person in range(args.pages):
            page = browser.new_context().new_page()
            page.on("response", lambda r: _note_refusal(r, refused))
            page.goto(url)
            page.fill("#person", f"person{person}")
            page.click("#who button")
            pages.append(page)
        started = time.monotonic()
        next_answer = [started + args.think * (i + 1) / args.pages for i in range(args.pages)]
        keys = ["ArrowLeft", "ArrowRight"]
        answered = 0
        while time.monotonic() - started < args.seconds and training.poll() is None:
            for i, page in enumerate(pages):
                if time.monotonic() >= next_answer[i]:
                    if not page.evaluate("document.getElementById('pair').hidden"):
                        page.keyboard.press(keys[answered % 2])
                        answered += 1
                    next_answer[i] += args.think
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        for page in pages:
            timings += [entry["seconds"] for entry in page.evaluate("window.gymPrefsTimings")]
            frames += page.evaluate("window.gymPrefsFramesShown")
        browser.close()
    rl_output = training.communicate()[0] if training.poll() is not None else ""
    server_cpu = _cpu_seconds(server.pid)
    for process in (training, server):
        process.kill()
        process.wait()
    rate = re.search(r"STEPS_PER_SECOND (\S+)", rl_output)
    from gym_prefs import PreferenceStore

    with PreferenceStore(store, readonly=True) as reader:
        stored = len(reader.answers())
    timings.sort()
    return {
        "env": args.env,
        "pages": args.pages,
        "think_seconds": args.think,
        "seconds": round(elapsed, 1),
        "answers_stored": stored,
        "labels_per_minute": round(stored / elapsed * 60, 1),
        "next_pair_median_s": round(statistics.median(timings), 3) if timings else None,
        "next_pair_p95_s": round(timings[int(0.95 * (len(timings) - 1))], 3) if timings else None,
        "shown": len(timings),
        "answers_refused": len(refused),
        "refusals": sorted(set(refused))[:3],
        "clip_fps_per_page": round(frames / elapsed / args.pages, 1),
        "rl_steps_per_second_beside": float(rate[1]) if rate else None,
        "server_cpu_seconds": round(server_cpu, 1),
        "server_cpu_seconds_per_answer": round(server_cpu / max(1, stored), 2),
    }


def _note_refusal(response, refused: list[str]) -> None:
    if response.url.endswith("/api/answer") and response.status != 200:
        refused.append(response.text())


def _normal_priority() -> None:
    # Run the benchmark under `nice -n 19`: the browsers, which normally run on the people's own
    # machines, then take only what the server and RL leave (root can raise a child back to 0).
    os.setpriority(os.PRIO_PROCESS, 0, 0)


def _cpu_seconds(pid: int) -> float:
    """User and system CPU seconds used so far by process ``pid`` (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def without_people(args: argparse.Namespace) -> dict:
    """RL steps a second with nobody labelling and no server (compare with a run with people)."""
    run = subprocess.run(
        [sys.executable, "-c", TRAINING, args.env, "unused.db", str(args.rl_steps), "0"],
        capture_output=True,
        text=True,
        check=True,
    )
    return {"env": args.env, "rl_steps_per_second_alone": float(re.search(r"STEPS_PER_SECOND (\S+)", run.stdout)[1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="HalfCheetah-v5")
    parser.add_argument("--pages", type=int, default=1)
    parser.add_argument("--think", type=float, default=2.0, help="seconds each person takes per answer")
    parser.add_argument("--seconds", type=float, default=90.0)
    parser.add_argument("--rl-steps", type=int, default=20_000, help="RL steps run (and timed) beside the server")
    parser.add_argument("--queries", type=int, default=300, help="pending queries recorded for the people")
    parser.add_argument("--no-people", action="store_true", help="time PPO with and without a server beside it")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    result = without_people(args) if args.no_people else with_people(args)
    print(result)
    if args.json:
        write_json(result, args.json)


if __name__ == "__main__":
    main()
