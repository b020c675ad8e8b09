"""Throughput and size of the preference store with realistic segments.

MuJoCo: HalfCheetah-v5 observations (17) and actions (6), 30-step segments, from a random
policy. Atari: Pong, 84x84 grey frames stacked by 4 (uint8), 25-step segments, from a random
policy. Labels are added in batches of ``--batch`` pairs (one transaction for the queries, one
for the answers), as the callback does. The newest ``--load-last`` are then read back into the
labelled data fitting holds, as a run does when it restarts on the store (how much memory their
observations take there is reported too).

    python benchmarks/store.py --kind mujoco --labels 100000
    python benchmarks/store.py --kind atari --labels 3000
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import gymnasium as gym
import numpy as np
from common import report

from gym_prefs import Answer, PreferenceStore, SegmentPairs
from gym_prefs.comparisons import Comparisons


def mujoco_steps(count: int, rng: np.random.Generator) -> tuple[gym.Space, gym.Space, int, np.ndarray, np.ndarray]:
    env = gym.make("HalfCheetah-v5")
    obs, _ = env.reset(seed=0)
    observations, actions = [], []
    for _ in range(count):
        action = env.action_space.sample()
        observations.append(obs)
        actions.append(action)
        obs, *_ = env.step(action)
    return env.observation_space, env.action_space, 30, np.array(observations), np.array(actions)


def atari_steps(count: int, rng: np.random.Generator) -> tuple[gym.Space, gym.Space, int, np.ndarray, np.ndarray]:
    """84x84 grey Pong frames, stacked by 4 (nearest-neighbour resize, frame-skip 4)."""
    from collections import deque

    import ale_py

    gym.register_envs(ale_py)
    env = gym.make("ALE/Pong-v5", obs_type="grayscale", frameskip=4)
    rows, cols = np.linspace(0, 209, 84).astype(int), np.linspace(0, 159, 84).astype(int)
    frame, _ = env.reset(seed=0)
    stack = deque([frame[rows][:, cols]] * 4, maxlen=4)
    observations, actions = [], []
    for _ in range(count):
        action = env.action_space.sample()
        observations.append(np.stack(stack, axis=-1))
        actions.append(action)
        frame, _, terminated, truncated, _ = env.step(action)
        stack.append(frame[rows][:, cols])
        if terminated or truncated:
            frame, _ = env.reset()
    obs_space = gym.spaces.Box(0, 255, (84, 84, 4), np.uint8)
    return obs_space, env.action_space, 25, np.array(observations), np.array(actions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=("mujoco", "atari"), default="mujoco")
    parser.add_argument("--labels", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=100, help="pairs per transaction")
    parser.add_argument("--load-last", type=int, default=3000, help="also time loading the newest N labels")
    parser.add_argument("--dir", default=None, help="where to put the store (default: a temporary folder)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    make = mujoco_steps if args.kind == "mujoco" else atari_steps
    obs_space, act_space, length, observations, actions = make(5000 if args.kind == "mujoco" else 3000, rng)
    rewards = rng.normal(size=len(observations)).astype(np.float32)
    folder = args.dir or tempfile.mkdtemp()
    path = os.path.join(folder, f"{args.kind}.db")
    store = PreferenceStore(path, obs_space, act_space, length, env_id=args.kind)

    insert_seconds = 0.0
    added = 0
    while added < args.labels:
        count = min(args.batch, args.labels - added)
        starts = rng.integers(0, len(observations) - length, size=(count, 2))
        index = starts[..., None] + np.arange(length)
        pairs = SegmentPairs(observations[index], actions[index], rewards[index])
        start = time.perf_counter()
        ids = store.add_queries(pairs, source="benchmark")
        store.record_answers([Answer(i, "first" if i % 2 else "second", "benchmark") for i in ids])
        insert_seconds += time.perf_counter() - start
        added += count
    store.close()

    size = os.path.getsize(path) + sum(
        os.path.getsize(path + suffix) for suffix in ("-wal", "-shm") if os.path.exists(path + suffix)
    )
    raw = (observations[0].nbytes + actions[0].nbytes + 4) * length * 2
    store = PreferenceStore(path, readonly=True)
    start = time.perf_counter()
    last = store.labelled_pairs(last=args.load_last)
    load_last_seconds = time.perf_counter() - start
    start = time.perf_counter()
    every = len(store) if args.kind == "mujoco" else 0
    if every:
        store.labelled_pairs()
    load_all_seconds = time.perf_counter() - start
    start = time.perf_counter()
    count = len(store)
    len_seconds = time.perf_counter() - start
    # What fitting holds of the newest labels, read a chunk at a time as a run does at a restart.
    start = time.perf_counter()
    held = Comparisons(obs_space, act_space, length)
    for part in store.labelled_pair_chunks(last=args.load_last):
        held.add_labelled(part)
    held_seconds = time.perf_counter() - start
    result = {
        "kind": args.kind,
        "labels": count,
        "insert_pairs_per_s": args.labels / insert_seconds,
        "bytes_per_pair": size / count,
        "raw_bytes_per_pair": raw,
        "load_last_n": len(last),
        "load_last_pairs_per_s": len(last) / load_last_seconds,
        "load_all_pairs_per_s": (every / load_all_seconds) if every else None,
        "len_seconds": len_seconds,
        "held_pairs": len(held),
        "held_obs_mb": held.stored_obs.nbytes / 2**20,
        "held_as_frames": held.stack is not None,
        "stacked_obs_mb": held.obs.size * held.obs.itemsize / 2**20,
        "held_load_pairs_per_s": len(held) / held_seconds,
        "file_mb": size / 2**20,
    }
    report(result, args.json)


if __name__ == "__main__":
    main()
