"""How well the Atari reward CNN learns from oracle labels: pairs held out from another policy.

    python benchmarks/atari_reward.py --env ALE/SpaceInvaders-v5 --labels 500 --fit-steps 300

The ensemble (the Atari preset's: 3 CNNs, score rows blacked out) is fitted on oracle labels of
random pairs of 25-step segments played by one policy (uniformly random actions), then asked to
order pairs played by another (each random action held for 10 steps, so it moves further and
sees other states). Reported: the share of held-out pairs with different true returns that the
ensemble orders like the true reward (from the policy it learned on, and from the other one),
and the per-step correlation of r̂ with the game's reward on the other policy's steps.

``--model PATH`` scores a saved model instead of fitting one (say the ``*.reward_model.pt`` a
learning run leaves beside its store, fitted on labels of the agent's own play as it learned):
both random policies are then policies it was not trained on.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import report

from gym_prefs import RewardEnsemble
from gym_prefs.atari import make_atari_env
from gym_prefs.comparisons import Comparisons
from gym_prefs.fitting import RewardTrainer
from gym_prefs.presets import atari_preset
from gym_prefs.records import PREFERENCE_OF, SegmentPairs
from gym_prefs.segments import SegmentPool
from gym_prefs.sources.oracle import SyntheticOracle

SEGMENT = 25


def play(env_id: str, steps: int, hold: int, seed: int, n_envs: int = 8) -> SegmentPool:
    """``steps`` steps per env of random actions, each held for ``hold`` steps, in a pool."""
    venv = make_atari_env(env_id, n_envs=n_envs, seed=seed)
    pool = SegmentPool(venv.observation_space, venv.action_space, n_envs, steps)
    rng = np.random.default_rng(seed)
    venv.reset()
    actions = rng.integers(0, venv.action_space.n, n_envs)
    for t in range(steps):
        if t % hold == 0:
            actions = rng.integers(0, venv.action_space.n, n_envs)
        venv.step(actions)
        if (t + 1) % 500 == 0:
            pool.add(0, venv.pop_transitions())
    pool.add(0, venv.pop_transitions())
    venv.close()
    return pool


def pairs_of(pool: SegmentPool, count: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``count`` random pairs: obs ``[count, 2, 25, ...]``, actions, true rewards ``[count, 2, 25]``."""
    cut = pool.sample(2 * count, SEGMENT, rng)
    return {name: array.reshape(count, 2, *array.shape[1:]) for name, array in cut.items()}


def accuracy(model: RewardEnsemble, pairs: dict[str, np.ndarray]) -> tuple[float, int]:
    """Share of pairs with different true returns that ``model`` orders the same way, and their count."""
    true = pairs["true_rewards"].sum(-1)
    clear = true[:, 0] != true[:, 1]
    predicted = model.predict(pairs["obs"][clear], pairs["actions"][clear]).sum(-1)
    agree = np.sign(predicted[:, 0] - predicted[:, 1]) == np.sign(true[clear, 0] - true[clear, 1])
    return float(agree.mean()), int(clear.sum())


def fit_on_random_play(
    args: argparse.Namespace, trained_on: SegmentPool, rng: np.random.Generator
) -> tuple[RewardEnsemble, dict[str, object]]:
    """The preset's ensemble fitted on ``args.labels`` oracle labels of random pairs of ``trained_on``."""
    preset = atari_preset(args.env, total_labels=args.labels)
    spaces = trained_on.observation_space, trained_on.action_space
    model = RewardEnsemble(*spaces, seed=args.seed, **preset.config.reward_model)
    train = pairs_of(trained_on, args.labels, rng)
    answers = SyntheticOracle(seed=args.seed).label(train["true_rewards"][:, 0], train["true_rewards"][:, 1])
    data = Comparisons(model.observation_space, model.action_space, SEGMENT)
    data.add(SegmentPairs(train["obs"], train["actions"]), np.array([PREFERENCE_OF[a] for a in answers]))
    trainer = RewardTrainer(model, batch_size=preset.config.batch_size, seed=args.seed)
    start = time.perf_counter()
    fit = trainer.fit(data, epochs=10**6, max_steps=args.fit_steps)
    return model, {
        "labels": args.labels,
        "label_kinds": {kind: answers.count(kind) for kind in PREFERENCE_OF},
        "fit_steps": fit.steps,
        "fit_seconds": round(time.perf_counter() - start, 1),
        "fit_train_loss": float(np.mean(fit.train_loss)),
        "fit_val_accuracy": fit.accuracy,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="ALE/SpaceInvaders-v5")
    parser.add_argument("--labels", type=int, default=500)
    parser.add_argument("--fit-steps", type=int, default=300, help="gradient steps of the fit (16 pairs each)")
    parser.add_argument("--steps", type=int, default=2_500, help="steps per env (8 envs) each policy plays")
    parser.add_argument("--test-pairs", type=int, default=1_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    parser.add_argument("--model", default=None, help="score this saved reward model instead of fitting one")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    trained_on = play(args.env, args.steps, hold=1, seed=args.seed)
    other = play(args.env, args.steps, hold=10, seed=args.seed + 1)
    played = time.perf_counter() - start

    fitted: dict[str, object] = {"model": args.model}
    if args.model:
        model = RewardEnsemble.load(args.model)
    else:
        model, fitted = fit_on_random_play(args, trained_on, rng)

    same_accuracy, same_count = accuracy(model, pairs_of(trained_on, args.test_pairs, rng))
    other_accuracy, other_count = accuracy(model, pairs_of(other, args.test_pairs, rng))
    steps = other.recent(10_000, ["obs", "actions", "true_rewards"])
    corr = float(np.corrcoef(model.predict(steps["obs"], steps["actions"]), steps["true_rewards"])[0, 1])
    report(
        {
            "env": args.env,
            **fitted,
            "play_seconds": round(played, 1),
            "heldout_same_policy_accuracy": same_accuracy,
            "heldout_same_policy_pairs": same_count,
            "heldout_other_policy_accuracy": other_accuracy,
            "heldout_other_policy_pairs": other_count,
            "per_step_corr_other_policy": corr,
            "rewarding_steps_other_policy": int((steps["true_rewards"] != 0).sum()),
        },
        args.json,
    )


if __name__ == "__main__":
    main()
