"""Known-good algorithm settings for environments the command line trains on."""

from __future__ import annotations

from typing import Any

__all__ = ["DEFAULT_ENV", "algorithm_kwargs"]

#: The env ``gym-prefs train`` uses when none is named: cheap, and its reward is informative.
DEFAULT_ENV = "Pendulum-v1"

# PPO on Pendulum as tuned by the RL Baselines3 Zoo (4 envs); it swings up in about 40k steps.
_PENDULUM_PPO: dict[str, Any] = {
    "n_steps": 1024,
    "gae_lambda": 0.95,
    "gamma": 0.9,
    "n_epochs": 10,
    "ent_coef": 0.0,
    "learning_rate": 1e-3,
    "clip_range": 0.2,
    "use_sde": True,
    "sde_sample_freq": 4,
}

_TABLE: dict[tuple[str, str], dict[str, Any]] = {
    ("Pendulum-v1", "ppo"): _PENDULUM_PPO,
}


def algorithm_kwargs(env_id: str, algo: str) -> dict[str, Any]:
    """Constructor arguments for ``algo`` on ``env_id`` (empty: the algorithm's defaults).

    Example:
        >>> algorithm_kwargs("Pendulum-v1", "ppo")["gamma"]
        0.9
        >>> algorithm_kwargs("CartPole-v1", "ppo")
        {}
    """
    return dict(_TABLE.get((env_id, algo), {}))
