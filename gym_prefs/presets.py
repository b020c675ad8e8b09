"""The paper's settings in one place, and known-good settings for the default env.

``preset_for(env_id)`` returns how to make the env, which algorithm to train with, and the
:class:`~gym_prefs.PreferenceCallback` arguments, so that ``gym-prefs train ENV_ID`` (or a
script) reproduces the paper's setup without a page of flags.

**Why termination matters.** The learned reward is normalised to mean zero. In an env whose
episode ends when the agent fails (a Hopper falling over), a zero-mean reward gives no reason
to stay alive, and a slightly negative stretch gives a reason to fall on purpose; the env's
"alive bonus" was doing that work, and it is not in the learned reward. The paper removed
such terminations, so that falling is something the learned reward itself must penalise. Here
that did not work: PPO on Hopper-v5 without termination, 700 labels, 300k steps, never learned
to stay up (true return 38 on the standard env, seed 0), while keeping termination and
centring the learned reward on +1 reached 889 (the true-reward agent: 1,006). So the MuJoCo
preset keeps every env's termination and centres the learned reward on +1 in envs that can
end on failure (Hopper, Walker2d, Ant, Humanoid, the inverted pendulums): every step alive is
worth something, as the env intends. ``mujoco_preset(env_id, remove_termination=True)`` gives
the paper's change instead.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym

from gym_prefs.config import PreferenceConfig
from gym_prefs.segments import SEGMENT_SECONDS, segment_steps

__all__ = [
    "DEFAULT_ENV",
    "PRESETS",
    "Preset",
    "algorithm_kwargs",
    "atari_preset",
    "is_mujoco",
    "mujoco_preset",
    "preset_for",
]

#: The env ``gym-prefs train`` uses when none is named: cheap, and its reward is informative.
DEFAULT_ENV = "Pendulum-v1"
#: Names accepted by :func:`preset_for` (``"auto"`` picks from the env).
PRESETS = ("auto", "mujoco", "atari", "none")
#: MuJoCo envs whose episodes end when the agent fails, with no option to turn that off.
_KEEPS_TERMINATION = ("InvertedPendulum", "InvertedDoublePendulum")
#: MuJoCo envs whose true reward charges more for the actions than the task pays (Reacher: up to
#: 2 a step for torque against about 0.2 for distance). An observation-only reward cannot see
#: that cost: PPO from 700 labels scored -68 with it and -10 with r̂(o, a) (true reward: -7).
_READS_ACTIONS = ("Reacher",)

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
    """Known-good constructor arguments for ``algo`` on ``env_id`` (empty: the algorithm's defaults).

    Example:
        >>> algorithm_kwargs("Pendulum-v1", "ppo")["gamma"]
        0.9
        >>> algorithm_kwargs("CartPole-v1", "ppo")
        {}
    """
    return dict(_TABLE.get((env_id, algo), {}))


@dataclass
class Preset:
    """How to make an env, which algorithm to train with, and the callback's arguments.

    Attributes:
        name: ``"mujoco"``, ``"atari"`` or ``"none"``.
        env_kwargs: passed to ``gym.make``.
        algo: the algorithm (``"trpo"``, ``"ppo"``, ...).
        algo_kwargs: passed to the algorithm's constructor.
        config: the :class:`~gym_prefs.PreferenceConfig` for
            ``PreferenceCallback(source, config=preset.config)``.
        notes: what the preset changed, for the user to read.
        policy: the SB3 policy (``"CnnPolicy"`` for Atari frames).
        n_envs: parallel envs (``None``: the caller's choice).

    Example:
        >>> preset = preset_for("HalfCheetah-v5")
        >>> preset.name, preset.algo, preset.policy
        ('mujoco', 'trpo', 'MlpPolicy')
    """

    name: str
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    algo: str = "ppo"
    algo_kwargs: dict[str, Any] = field(default_factory=dict)
    config: PreferenceConfig = field(default_factory=PreferenceConfig)
    notes: list[str] = field(default_factory=list)
    policy: str = "MlpPolicy"
    n_envs: int | None = None


def _env_class(env_id: str) -> type[Any] | None:
    entry = gym.spec(env_id).entry_point
    if not isinstance(entry, str):
        return entry if isinstance(entry, type) else None
    module, _, name = entry.partition(":")
    return getattr(importlib.import_module(module), name, None)


def is_mujoco(env_id: str) -> bool:
    """Whether ``env_id`` is one of Gymnasium's MuJoCo envs."""
    entry = gym.spec(env_id).entry_point
    return isinstance(entry, str) and entry.startswith("gymnasium.envs.mujoco")


def mujoco_preset(env_id: str, remove_termination: bool = False) -> Preset:
    """The paper's MuJoCo settings for ``env_id``.

    TRPO with γ = 0.995 and λ = 0.97; segments of 1.5 s of simulated time, at most 60 steps
    (the paper's 15–60; Hopper and Walker2d step every 8 ms) and at most half an episode (so
    that Reacher's 50-step episodes hold two); 25% of the labels before RL; an ensemble of 3
    with reward std 1, centred on +1 in envs that end when the robot fails (see the module
    docstring for why termination is kept).

    Args:
        env_id: a Gymnasium MuJoCo env id.
        remove_termination: the paper's change instead: episodes no longer end on falling
            (``terminate_when_unhealthy=False``, where the env has it) and the learned reward
            is centred on 0.

    Example:
        >>> preset = mujoco_preset("Hopper-v5")
        >>> preset.env_kwargs, preset.algo, preset.config.segment_length
        ({}, 'trpo', 60)
        >>> preset.config.reward_model["reward_mean"]
        1.0
        >>> mujoco_preset("Hopper-v5", remove_termination=True).env_kwargs
        {'terminate_when_unhealthy': False}
    """
    if not is_mujoco(env_id):
        raise ValueError(f"{env_id} is not a Gymnasium MuJoCo env; the MuJoCo preset does not apply")
    notes = []
    env_kwargs: dict[str, Any] = {}
    env_class = _env_class(env_id)
    can_fall = env_class is not None and "terminate_when_unhealthy" in inspect.signature(env_class.__init__).parameters
    keeps_termination = env_id.split("-")[0] in _KEEPS_TERMINATION or (can_fall and not remove_termination)
    if can_fall and remove_termination:
        env_kwargs["terminate_when_unhealthy"] = False
        notes.append("episodes no longer end when the robot falls: the learned reward must penalise falling")
    spec = gym.spec(env_id)
    env = gym.make(env_id, **env_kwargs)
    dt = float(env.unwrapped.dt)  # type: ignore[attr-defined]
    env.close()
    segment = segment_steps(dt)
    if segment < round(SEGMENT_SECONDS / dt):
        notes.append(f"segments of {segment} steps ({segment * dt:.2f} s), the paper's longest, not 1.5 s")
    if spec.max_episode_steps and segment > spec.max_episode_steps // 2:
        segment = max(1, spec.max_episode_steps // 2)
        notes.append(f"segments cut to {segment} steps, half of the {spec.max_episode_steps}-step episodes")
    reward_model: dict[str, Any] = {"n_members": 3, "reward_std": 1.0}
    if env_id.split("-")[0] in _READS_ACTIONS:
        reward_model["use_actions"] = True
        notes.append("the reward reads actions too (r̂(o, a)): this env's true reward charges mostly for torque")
    if keeps_termination:
        reward_model["reward_mean"] = 1.0
        notes.append("episodes end on failure: the learned reward is centred on +1 so staying alive pays")
    notes.append("sb3-contrib's TRPO has no entropy bonus, so the paper's 0.01 is not applied")
    return Preset(
        name="mujoco",
        env_kwargs=env_kwargs,
        algo="trpo",
        algo_kwargs={"gamma": 0.995, "gae_lambda": 0.97},
        config=PreferenceConfig(segment_length=segment, initial_label_fraction=0.25, reward_model=reward_model),
        notes=notes,
    )


def _linear(start: float) -> Any:
    """A learning rate decaying linearly from ``start`` to 0 over training (SB3 schedule)."""

    def schedule(progress_remaining: float) -> float:
        return start * progress_remaining

    schedule.__name__ = f"linear_{start:g}"
    return schedule


#: Gradient steps of the Atari reward model's first fit and of each refit on a CPU: one step of
#: 16 pairs of 2 x 25 frames through 3 CNN members takes about 1.6 s on 2 cores, so the paper's
#: 200 epochs over 500 labels (over 6,000 steps) would take hours.
ATARI_CPU_FIT_STEPS = (12, 4)


def atari_preset(env_id: str, total_labels: int = 5500, paper: bool | None = None) -> Preset:
    """The paper's Atari settings for an ALE env id (``"ALE/Pong-v5"``).

    A2C with 16 envs, n_steps 5, learning rate 7e-4 decaying linearly, entropy 0.01, γ 0.99;
    the standard preprocessing with episode ends hidden from the agent (see
    :func:`gym_prefs.atari.make_atari_env`); the paper's CNN with batch norm and dropout 0.5,
    the score rows blacked out in its input; 25-step segments; 500 labels and 200 epochs of
    fitting before RL; reward std 0.05; fitting on the newest 3,000 labels.

    Args:
        env_id: the ALE env id.
        total_labels: the label budget.
        paper: fit for as long as the paper (200 epochs first); ``False`` caps each fit at
            :data:`ATARI_CPU_FIT_STEPS` gradient steps so that a CPU can afford it; ``None``
            (default) decides by whether CUDA is available, and the preset's notes say which.

    Example:
        >>> preset = atari_preset("ALE/Pong-v5", total_labels=3300)
        >>> config = preset.config
        >>> preset.algo, config.total_labels, config.segment_length, config.reward_model["image_mask_rows"]
        ('a2c', 3300, 25, [(0, 10)])
    """
    from gym_prefs.atari import SCORE_ROWS, atari_game, mask_rows_for

    game = atari_game(env_id)
    if game is None:
        raise ValueError(f"{env_id} is not an ALE env id (like 'ALE/Pong-v5'); the Atari preset does not apply")
    notes = ["standard preprocessing: no-op starts, frame-skip 4 with max-pooling, 84x84 grey, 4 stacked"]
    notes.append("the agent sees no life lost and no game over: a new game simply starts")
    if game in SCORE_ROWS:
        notes.append(f"the score area of {game} is blacked out in the reward model's input")
    else:
        notes.append(f"no score area is known for {game}: the reward model may read the score")
    initial = min(total_labels, 500)
    import torch

    cuda = torch.cuda.is_available()
    if paper is None:
        paper = cuda
    initial_fit_steps, fit_steps = (None, None) if paper else ATARI_CPU_FIT_STEPS
    if not paper:
        notes.append(
            f"no GPU: the reward model's first fit is cut to {initial_fit_steps} gradient steps and each refit "
            f"to {fit_steps} (the paper's 200 epochs would take hours on a CPU; --paper to fit that long anyway)"
        )
        notes.append("no GPU: RL does not wait for refits; each is applied at the first update after it ends")
    return Preset(
        name="atari",
        algo="a2c",
        algo_kwargs={"n_steps": 5, "learning_rate": _linear(7e-4), "ent_coef": 0.01, "gamma": 0.99},
        config=PreferenceConfig(
            total_labels=total_labels,
            segment_length=25,
            initial_label_fraction=initial / total_labels if total_labels else 0.0,
            initial_fit_epochs=200,
            initial_fit_steps=initial_fit_steps,
            fit_steps=fit_steps,
            # On a CPU a refit takes longer than the rollouts between two updates: RL goes on.
            wait_for_fits=bool(paper),
            max_comparisons=3000,
            # 16 pairs of 2 x 25 stacked frames per member keep a fit step near 250 MB.
            batch_size=16,
            reward_model={
                "n_members": 3,
                "reward_std": 0.05,
                "dropout": 0.5,
                "image_mask_rows": mask_rows_for(game),
                # Inference beside RL and the fits in the worker: on the GPU when there is one.
                "device": "cuda" if cuda else "cpu",
            },
        ),
        notes=notes,
        policy="CnnPolicy",
        n_envs=16,
    )


def preset_for(
    env_id: str, name: str = "auto", algo: str | None = None, total_labels: int = 700, paper: bool | None = None
) -> Preset:
    """The settings to train ``env_id`` with.

    Args:
        env_id: a Gymnasium env id.
        name: ``"auto"`` (the MuJoCo preset for MuJoCo envs, the Atari one for ``ALE/`` ids,
            else none), ``"mujoco"``, ``"atari"`` or ``"none"`` (the library's defaults).
        algo: the algorithm to use instead of the preset's.
        total_labels: the label budget (the Atari preset asks 500 of them before RL).
        paper: the Atari preset's fit lengths: the paper's, a CPU's, or ``None`` to decide by
            whether CUDA is available (see :func:`atari_preset`).

    Example:
        >>> preset_for("Pendulum-v1").algo_kwargs["gamma"]
        0.9
        >>> preset_for("HalfCheetah-v5", algo="sac").algo_kwargs
        {}
    """
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {name!r}")
    if name == "atari" or (name == "auto" and env_id.startswith("ALE/")):
        preset = atari_preset(env_id, total_labels, paper)
        if algo is not None and algo != preset.algo:
            preset.algo, preset.algo_kwargs = algo, algorithm_kwargs(env_id, algo)
        return preset
    if name == "mujoco" or (name == "auto" and is_mujoco(env_id)):
        preset = mujoco_preset(env_id)
        preset.config = preset.config.replace(total_labels=total_labels)
        if algo is not None and algo != preset.algo:
            # The paper's discount and GAE settings belong to TRPO; other algorithms keep theirs.
            preset.algo, preset.algo_kwargs = algo, algorithm_kwargs(env_id, algo)
        return preset
    chosen = algo or "ppo"
    return Preset(
        name="none", algo=chosen, algo_kwargs=algorithm_kwargs(env_id, chosen), config=PreferenceConfig(total_labels)
    )
