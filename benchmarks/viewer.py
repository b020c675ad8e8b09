"""The labelling window while an agent trains beside it: answer-to-next-clip latency and frame rate.

Training (PPO on HalfCheetah-v5, queries asked of a person) runs in another process; this one
opens the viewer on its store (SDL's dummy video driver unless a display is set) and answers
each pair after ``--think`` seconds, as a person would (the paper: 3-5 s per query).

    python benchmarks/viewer.py --pairs 10 --think 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

from common import report

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("MUJOCO_GL", "egl")

TRAIN = textwrap.dedent(
    """
    import sys, gymnasium as gym
    from stable_baselines3 import PPO
    import gym_prefs
    env = gym_prefs.LearnedReward(gym.make("HalfCheetah-v5"))
    labeler = gym_prefs.PygameLabeler("make the cheetah run forward", open_window=False)
    callback = gym_prefs.PreferenceCallback(labeler, total_labels=200, initial_label_fraction=0.0,
                                            refit_interval=1024, store=sys.argv[1], seed=0)
    PPO("MlpPolicy", env, n_steps=512, seed=0).learn(int(sys.argv[2]), callback=callback)
    """
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--think", type=float, default=3.0, help="seconds the simulated person looks at a pair")
    parser.add_argument("--render-size", type=int, default=200)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import pygame

    from gym_prefs import PreferenceStore
    from gym_prefs.viewer import Viewer

    store = os.path.join(tempfile.mkdtemp(), "preferences.db")
    trainer = subprocess.Popen([sys.executable, "-c", TRAIN, store, "1000000"], stdout=subprocess.DEVNULL)
    try:
        while True:  # wait for the first queries
            time.sleep(1)
            if os.path.exists(store):
                with PreferenceStore(store, readonly=True) as reader:
                    if reader.get_meta("clips") and reader.counts()["pending"] >= 2:
                        break
        viewer = Viewer(store, render_size=args.render_size)
        playing_fps = []
        while viewer.answers_given < args.pairs:
            while viewer.current is None:
                viewer.step()
            start, frames = time.perf_counter(), viewer.frames_drawn
            while time.perf_counter() - start < args.think:
                viewer.step()
            playing_fps.append((viewer.frames_drawn - frames) / (time.perf_counter() - start))
            pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_LEFT))
            before = viewer.answers_given
            while viewer.answers_given == before:
                viewer.step()
        latencies = list(viewer.latencies)  # the latest 1,000 (every answer, up to 1,000 pairs)
        result = {
            "pairs": args.pairs,
            "think_s": args.think,
            "display_fps_target": viewer.renderer.display_fps,
            "playing_fps_median": statistics.median(playing_fps),
            "playing_fps_min": min(playing_fps),
            "latency_median_s": statistics.median(latencies),
            "latency_max_s": max(latencies),
            "render_size": args.render_size,
        }
        viewer.close()
        with PreferenceStore(store, readonly=True) as reader:
            result["labels_in_store"] = len(reader)
    finally:
        trainer.kill()
    report(result, args.json)


if __name__ == "__main__":
    main()
