"""The learned reward: an ensemble of networks with per-member normalisation.

:class:`RewardEnsemble` owns the networks, their weights and the statistics that standardise
their inputs and normalise their outputs. How inputs are encoded is
:mod:`gym_prefs.model_inputs`, how large batches are split :mod:`gym_prefs.batched_inference`,
the per-step NumPy path :mod:`gym_prefs.folded_inference` and the file format
:mod:`gym_prefs.model_files`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from gym_prefs import model_files
from gym_prefs.batched_inference import INFERENCE_ACTIVATION_FACTOR as INFERENCE_ACTIVATION_FACTOR
from gym_prefs.batched_inference import INFERENCE_BATCH_BYTES as INFERENCE_BATCH_BYTES
from gym_prefs.batched_inference import inference_row_bytes, rows_per_batch, run_in_batches
from gym_prefs.folded_inference import FOLDED_MAX_ROWS as FOLDED_MAX_ROWS
from gym_prefs.folded_inference import FoldedMlp
from gym_prefs.model_files import CUSTOM_CALLABLE as CUSTOM_CALLABLE
from gym_prefs.model_files import FILE_MAGIC as FILE_MAGIC
from gym_prefs.model_files import FORMAT as FORMAT
from gym_prefs.model_files import FORMAT_VERSION as FORMAT_VERSION
from gym_prefs.model_files import HEADER_SIZE as HEADER_SIZE
from gym_prefs.model_files import LEGACY_FORMAT_VERSION as LEGACY_FORMAT_VERSION
from gym_prefs.model_inputs import InputEncoder, InputStats
from gym_prefs.networks import EnsembleCNN, EnsembleMLP, MemberFactory, ModuleEnsemble

__all__ = ["RewardEnsemble"]
# The constants imported ``as`` themselves are re-exported for code that imports them from here.
# The inference memory budget is read from batched_inference at every call: change it there.


class _ModelFileMethods:
    """Saving, loading and copying a :class:`RewardEnsemble`: calls of :mod:`gym_prefs.model_files`.

    A base of :class:`RewardEnsemble` alone, which keeps the file format's methods apart from
    the predictor's.
    """

    # Every instance (class) here is a RewardEnsemble: the casts tell the type checker so.

    def config(self) -> dict[str, Any]:
        """Plain-value constructor arguments (spaces included), enough to rebuild the model."""
        return model_files.model_config(cast("RewardEnsemble", self))

    def to_bytes(self) -> bytes:
        """Serialise config, weights and normalisation (CPU tensors, no pickled objects).

        The bytes are a fixed header (:data:`~gym_prefs.model_files.FILE_MAGIC`, the format
        version, the payload's length and SHA-256) followed by a ``torch.save`` payload;
        :meth:`from_bytes` checks the header before it reads the payload.
        """
        return model_files.to_bytes(cast("RewardEnsemble", self))

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        device: str | torch.device = "cpu",
        member_factory: MemberFactory | None = None,
    ) -> RewardEnsemble:
        """Inverse of :meth:`to_bytes`; also reads the header-less files of gym_prefs 0.1 (format 1).

        Raises ``ValueError`` if ``data`` is not a reward model, is damaged (checksum mismatch,
        truncated, NaN or infinite weights) or comes from a newer gym_prefs.
        """
        return model_files.from_bytes(cast("type[RewardEnsemble]", cls), data, device, member_factory)

    @staticmethod
    def state_from_bytes(data: bytes) -> dict[str, torch.Tensor]:
        """Just the weights and normalisation of a :meth:`to_bytes` payload, checked as by :meth:`from_bytes`."""
        return model_files.state_from_bytes(data)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the model to ``path`` atomically (a unique temporary file, flushed, then renamed).

        A crash never leaves half a file, and processes saving to the same path at once each
        write a whole file (the last one wins).
        """
        model_files.save(cast("RewardEnsemble", self), path)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        device: str | torch.device = "cpu",
        member_factory: MemberFactory | None = None,
    ) -> RewardEnsemble:
        """Load a model written by :meth:`save` onto ``device``.

        Pass ``member_factory`` when the model was built from a callable rather than an import
        path (a callable is not saved). Raises ``ValueError`` as :meth:`from_bytes`, with the path.
        """
        return model_files.load(cast("type[RewardEnsemble]", cls), path, device, member_factory)

    def clone(self) -> RewardEnsemble:
        """An independent copy on the same device (a faithful one: NaN weights stay NaN)."""
        model = cast("RewardEnsemble", self)
        factory = model._member_factory if callable(model._member_factory) else None
        return model_files.clone(model, RewardEnsemble, factory)

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled (e.g. sent to SubprocVecEnv workers) as plain tensors on the CPU, never as a file.
        return model_files.reduction(cast("RewardEnsemble", self), RewardEnsemble)


class RewardEnsemble(_ModelFileMethods, nn.Module):
    """An ensemble of reward predictors r̂(o, a), each normalised on its own, then averaged.

    The network is chosen from the spaces: an MLP (64, 64, leaky ReLU 0.01) on the
    observation and one-hot or flattened action for vector observations, the paper's Atari
    CNN for image observations. Each member's output is shifted and scaled to zero mean and
    standard deviation ``reward_std`` on the data passed to :meth:`calibrate`, and the
    prediction is the mean over members.

    Before the first fit (``is_fitted`` is ``False``) :meth:`predict` returns zeros, so an
    agent wrapped in :class:`~gym_prefs.LearnedReward` sees a neutral reward until labels
    have been learned.

    Args:
        observation_space: the env's observation space.
        action_space: the env's action space.
        n_members: number of predictors (the paper: 3).
        reward_std: standard deviation of every member's normalised output (the paper: 1 for
            MuJoCo, 0.05 for Atari).
        reward_mean: mean of every member's normalised output (the paper: 0). A positive mean
            keeps an agent from ending episodes on purpose in envs whose episodes end when it
            fails (see :mod:`gym_prefs.presets`).
        network: ``"auto"`` (CNN for images, else MLP), ``"mlp"`` or ``"cnn"``.
        hidden_sizes: hidden widths of the MLP.
        dropout: dropout probability (MLP hidden layers; CNN conv layers). ``None`` picks
            0 for the MLP and 0.5 for the CNN, as in the paper.
        use_actions: whether the reward reads the action as well as the observation. Off by
            default: a person judging clips sees states, not torques (the paper removed such
            invisible control costs from the true reward for that reason), and an agent
            exploits any spurious dependence on the action it controls at once. On Pendulum
            with PPO and 200 labels, observation-only rewards swung up on 4 of 5 seeds, and
            r̂(o, a) on 1 or 2 of 5. Turn it on for the paper's r̂(o, a).
        image_mask_rows: ``(start, stop)`` rows of image observations to black out before the
            network sees them (the Atari score, so the reward model cannot read it).
        member_factory: build each member yourself: ``factory(obs_shape, act_dim)`` returns a
            module whose ``forward(obs, act)`` maps a batch to ``[batch]`` rewards. Give it as
            a callable or as an import path ``"package.module:function"`` (the path is saved,
            so :meth:`load` can rebuild it).
        device: torch device for the networks.
        seed: seed for the initial weights.

    Example:
        >>> import gymnasium as gym
        >>> env = gym.make("Pendulum-v1")
        >>> model = RewardEnsemble(env.observation_space, env.action_space, seed=0)
        >>> model.predict(np.zeros((2, 3)), np.zeros((2, 1))).shape
        (2,)
    """

    obs_mean: torch.Tensor
    obs_std: torch.Tensor
    act_mean: torch.Tensor
    act_std: torch.Tensor
    offset: torch.Tensor
    scale: torch.Tensor
    fitted: torch.Tensor

    def __init__(
        self,
        observation_space: spaces.Space[Any],
        action_space: spaces.Space[Any],
        n_members: int = 3,
        reward_std: float = 1.0,
        reward_mean: float = 0.0,
        network: str = "auto",
        hidden_sizes: Sequence[int] = (64, 64),
        dropout: float | None = None,
        use_actions: bool = False,
        image_mask_rows: Sequence[Sequence[int]] = (),
        member_factory: MemberFactory | str | None = None,
        device: str | torch.device = "cpu",
        seed: int | None = None,
    ) -> None:
        super().__init__()
        # How the networks read observations and actions (it checks the spaces and ``network``).
        inputs = self._inputs = InputEncoder(observation_space, action_space, network, use_actions, image_mask_rows)
        if n_members < 1:
            raise ValueError(f"n_members must be at least 1, got {n_members}")
        if reward_std <= 0:
            raise ValueError(f"reward_std must be positive, got {reward_std}")
        self.observation_space, self.action_space = observation_space, action_space
        self.n_members = n_members
        self.reward_std = float(reward_std)
        self.reward_mean = float(reward_mean)
        # The encoder's description of the inputs, public on the model too (config() saves it, the
        # fitter and the folded path read it); like the networks built from it, fixed once built.
        self.image_obs, self.network, self.use_actions = inputs.image_obs, inputs.network, inputs.use_actions
        self.obs_shape, self.act_dim, self.image_mask_rows = inputs.obs_shape, inputs.act_dim, inputs.image_mask_rows
        self.hidden_sizes = tuple(int(h) for h in hidden_sizes)
        self.dropout = (0.5 if self.network == "cnn" else 0.0) if dropout is None else float(dropout)
        self.factory_path = model_files.factory_path(member_factory)

        self._member_factory = member_factory
        builtin_mlp = self.network == "mlp" and self.factory_path is None
        widths = self.hidden_sizes if builtin_mlp else ()
        self._row_bytes = inference_row_bytes(self.obs_shape, self.act_dim, n_members, widths)
        self.net = self._build_seeded(seed)

        # Input standardisation (set from labelled data when fitting): buffers, so that it is
        # saved with the weights and moves with them.
        for name, value in self._inputs.initial_stats()._asdict().items():
            self.register_buffer(name, value)
        # Per-member output normalisation: r_m = (raw_m - offset_m) * scale_m.
        self.register_buffer("offset", torch.zeros(n_members))
        self.register_buffer("scale", torch.ones(n_members))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.to(device)
        # Evaluation mode unless a trainer is fitting: predictions never see dropout.
        self.eval()
        # The per-step prediction path (see FoldedMlp), rebuilt whenever tensors are replaced.
        self._folded = FoldedMlp(self)

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> RewardEnsemble:
        # .to(device) and friends may replace tensors: fold from the new ones.
        result = super()._apply(fn, *args, **kwargs)
        if hasattr(self, "_folded"):
            self._folded = FoldedMlp(self)
        return result

    def _build_seeded(self, seed: int | None) -> nn.Module:
        """Build the networks, drawing initial weights from ``seed`` without touching torch's global RNG."""
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            return self._build()

    def reset_parameters(self, seed: int | None = None) -> None:
        """Draw fresh initial weights (from ``seed``) and forget any fit and normalisation."""
        device = self.device
        self.net = self._build_seeded(seed).to(device)
        self._folded = FoldedMlp(self)
        for name, value in self._inputs.initial_stats()._asdict().items():
            getattr(self, name).copy_(value)
        self.offset.zero_()
        self.scale.fill_(1.0)
        self.fitted.fill_(False)
        self.eval()

    def _build(self) -> nn.Module:
        if self._member_factory is not None:
            factory = model_files.resolve_factory(self._member_factory)
            return ModuleEnsemble([factory(self.obs_shape, self.act_dim) for _ in range(self.n_members)])
        if self.network == "cnn":
            chw = self.obs_shape
            return EnsembleCNN(self.n_members, (chw[0], chw[1], chw[2]), self.act_dim, self.dropout)
        return EnsembleMLP(self.n_members, self.obs_shape[0], self.act_dim, self.hidden_sizes, self.dropout)

    # ------------------------------------------------------------------ inputs
    @property
    def device(self) -> torch.device:
        return self.offset.device

    @property
    def is_fitted(self) -> bool:
        """Whether the ensemble has been fitted to labels at least once."""
        return bool(self.fitted)

    def preprocess(self, obs: np.ndarray, act: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Turn raw observation and action batches (any leading shape) into network inputs.

        Returns tensors of shape ``[*lead, *obs_shape]`` and ``[*lead, act_dim]``.
        """
        stats = InputStats(self.obs_mean, self.obs_std, self.act_mean, self.act_std)
        return self._inputs.encode(obs, act, stats, self.device)

    def set_input_stats(self, obs: np.ndarray, act: np.ndarray) -> None:
        """Standardise vector observations and continuous actions with the statistics of a batch.

        Images (scaled to [0, 1]) and one-hot actions are left as they are.
        """
        for name, value in self._inputs.fitted_stats(obs, act).items():
            getattr(self, name).copy_(torch.as_tensor(value))

    # ------------------------------------------------------------------ outputs
    def raw_members(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """Un-normalised member outputs ``[n, batch]`` for preprocessed inputs.

        ``obs``/``act`` are either shared ``[batch, ...]`` or per member ``[n, batch, ...]``.
        """
        return self.net(obs, act)

    def normalise(self, raw: torch.Tensor) -> torch.Tensor:
        """Apply each member's normalisation to raw outputs ``[n, ...]``."""
        shape = (self.n_members,) + (1,) * (raw.dim() - 1)
        return (raw - self.offset.view(shape)) * self.scale.view(shape)

    @property
    def inference_batch_rows(self) -> int:
        """Rows per forward pass of batched inference when no ``batch_size`` is given.

        :data:`INFERENCE_BATCH_BYTES` divided by an estimate of the working memory of one row
        (:data:`INFERENCE_ACTIVATION_FACTOR` x 4 bytes x members x the widest layer), at least 1:
        with 3 members, 9 rows of 512x512x3 images, 264 of 84x84x4 frames, 116,508 of vector
        observations for the (64, 64) MLP.
        """
        return rows_per_batch(self._row_bytes)

    def _predict_tensor(self, obs: np.ndarray, act: np.ndarray, batch_size: int | None = None) -> torch.Tensor:
        """Normalised member rewards ``[n, count]`` for ``count`` flattened transitions.

        Runs ``batch_size`` rows at a time (by default :attr:`inference_batch_rows`).
        """
        return run_in_batches(self._normalised_members, obs, act, batch_size, self._row_bytes)

    def _normalised_members(self, obs: np.ndarray, act: np.ndarray) -> torch.Tensor:
        return self.normalise(self.raw_members(*self.preprocess(obs, act)))

    def predict_members(self, obs: np.ndarray, act: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """Normalised rewards of every member, ``[n_members, *lead]`` for ``obs`` of ``[*lead, ...]``.

        Runs in evaluation mode (no dropout, batch-norm running statistics), ``batch_size``
        rows per forward pass. The default, :attr:`inference_batch_rows`, keeps the working
        memory near :data:`INFERENCE_BATCH_BYTES` whatever the size of the observations; pass
        a number of rows to trade memory for speed yourself.
        """
        obs, act, lead = self._inputs.flatten(obs, act)
        return self._predict_tensor(obs, act, batch_size).cpu().numpy().reshape(self.n_members, *lead)

    def predict(self, obs: np.ndarray, act: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """Predicted rewards r̂(o, a) for a batch: ``[*lead]`` float32 for ``obs`` of ``[*lead, ...]``.

        Zeros until the ensemble has been fitted. ``batch_size`` is as for :meth:`predict_members`.
        """
        return self.predict_with_members(obs, act, batch_size)[0]

    def predict_with_members(
        self, obs: np.ndarray, act: np.ndarray, batch_size: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`predict`'s rewards ``[*lead]`` and every member's ``[n_members, *lead]``, from one pass.

        The reward wrappers keep the members' rewards of every step, so that query selection
        and logging need not run the networks again. Before the first fit the rewards are
        zeros and the members' ``NaN`` (no member has an opinion yet). ``batch_size`` is as for
        :meth:`predict_members`.

        Example:
            >>> from gymnasium import spaces
            >>> model = RewardEnsemble(spaces.Box(-1, 1, (2,)), spaces.Discrete(2), seed=0)
            >>> rewards, members = model.predict_with_members(np.zeros((5, 2)), np.zeros(5, int))
            >>> rewards.shape, members.shape, bool(np.isnan(members).all())
            ((5,), (3, 5), True)
        """
        obs, act, lead = self._inputs.flatten(obs, act)
        if not self.is_fitted:
            return np.zeros(lead, dtype=np.float32), np.full((self.n_members, *lead), np.nan, dtype=np.float32)
        if self._folded.serves(len(obs)):
            members = self._folded.predict_members(obs, act)
        else:
            members = self._predict_tensor(obs, act, batch_size).cpu().numpy()
        return members.mean(axis=0).reshape(lead), members.reshape(self.n_members, *lead)

    @torch.inference_mode()
    def calibrate(self, obs: np.ndarray, act: np.ndarray) -> None:
        """Normalise every member to mean ``reward_mean`` and std ``reward_std`` on these transitions."""
        self.offset.zero_()
        self.scale.fill_(1.0)
        raw = self.predict_members(obs, act).reshape(self.n_members, -1)
        std = raw.std(axis=1)
        scale = self.reward_std / np.maximum(std, 1e-8)
        self.scale.copy_(torch.as_tensor(scale))
        # (raw - offset) * scale has mean reward_mean when offset = mean - reward_mean / scale.
        self.offset.copy_(torch.as_tensor(raw.mean(axis=1) - self.reward_mean / scale))
