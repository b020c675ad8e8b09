"""Fitting the reward ensemble to preferences (Bradley-Terry on segment returns)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gym_prefs.comparisons import Comparisons
from gym_prefs.networks import ModuleEnsemble
from gym_prefs.reward_model import RewardEnsemble
from gym_prefs.semi_supervised import crop_pairs, pseudo_labels, unlabelled_pairs

#: Labelled steps each fit normalises the ensemble on (frames cost a CNN pass each: fewer).
CALIBRATION_STEPS = 10_000
CALIBRATION_FRAMES = 2_000

__all__ = ["FitReport", "RewardTrainer"]

#: Factor by which the L2 coefficient moves after each epoch whose loss ratio is off target.
L2_STEP = 1.1
#: Bounds of the L2 coefficient. The squared weights of a fresh (64, 64) member sum to about
#: 40, so 1e-2 already weighs as much as the preference loss; validation sets of a few dozen
#: labels are noisy enough to push an unbounded coefficient far past that.
L2_RANGE = (1e-6, 1e-2)


@dataclass
class FitReport:
    """What one call of :meth:`RewardTrainer.fit` achieved (means over members).

    Attributes:
        train_loss: cross-entropy on the training split (last epoch, dropout on).
        val_loss: cross-entropy on the validation split (``nan`` without one).
        accuracy: share of validation pairs (training pairs when there is no validation
            split) whose clear preference the ensemble mean predicts; "equal" pairs are left out.
        l2: the L2 coefficient, averaged over members.
        epochs: epochs run (the last one cut short when ``steps`` reached the fit's cap).
        pairs: labelled pairs available.
        steps: gradient steps (minibatches) taken.
        pseudo_labelled: with pseudo-labels on, the share of unlabelled pairs confident
            enough to get one in the last epoch (``None`` when off).

    Example:
        >>> report = FitReport(0.4, 0.5, 0.9, 1e-4, epochs=5, pairs=200)
        >>> report.val_loss / report.train_loss  # the adaptive L2 keeps this within 1.1-1.5
        1.25
    """

    train_loss: float
    val_loss: float
    accuracy: float
    l2: float
    epochs: int
    pairs: int
    steps: int = 0
    pseudo_labelled: float | None = None


class RewardTrainer:
    """Fits a :class:`~gym_prefs.RewardEnsemble` to labelled pairs, as in the paper.

    - ``P[σ1 ≻ σ2] = sigmoid(Σ r̂(σ1) − Σ r̂(σ2))`` on undiscounted sums, mixed with a 10%
      chance of a random answer: ``P' = 0.9 P + 0.05``;
    - cross-entropy with the label's distribution (1/0 for a preference, 0.5/0.5 for equal);
    - every member trains on its own bootstrap sample of the training pairs;
    - ``val_fraction`` (1/e) of the pairs are held out, and each member's L2 coefficient is
      raised when its validation loss exceeds 1.5x its training loss and lowered below 1.1x;
    - whole minibatches of segments go through the ensemble in one forward pass;
    - optionally SURF's temporal cropping and pseudo-labels (:mod:`gym_prefs.semi_supervised`).

    The optimiser state and L2 coefficients carry over between calls of :meth:`fit`, so
    periodic refits continue training rather than start again.

    Args:
        model: the ensemble to fit (in place).
        lr: Adam learning rate.
        batch_size: pairs per minibatch and member.
        val_fraction: share of pairs held out for validation.
        random_response: probability the labeler answers at random (the paper: 0.1).
        l2: initial L2 coefficient.
        l2_bounds: lower and upper validation/training loss ratio targets.
        seed: seed for bootstrap samples and minibatch order.
        crop: SURF's temporal cropping: train each labelled (and pseudo-labelled) pair on crops
            of one random length in ``[L - crop, L]`` (0: whole segments).
        pseudo_label_threshold: SURF's τ: train as well on unlabelled pairs (the segments of
            different labelled pairs) whose predicted preference is more confident than this,
            labelled with the ensemble's preferred side (``None``: off).
        unlabelled_ratio: SURF's μ: unlabelled pairs per labelled pair in each minibatch.

    Example:
        >>> from gymnasium import spaces
        >>> from gym_prefs.records import SegmentPairs
        >>> model = RewardEnsemble(spaces.Box(-1, 1, (1,)), spaces.Discrete(2), seed=0)
        >>> data = Comparisons(model.observation_space, model.action_space, segment_length=4)
        >>> rng = np.random.default_rng(0)
        >>> obs = rng.uniform(-1, 1, (256, 2, 4, 1)).astype(np.float32)
        >>> first_better = obs[:, 0].sum((1, 2)) > obs[:, 1].sum((1, 2))
        >>> data.add(SegmentPairs(obs, np.zeros((256, 2, 4), dtype=np.int64)), first_better.astype(np.float32))
        >>> report = RewardTrainer(model, seed=0).fit(data, epochs=30)
        >>> report.accuracy > 0.9
        True
    """

    def __init__(
        self,
        model: RewardEnsemble,
        lr: float = 1e-3,
        batch_size: int = 64,
        val_fraction: float = 1 / math.e,
        random_response: float = 0.1,
        l2: float = 1e-4,
        l2_bounds: tuple[float, float] = (1.1, 1.5),
        seed: int | None = None,
        crop: int = 0,
        pseudo_label_threshold: float | None = None,
        unlabelled_ratio: int = 4,
    ) -> None:
        if pseudo_label_threshold is not None and not 0.5 <= pseudo_label_threshold < 1:
            raise ValueError(f"pseudo_label_threshold must be in [0.5, 1) or None, got {pseudo_label_threshold}")
        if crop < 0 or unlabelled_ratio < 1:
            raise ValueError(f"crop must be 0 or more and unlabelled_ratio positive, got {crop}, {unlabelled_ratio}")
        self.crop = crop
        self.pseudo_label_threshold = pseudo_label_threshold
        self.unlabelled_ratio = unlabelled_ratio
        self.model = model
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.random_response = random_response
        self.l2_bounds = l2_bounds
        self.l2 = torch.full((model.n_members,), float(l2), device=model.device)
        self.optimizer = torch.optim.Adam(model.net.parameters(), lr=lr)
        self.rng = np.random.default_rng(seed)
        self.seconds = 0.0  # time spent fitting, wherever it ran
        net = model.net
        if isinstance(net, ModuleEnsemble):
            # One group of weights per member.
            self._l2_groups = [_weights(member) for member in net.members]
        else:
            # A single group of stacked weights, member m in slice m of the first axis.
            self._l2_groups = [_weights(net)]

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything but the model that the next fit depends on.

        That is the optimiser state, the L2 coefficients and the random-number state, as plain
        values and tensors.
        """
        return {
            "optimizer": self.optimizer.state_dict(),
            "l2": self.l2.detach().cpu(),
            "rng": self.rng.bit_generator.state,
            "seconds": self.seconds,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict` (of a trainer of the same model architecture)."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.l2 = state["l2"].to(self.model.device)
        self.rng.bit_generator.state = state["rng"]
        self.seconds = float(state["seconds"])

    # ------------------------------------------------------------------ pieces
    def _segment_returns(self, obs: np.ndarray, actions: np.ndarray) -> torch.Tensor:
        """Raw member returns for per-member pairs: ``obs`` ``[n, B, 2, L, ...]`` -> ``[n, B, 2]``."""
        n, batch, _, length = obs.shape[:4]
        obs_t, act_t = self.model.preprocess(obs, actions)
        flat_obs = obs_t.reshape(n, batch * 2 * length, *obs_t.shape[4:])
        flat_act = act_t.reshape(n, batch * 2 * length, -1)
        rewards = self.model.raw_members(flat_obs, flat_act)
        return rewards.reshape(n, batch, 2, length).sum(-1)

    def _loss(self, returns: torch.Tensor, mu: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Per-member mean cross-entropy ``[n]`` for returns ``[n, B, 2]`` and labels ``[n, B]``.

        ``weights`` ``[B]`` (0 or 1) leave pairs out of the sum; the mean is still over all ``B``.
        """
        logits = returns[..., 0] - returns[..., 1]
        eps = self.random_response
        # log P' for each side, computed stably: P' = (1 - eps) * sigmoid(x) + eps / 2.
        log_p_first = torch.logaddexp(
            math.log(1 - eps) + torch.nn.functional.logsigmoid(logits), torch.tensor(math.log(eps / 2))
        )
        log_p_second = torch.logaddexp(
            math.log(1 - eps) + torch.nn.functional.logsigmoid(-logits), torch.tensor(math.log(eps / 2))
        )
        losses = -(mu * log_p_first + (1 - mu) * log_p_second)
        return (losses if weights is None else losses * weights).mean(dim=1)

    def _l2_penalty(self) -> torch.Tensor:
        """Per-member sum of squared weights ``[n]`` (member axis first in every stacked weight)."""
        n = self.model.n_members
        if isinstance(self.model.net, ModuleEnsemble):
            zero = torch.zeros((), device=self.model.device)
            return torch.stack([sum((p.pow(2).sum() for p in group), zero) for group in self._l2_groups])
        # Stacked weights [n, ...] and grouped-convolution weights [n * out, ...] both put
        # member m's weights in the m-th slice of the first axis.
        total = torch.zeros(n, device=self.model.device)
        for param in self._l2_groups[0]:
            total = total + param.pow(2).reshape(n, -1).sum(1)
        return total

    @torch.no_grad()
    def evaluate(self, data: Comparisons, rows: np.ndarray) -> tuple[np.ndarray, float]:
        """Per-member loss ``[n]`` and ensemble accuracy on ``rows`` of ``data`` (eval mode).

        Every member reads the same pairs, so they go through the ensemble once, shared.
        """
        self.model.eval()
        n = self.model.n_members
        losses = torch.zeros(n, device=self.model.device)
        correct = clear = 0
        # Pairs per forward pass within the inference memory budget (a few for images, 256 at most).
        per_chunk = min(256, max(1, self.model.inference_batch_rows // (2 * data.segment_length)))
        for start in range(0, len(rows), per_chunk):
            chunk = rows[start : start + per_chunk]
            obs_t, act_t = self.model.preprocess(data.obs[chunk], data.actions[chunk])
            count, length = obs_t.shape[0], obs_t.shape[2]
            raw = self.model.raw_members(obs_t.flatten(0, 2), act_t.flatten(0, 2))
            returns = raw.reshape(n, count, 2, length).sum(-1)
            mu = torch.as_tensor(data.mu[chunk], device=self.model.device)
            losses += self._loss(returns, mu.expand(n, -1)) * count
            prefer_first = (returns[..., 0] - returns[..., 1]).mean(0) > 0
            is_clear = mu != 0.5
            correct += int((prefer_first == (mu > 0.5))[is_clear].sum())
            clear += int(is_clear.sum())
        loss = (losses / max(1, len(rows))).cpu().numpy()
        return loss, correct / clear if clear else float("nan")

    # ------------------------------------------------------------------ fitting
    def fit(self, data: Comparisons, epochs: int, max_steps: int | None = None) -> FitReport:
        """Train every member for ``epochs`` passes over its bootstrap sample of ``data``.

        ``max_steps`` caps the gradient steps (minibatches) of the whole fit, so that its cost
        does not grow with the labels: the fit ends early, mid-epoch if need be. A capped fit also
        measures its validation loss (which steers the L2 coefficient) and accuracy on a random
        sample of at most as many validation pairs as its steps train on (``max_steps`` x
        ``batch_size``), drawn once per fit.

        The fitted ensemble is then normalised (:meth:`RewardEnsemble.calibrate`) on up to
        ``CALIBRATION_STEPS`` labelled steps (``CALIBRATION_FRAMES`` for image observations),
        so its output is ready to use as a reward.
        """
        if len(data) == 0:
            raise ValueError("no labelled pairs to fit the reward model to")
        start = time.perf_counter()
        try:
            return self._fit(data, epochs, max_steps)
        finally:
            self.seconds += time.perf_counter() - start

    def _fit(self, data: Comparisons, epochs: int, max_steps: int | None) -> FitReport:
        model = self.model
        n = model.n_members
        model.set_input_stats(data.obs, data.actions)
        val_mask = data.validation_mask(self.val_fraction) if len(data) >= 10 else np.zeros(len(data), dtype=bool)
        train_rows = np.flatnonzero(~val_mask)
        val_rows = np.flatnonzero(val_mask)
        if len(train_rows) == 0:
            train_rows, val_rows = val_rows, train_rows
        if max_steps is not None and len(val_rows) > max_steps * self.batch_size:
            # On images one validation pass would cost more than the capped fit itself.
            val_rows = np.sort(self.rng.choice(val_rows, size=max_steps * self.batch_size, replace=False))
        val_loss: np.ndarray | None = None
        accuracy = float("nan")
        # One bootstrap sample of the training pairs per member.
        boot = train_rows[self.rng.integers(0, len(train_rows), size=(n, len(train_rows)))]
        batch = min(self.batch_size, len(train_rows))
        train_loss = np.full(n, np.nan)
        taken = epochs_run = 0  # gradient steps and epochs so far
        for _ in range(epochs):
            if max_steps is not None and taken >= max_steps:
                break
            epochs_run += 1
            model.train()
            order = np.take_along_axis(
                boot, self.rng.permuted(np.tile(np.arange(boot.shape[1]), (n, 1)), axis=1), axis=1
            )
            epoch_loss = torch.zeros(n, device=model.device)
            confident: list[float] = []
            batches = max(1, boot.shape[1] // batch)
            if max_steps is not None:
                batches = min(batches, max_steps - taken)
            taken += batches
            for b in range(batches):
                rows = order[:, b * batch : (b + 1) * batch]  # [n, batch]
                returns = self._segment_returns(*self._cropped(data.obs[rows], data.actions[rows]))
                mu = torch.as_tensor(data.mu[rows], device=model.device)
                loss = self._loss(returns, mu)
                objective = loss + self.l2 * self._l2_penalty()
                if self.pseudo_label_threshold is not None and len(train_rows) >= 2:
                    unlabelled_loss, share = self._pseudo_label_loss(
                        data, train_rows, batch, self.pseudo_label_threshold
                    )
                    objective = objective + unlabelled_loss
                    confident.append(share)
                self.optimizer.zero_grad(set_to_none=True)
                objective.sum().backward()
                self.optimizer.step()
                epoch_loss += loss.detach()
            train_loss = (epoch_loss / batches).cpu().numpy()
            if len(val_rows):
                val_loss, accuracy = self.evaluate(data, val_rows)
                self._adapt_l2(val_loss / np.maximum(train_loss, 1e-8))
        model.fitted.fill_(True)
        model.eval()
        # Normalise on labelled steps drawn from the whole run (see Comparisons.sample_steps).
        steps = CALIBRATION_FRAMES if model.image_obs else CALIBRATION_STEPS
        model.calibrate(*data.sample_steps(steps, self.rng))
        # The last epoch's validation pass already measured the fitted networks (calibration only
        # rescales their outputs after it, which the preference loss does not read).
        if val_loss is None:
            val_loss, accuracy = np.full(n, np.nan), self.evaluate(data, train_rows)[1]
        return FitReport(
            train_loss=float(np.mean(train_loss)),
            val_loss=float(np.mean(val_loss)),
            accuracy=float(accuracy),
            l2=float(self.l2.mean()),
            epochs=epochs_run,
            pairs=len(data),
            steps=taken,
            pseudo_labelled=float(np.mean(confident)) if confident else None,
        )

    def _cropped(self, obs: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``[n, B, 2, L, ...]`` pairs cut to SURF's random crops (as they are without ``crop``)."""
        if not self.crop:
            return obs, actions
        lead = obs.shape[:2]
        obs, actions = crop_pairs(
            obs.reshape(-1, *obs.shape[2:]), actions.reshape(-1, *actions.shape[2:]), self.crop, self.rng
        )
        return obs.reshape(*lead, *obs.shape[1:]), actions.reshape(*lead, *actions.shape[1:])

    def _pseudo_label_loss(
        self, data: Comparisons, train_rows: np.ndarray, batch: int, threshold: float
    ) -> tuple[torch.Tensor, float]:
        """Per-member loss ``[n]`` on unlabelled pairs the ensemble is confident about, and their share.

        Every member reads the same unlabelled pairs; the label is the members' mean preference,
        so no member teaches itself alone.
        """
        n = self.model.n_members
        pair_rows, sides = unlabelled_pairs(train_rows, self.unlabelled_ratio * batch, self.rng)
        obs, actions = data.obs[pair_rows, sides], data.actions[pair_rows, sides]  # [U, 2, L, ...]
        obs, actions = self._cropped(obs[None], actions[None])
        shared = (n, *obs.shape[1:]), (n, *actions.shape[1:])
        returns = self._segment_returns(np.broadcast_to(obs, shared[0]), np.broadcast_to(actions, shared[1]))
        with torch.no_grad():
            prob_first = torch.sigmoid(returns[..., 0] - returns[..., 1]).mean(0)
            labels, mask = pseudo_labels(prob_first, threshold)
        loss = self._loss(returns, labels.expand(n, -1), mask.to(returns.dtype))
        return loss, float(mask.float().mean())

    def _adapt_l2(self, ratio: np.ndarray) -> None:
        low, high = self.l2_bounds
        ratio_t = torch.as_tensor(ratio, device=self.l2.device, dtype=self.l2.dtype)
        factor = torch.where(ratio_t > high, L2_STEP, torch.where(ratio_t < low, 1 / L2_STEP, 1.0))
        self.l2 = (self.l2 * factor).clamp(*L2_RANGE)


def _weights(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The weight matrices and kernels of ``module`` (biases and norm scales are not penalised)."""
    return [p for name, p in module.named_parameters() if not name.endswith("bias") and p.dim() > 1]
