"""Recording transitions and cutting trajectory segments from them.

A :class:`TransitionRecorder` lives in each reward wrapper and keeps the steps taken since the
callback last collected them (a bounded ring: the oldest steps go first). The callback drains
every recorder into one :class:`SegmentPool`, a bounded ring per env, and samples segments of
consecutive steps from a single episode out of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces

from gym_prefs.records import Segment, SegmentPairs
from gym_prefs.spaces import shape_of

__all__ = [
    "DEFAULT_SEGMENT_LENGTH",
    "MAX_SEGMENT_STEPS",
    "SEGMENT_SECONDS",
    "Segment",
    "SegmentPlaces",
    "SegmentPool",
    "TransitionBatch",
    "TransitionRecorder",
    "segment_steps",
    "space_bytes",
    "steps_for_bytes",
]


@dataclass
class TransitionBatch:
    """Steps drained from a recorder: arrays shaped ``[steps, n_envs, ...]`` in time order."""

    obs: np.ndarray
    actions: np.ndarray
    true_rewards: np.ndarray
    learned_rewards: np.ndarray
    episodes: np.ndarray  # episode counter of each env at each step
    dropped: int = 0  # steps that overflowed the recorder before this drain
    clips: np.ndarray | None = None  # what a viewer needs to show each step, when recorded
    member_rewards: np.ndarray | None = None  # [steps, n_envs, members] each member's r̂, when recorded

    def __len__(self) -> int:
        return len(self.true_rewards)


#: Shape and dtype of the per-step clip data (rendered frames, or simulator states to render).
ClipSpec = tuple[tuple[int, ...], Any]


def steps_for_bytes(
    obs_space: spaces.Space[Any],
    act_space: spaces.Space[Any],
    budget: int,
    clip_spec: ClipSpec | None = None,
    members: int = 0,
) -> int:
    """How many steps of (observation, action, rewards, episode, clip data) fit in ``budget`` bytes."""
    per_step = space_bytes(obs_space) + space_bytes(act_space) + 4 + 4 + 8 + 4 * members
    if clip_spec is not None:
        per_step += int(np.prod(clip_spec[0], dtype=np.int64)) * np.dtype(clip_spec[1]).itemsize
    return max(1, budget // per_step)


def space_bytes(space: spaces.Space[Any]) -> int:
    """Bytes of one value of ``space`` as the recorders and pools store it.

    Example:
        >>> space_bytes(spaces.Box(0, 255, (84, 84, 4), np.uint8)), space_bytes(spaces.Discrete(3))
        (28224, 8)
    """
    return int(np.prod(shape_of(space), dtype=np.int64)) * np.dtype(space.dtype).itemsize


#: Segment length when the env does not say how long a step takes (the paper's Atari clips).
DEFAULT_SEGMENT_LENGTH = 25
#: Segment duration in seconds of simulated time (the paper's MuJoCo clips) ...
SEGMENT_SECONDS = 1.5
#: ... and the paper's longest segment in steps: Gymnasium's Hopper and Walker2d step every
#: 8 ms, where 1.5 s would be 188 steps, mostly of a fallen robot early in training.
MAX_SEGMENT_STEPS = 60


def segment_steps(dt: float) -> int:
    """Steps in a segment for an env stepping every ``dt`` seconds: 1.5 s, at most 60 steps.

    Example:
        >>> segment_steps(0.05), segment_steps(0.008)  # HalfCheetah, Hopper
        (30, 60)
    """
    return max(1, min(MAX_SEGMENT_STEPS, round(SEGMENT_SECONDS / dt)))


class _Ring:
    """Preallocated ``[capacity, *leading, ...]`` arrays for a fixed set of fields."""

    def __init__(self, capacity: int, leading: tuple[int, ...], fields: dict[str, tuple[tuple[int, ...], Any]]):
        self.capacity = capacity
        # np.empty only reserves address space: memory is touched as steps are written.
        self.data = {
            name: np.empty((capacity, *leading, *shape), dtype=dtype) for name, (shape, dtype) in fields.items()
        }


def _fields(
    obs_space: spaces.Space[Any], act_space: spaces.Space[Any], clip_spec: ClipSpec | None = None, members: int = 0
) -> dict[str, tuple[tuple[int, ...], Any]]:
    fields: dict[str, tuple[tuple[int, ...], Any]] = {
        "obs": (shape_of(obs_space), obs_space.dtype),
        "actions": (shape_of(act_space), act_space.dtype),
        "true_rewards": ((), np.float32),
        "learned_rewards": ((), np.float32),
        "episodes": ((), np.int64),
    }
    if clip_spec is not None:
        fields["clips"] = clip_spec
    if members:
        fields["member_rewards"] = ((members,), np.float32)
    return fields


class TransitionRecorder:
    """Bounded record of the steps of ``n_envs`` envs since the last :meth:`drain`.

    Args:
        observation_space: the env's observation space.
        action_space: the env's action space.
        n_envs: how many envs step together (1 for a single env).
        capacity: steps kept between drains; older steps are dropped (and counted).
        clip_spec: shape and dtype of per-step clip data to record as well (``None``: none).
        members: record this many ensemble members' rewards of every step as well (0: none).

    Example:
        >>> rec = TransitionRecorder(spaces.Box(-1, 1, (2,)), spaces.Discrete(2), n_envs=1, capacity=10)
        >>> rec.add(np.zeros((1, 2)), np.array([1]), np.array([0.5]), np.array([0.0]))
        >>> len(rec.drain())
        1
    """

    def __init__(
        self,
        observation_space: spaces.Space[Any],
        action_space: spaces.Space[Any],
        n_envs: int,
        capacity: int,
        clip_spec: ClipSpec | None = None,
        members: int = 0,
    ) -> None:
        self.n_envs = n_envs
        self.clip_spec = clip_spec
        self.members = members
        self._ring = _Ring(capacity, (n_envs,), _fields(observation_space, action_space, clip_spec, members))
        self._write = 0  # total steps ever written
        self._pending = 0  # steps written since the last drain
        self._dropped = 0
        self.episodes = np.zeros(n_envs, dtype=np.int64)

    @property
    def capacity(self) -> int:
        return self._ring.capacity

    def add(
        self,
        obs: np.ndarray,
        actions: np.ndarray,
        true_rewards: np.ndarray,
        learned_rewards: np.ndarray,
        clips: np.ndarray | None = None,
        member_rewards: np.ndarray | None = None,
    ) -> None:
        """Record one step of every env (arrays with a leading ``n_envs`` axis).

        ``member_rewards`` ``[n_envs, members]`` is read when the recorder keeps members.
        """
        pos = self._write % self.capacity
        data = self._ring.data
        if self.clip_spec is not None:
            data["clips"][pos] = clips
        if self.members:
            data["member_rewards"][pos] = member_rewards
        data["obs"][pos] = obs
        data["actions"][pos] = np.asarray(actions).reshape(data["actions"].shape[1:])
        data["true_rewards"][pos] = true_rewards
        data["learned_rewards"][pos] = learned_rewards
        data["episodes"][pos] = self.episodes
        self._write += 1
        if self._pending == self.capacity:
            self._dropped += 1
        else:
            self._pending += 1

    def end_episodes(self, done: np.ndarray) -> None:
        """Mark that the envs where ``done`` is true start a new episode at their next step."""
        self.episodes += np.asarray(done, dtype=np.int64).reshape(self.n_envs)

    def drain(self) -> TransitionBatch:
        """Return and forget the steps recorded since the last drain, oldest first."""
        order = (np.arange(self._write - self._pending, self._write)) % self.capacity
        data = self._ring.data
        batch = TransitionBatch(**{name: data[name][order] for name in data}, dropped=self._dropped)
        self._pending = 0
        self._dropped = 0
        return batch


@dataclass(frozen=True)
class SegmentPlaces:
    """Where segments lie in a :class:`SegmentPool`, as indices (no data copied).

    Attributes:
        streams: ``[count]`` the env stream of each segment.
        positions: ``[count, length]`` ring positions of its steps.

    Example:
        >>> places = SegmentPlaces(np.array([0, 1]), np.array([[3, 4], [0, 1]]))
        >>> len(places), len(places[1:])
        (2, 1)
    """

    streams: np.ndarray
    positions: np.ndarray

    def __len__(self) -> int:
        return len(self.streams)

    def __getitem__(self, index: slice | np.ndarray) -> SegmentPlaces:
        return SegmentPlaces(self.streams[index], self.positions[index])


class SegmentPool:
    """The recent steps of every env, from which segments are cut: a bounded ring per env.

    Args:
        observation_space: the env's observation space.
        action_space: the env's action space.
        n_streams: number of envs feeding the pool.
        capacity: steps kept per env (the most recent).
        clip_spec: shape and dtype of the clip data recorded with each step (``None``: none).
        members: how many ensemble members' rewards are recorded with each step (0: none).

    Example:
        >>> pool = SegmentPool(spaces.Box(-1, 1, (2,)), spaces.Discrete(2), n_streams=1, capacity=100)
        >>> rec = TransitionRecorder(spaces.Box(-1, 1, (2,)), spaces.Discrete(2), 1, 100)
        >>> for _ in range(30):
        ...     rec.add(np.zeros((1, 2)), np.array([0]), np.array([1.0]), np.array([0.0]))
        >>> pool.add(0, rec.drain())
        >>> pool.num_segments(10)
        21
    """

    def __init__(
        self,
        observation_space: spaces.Space[Any],
        action_space: spaces.Space[Any],
        n_streams: int,
        capacity: int,
        clip_spec: ClipSpec | None = None,
        members: int = 0,
    ) -> None:
        self.observation_space = observation_space
        self.action_space = action_space
        self.n_streams = n_streams
        self.capacity = capacity
        self.clip_spec = clip_spec
        self.members = members
        self._ring = _Ring(capacity, (n_streams,), _fields(observation_space, action_space, clip_spec, members))
        self.written = np.zeros(n_streams, dtype=np.int64)
        self._episode_base = np.zeros(n_streams, dtype=np.int64)

    @property
    def nbytes(self) -> int:
        """Bytes the pool holds at most (its arrays are reserved up front and touched as they fill)."""
        return sum(array.nbytes for array in self._ring.data.values())

    def add(self, first_stream: int, batch: TransitionBatch) -> None:
        """Append a drained batch whose env ``i`` feeds stream ``first_stream + i``."""
        steps = len(batch)
        if steps == 0:
            return
        keep = min(steps, self.capacity)
        for i in range(batch.true_rewards.shape[1]):
            s = first_stream + i
            if batch.dropped:
                # Steps were lost between the last drain and this one: what follows must not
                # join what came before into one segment, so shift this env's episode ids.
                self._episode_base[s] += 1
            positions = (self.written[s] + np.arange(steps - keep, steps)) % self.capacity
            for name, array in self._ring.data.items():
                source = getattr(batch, name)
                if source is None:
                    raise ValueError(f"the reward wrappers did not record the {name} this pool keeps")
                column = source[steps - keep :, i]
                if name == "episodes":
                    column = column + self._episode_base[s]
                array[positions, s] = column
            self.written[s] += steps

    def _valid_starts(self, length: int) -> tuple[np.ndarray, np.ndarray]:
        """(stream, logical start) of every segment of ``length`` steps within one episode."""
        streams, starts = [], []
        episodes = self._ring.data["episodes"]
        for s in range(self.n_streams):
            first = max(0, int(self.written[s]) - self.capacity)
            last = int(self.written[s]) - length  # inclusive
            if last < first:
                continue
            logical = np.arange(first, last + 1)
            same = episodes[logical % self.capacity, s] == episodes[(logical + length - 1) % self.capacity, s]
            streams.append(np.full(int(same.sum()), s))
            starts.append(logical[same])
        if not streams:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        return np.concatenate(streams), np.concatenate(starts)

    def num_segments(self, length: int) -> int:
        """How many distinct segments of ``length`` steps the pool holds."""
        return len(self._valid_starts(length)[0])

    def sample(self, count: int, length: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Cut ``count`` random segments of ``length`` steps (with replacement).

        Returns:
            ``obs``, ``actions``, ``true_rewards`` (and ``clips`` when recorded) arrays with
            leading ``[count, length]``.

        Raises:
            ValueError: if no episode in the pool is ``length`` steps long.
        """
        return self.cut(self.sample_places(count, length, rng))

    def sample_places(self, count: int, length: int, rng: np.random.Generator) -> SegmentPlaces:
        """Where ``count`` random segments of ``length`` steps lie, without copying them.

        With large observations a copy of every candidate segment would not fit in memory:
        query selection draws the places of all candidates first, then cuts them a chunk at a
        time. ``cut(sample_places(...))`` is :meth:`sample`, random numbers included.

        Raises:
            ValueError: if no episode in the pool is ``length`` steps long.
        """
        streams, starts = self._valid_starts(length)
        if len(streams) == 0:
            raise ValueError(
                f"no episode in the last {self.capacity} steps per env lasted {length} steps, so "
                f"no segment can be cut; pass a shorter segment_length to PreferenceCallback"
            )
        pick = rng.integers(0, len(streams), size=count)
        return SegmentPlaces(streams[pick], (starts[pick][:, None] + np.arange(length)) % self.capacity)

    def cut(self, places: SegmentPlaces, fields: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """The segments at ``places``: ``obs``, ``actions``, ``true_rewards`` (and ``clips``).

        ``fields`` names other recorded fields to cut instead (``"member_rewards"``, ...).
        """
        rows = places.streams[:, None]
        data = self._ring.data
        if fields is None:
            fields = ["obs", "actions", "true_rewards"] + (["clips"] if self.clip_spec is not None else [])
        return {name: data[name][places.positions, rows] for name in fields}

    def cut_pairs(self, places: SegmentPlaces) -> SegmentPairs:
        """The segments at ``places`` paired in order (places 0 and 1, 2 and 3, ...)."""
        if len(places) % 2:
            raise ValueError(f"an even number of places makes pairs, got {len(places)}")
        segments = {name: array.reshape(-1, 2, *array.shape[1:]) for name, array in self.cut(places).items()}
        return SegmentPairs(**segments)

    def recent(self, count: int, fields: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """The most recent ``count`` steps in all (split evenly over the envs), flattened.

        Every recorded field, or only those named in ``fields``.
        """
        per_stream = max(1, count // self.n_streams)
        parts: dict[str, list[np.ndarray]] = {name: [] for name in (fields or self._ring.data)}
        for s in range(self.n_streams):
            available = int(min(self.written[s], self.capacity))
            take = min(per_stream, available)
            if take == 0:
                continue
            positions = np.arange(self.written[s] - take, self.written[s]) % self.capacity
            for name, chunks in parts.items():
                chunks.append(self._ring.data[name][positions, s])
        return {
            name: np.concatenate(chunks) if chunks else self._ring.data[name][:0, 0] for name, chunks in parts.items()
        }
