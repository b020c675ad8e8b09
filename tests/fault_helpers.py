"""What the fault tests share: a tiny PPO run with a preference callback, the answers on disk, and a
``learn()`` that fails a test instead of hanging it."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.env_util import make_vec_env

from gym_prefs import PreferenceCallback, PreferenceStore, VecLearnedReward

TINY_PPO = {"n_steps": 64, "batch_size": 64, "n_epochs": 1, "policy_kwargs": {"net_arch": [8]}}


def tiny_run(source: Any = "oracle", store: Path | None = None, env: Any = None, **callback_kwargs: Any):
    env = env if env is not None else VecLearnedReward(make_vec_env("Pendulum-v1", n_envs=2, seed=0))
    kwargs: dict[str, Any] = {
        "total_labels": 10,
        "segment_length": 5,
        "refit_interval": 128,
        "initial_fit_epochs": 2,
        "fitting": "inline",
        "seed": 0,
        **callback_kwargs,
    }
    callback = PreferenceCallback(source, store=str(store) if store else None, **kwargs)
    model = PPO("MlpPolicy", env, seed=0, **TINY_PPO)
    return model, callback


def stored_answers(path: Path) -> dict[int, str]:
    with PreferenceStore(path, readonly=True) as store:
        return {answer.query_id: answer.label for answer in store.answers()}


def learn_or_hang(model, callback, steps: int, seconds: float = 120.0, also: BaseCallback | None = None) -> None:
    """``model.learn`` then ``callback.close()``, failing the test instead of hanging it."""
    errors: list[BaseException] = []

    def run():
        try:
            model.learn(steps, callback=callback if also is None else CallbackList([callback, also]))
        except BaseException as error:  # reported below
            errors.append(error)
        finally:
            callback.close()  # the store's connection belongs to this thread

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"learn() was still waiting after {seconds:.0f} s"
    if errors:
        raise errors[0]
