"""Reward model files: the saved format of a :class:`~gym_prefs.RewardEnsemble`, its checks and copies.

A file is a fixed header followed by a ``torch.save`` payload of plain values and CPU tensors
(no pickled objects)::

    FILE_MAGIC (8 bytes) | format version (uint32) | payload length (uint64) | SHA-256 (32 bytes)
    payload: {"format": FORMAT, "version": ..., "config": model.config(), "state": state_dict}

Reading checks the header before torch reads a byte, then the payload's structure and that
every float tensor is finite; version 1 files (a bare payload, from gym_prefs 0.1) still load.
:func:`save` writes atomically. Copies in memory (:func:`clone`, pickling) skip the header and
the finite check: they copy a model faithfully, damage included, rather than read a file.

The functions are handed the model, or the class to build, rather than import
:mod:`gym_prefs.reward_model`: that module imports this one, and
:class:`~gym_prefs.RewardEnsemble`'s own ``save``, ``load``, ``to_bytes``, ``from_bytes``,
``clone`` and pickling are one-line calls of the functions here.

Example:
    >>> import gymnasium as gym
    >>> from gym_prefs import RewardEnsemble
    >>> env = gym.make("Pendulum-v1")
    >>> model = RewardEnsemble(env.observation_space, env.action_space, seed=0)
    >>> data = to_bytes(model)
    >>> data[: len(FILE_MAGIC)] == FILE_MAGIC
    True
    >>> from_bytes(RewardEnsemble, data).config() == model.config()
    True
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import os
import secrets
import struct
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from gym_prefs.networks import MemberFactory
from gym_prefs.spaces import space_from_config, space_to_config

if TYPE_CHECKING:
    from gym_prefs.reward_model import RewardEnsemble

__all__ = [
    "CUSTOM_CALLABLE",
    "FILE_MAGIC",
    "FORMAT",
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "LEGACY_FORMAT_VERSION",
    "clone",
    "factory_path",
    "from_bytes",
    "load",
    "model_config",
    "payload_bytes",
    "reduction",
    "resolve_factory",
    "save",
    "state_from_bytes",
    "to_bytes",
]

ModelT = TypeVar("ModelT", bound="RewardEnsemble")

FORMAT = "gym_prefs.RewardEnsemble"
# Version 2 put a checksummed header in front of the torch payload; version 1 files (a bare
# torch payload) are still read.
FORMAT_VERSION = 2
LEGACY_FORMAT_VERSION = 1
#: The saved ``member_factory`` of a model built from a callable that has no import path.
CUSTOM_CALLABLE = "<callable>"
# The header of a saved model: magic, format version, payload length, SHA-256 of the payload.
# torch.load does not check its zip's CRCs: 38 of 40 files with one byte changed loaded and
# predicted NaN or 1e6-sized rewards. The checksum is verified before torch reads a byte. The
# magic starts with a non-ASCII byte and holds a CR LF, so text-mode copies are caught too.
FILE_MAGIC = b"\x89GPRM\r\n\x1a"
_HEADER = struct.Struct("<8sIQ32s")
HEADER_SIZE = _HEADER.size
_ZIP_MAGIC = b"PK\x03\x04"  # how a bare torch.save payload (a version 1 file) begins
_REFIT_HINT = (
    "use an earlier copy of the model, or fit a new one from the labels with `gym-prefs fit STORE --out MODEL.pt`"
)


# ---------------------------------------------------------------------- writing
def model_config(model: RewardEnsemble) -> dict[str, Any]:
    """``model``'s constructor arguments as plain values (spaces included), enough to rebuild it."""
    return {
        "observation_space": space_to_config(model.observation_space),
        "action_space": space_to_config(model.action_space),
        "n_members": model.n_members,
        "reward_std": model.reward_std,
        "reward_mean": model.reward_mean,
        "network": model.network,
        "hidden_sizes": list(model.hidden_sizes),
        "dropout": model.dropout,
        "use_actions": model.use_actions,
        "image_mask_rows": [list(rows) for rows in model.image_mask_rows],
        "member_factory": model.factory_path,
    }


def to_bytes(model: RewardEnsemble) -> bytes:
    """The bytes of a model file: the header (magic, version, length, SHA-256), then the payload."""
    payload = payload_bytes(model)
    return _HEADER.pack(FILE_MAGIC, FORMAT_VERSION, len(payload), hashlib.sha256(payload).digest()) + payload


def payload_bytes(model: RewardEnsemble) -> bytes:
    """The ``torch.save`` payload of :func:`to_bytes`, without the header."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "version": FORMAT_VERSION, "config": model.config(), "state": state}, buffer)
    return buffer.getvalue()


def save(model: RewardEnsemble, path: str | os.PathLike[str]) -> None:
    """Write ``model`` to ``path`` atomically.

    The bytes go to a temporary file of a unique name in the same folder, are flushed to the
    disk, and the file is renamed over ``path``: a crash never leaves half a file, and
    processes saving to the same path at once each write a whole file (the last one wins).
    """
    data = to_bytes(model)
    path = os.fspath(path)
    folder = os.path.dirname(path) or os.curdir
    handle, tmp = _create_unique_file(folder, os.path.basename(path))
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            # Without it, a power cut after the rename can leave an empty file at ``path``.
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    _fsync_folder(folder)


def _create_unique_file(folder: str, name: str) -> tuple[int, str]:
    """Create and open a new file of a random name next to ``name`` in ``folder``.

    Unlike tempfile.mkstemp (mode 0600) the file gets the mode ``open()`` would give (0666
    less the umask), so the saved model is as readable as a file written in place.
    """
    for _ in range(100):
        tmp = os.path.join(folder, f".{name}.{secrets.token_hex(8)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file in {folder} to save {name}; remove its .*.tmp files")


def _fsync_folder(folder: str) -> None:
    """Flush a rename in ``folder`` to the disk (POSIX; elsewhere a no-op)."""
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        handle = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)


# ---------------------------------------------------------------------- reading
def load(
    cls: type[ModelT],
    path: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    member_factory: MemberFactory | None = None,
) -> ModelT:
    """A ``cls`` model read from the file at ``path``, as :func:`from_bytes`.

    Raises:
        ValueError: as :func:`from_bytes`, with the path.
    """
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        return from_bytes(cls, data, device=device, member_factory=member_factory)
    except ValueError as error:
        raise ValueError(f"cannot load the reward model {os.fspath(path)}: {error}") from error


def from_bytes(
    cls: type[ModelT],
    data: bytes,
    device: str | torch.device = "cpu",
    member_factory: MemberFactory | None = None,
) -> ModelT:
    """A ``cls`` model rebuilt from the bytes of a file, checked first.

    Raises:
        ValueError: if ``data`` is not a reward model, is damaged (checksum mismatch,
            truncated, NaN or infinite weights) or comes from a newer gym_prefs.
    """
    return _from_payload(cls, _read_payload(data), device, member_factory)


def state_from_bytes(data: bytes) -> dict[str, torch.Tensor]:
    """Just the weights and normalisation of a file's bytes, checked as by :func:`from_bytes`."""
    state: dict[str, torch.Tensor] = _read_payload(data)["state"]
    return state


def _read_payload(data: bytes) -> dict[str, Any]:
    """The checked ``torch.save`` payload of a file's bytes (format 2, or a header-less format 1).

    Checks the header (magic, version, length, SHA-256) before torch reads anything, then the
    payload's structure and that every float tensor is finite.

    Raises:
        ValueError: as :func:`from_bytes`.
    """
    if data[: len(FILE_MAGIC)] == FILE_MAGIC:
        if len(data) < HEADER_SIZE:
            raise _damaged(f"truncated: {len(data)} bytes, shorter than the {HEADER_SIZE}-byte header")
        _, version, length, digest = _HEADER.unpack_from(data)
        if version > FORMAT_VERSION:
            raise ValueError(
                f"this reward model file has format version {version}, newer than this gym_prefs "
                f"understands ({FORMAT_VERSION}); upgrade gym_prefs (if no newer gym_prefs wrote "
                f"it, the file is damaged: {_REFIT_HINT})"
            )
        if version <= LEGACY_FORMAT_VERSION:
            raise _damaged(f"its header gives format version {version}, which has no header")
        payload = memoryview(data)[HEADER_SIZE:]
        if len(payload) != length:
            problem = "truncated" if len(payload) < length else "bytes added at the end"
            raise _damaged(f"{problem}: {len(payload)} bytes after the header, {length} were written")
        if hashlib.sha256(payload).digest() != digest:
            raise _damaged("checksum mismatch: the SHA-256 of its contents differs from the one saved with them")
        return _load_payload(io.BytesIO(payload), version, check_finite=True)
    if data[: len(_ZIP_MAGIC)] == _ZIP_MAGIC:
        # Format 1: a bare torch.save payload. Nothing to verify it against but its contents.
        return _load_payload(io.BytesIO(data), None, check_finite=True)
    raise ValueError(
        "not a gym_prefs reward model file (it begins with neither the gym_prefs header nor a "
        f"torch payload); if it was one, it is damaged: {_REFIT_HINT}"
    )


def _damaged(what: str) -> ValueError:
    return ValueError(f"the reward model file is damaged ({what}); {_REFIT_HINT}")


def _load_payload(source: io.BytesIO, header_version: int | None, check_finite: bool) -> dict[str, Any]:
    """Read a ``torch.save`` payload and check its structure (and, with ``check_finite``, its values).

    ``header_version`` is the version its header gave, ``None`` for a header-less format 1 file.
    """
    try:
        payload = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"not a gym_prefs reward model file ({error})") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError("not a gym_prefs reward model file (no gym_prefs format header)")
    version = payload.get("version")
    if not isinstance(version, int):
        raise _damaged(f"its format version is {version!r}, not a number")
    if header_version is None and version > FORMAT_VERSION:
        raise ValueError(
            f"this reward model file has format version {version}, newer than this gym_prefs "
            f"understands ({FORMAT_VERSION}); upgrade gym_prefs"
        )
    if version != (LEGACY_FORMAT_VERSION if header_version is None else header_version):
        header = f"its header {header_version}" if header_version is not None else "it has no header"
        raise _damaged(f"its contents give format version {version}, but {header}")
    state, config = payload.get("state"), payload.get("config")
    if not isinstance(config, dict) or not isinstance(state, dict):
        raise _damaged("its configuration or weights are missing")
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise _damaged(f"{name!r} is a {type(tensor).__name__}, not a tensor")
        if check_finite and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ValueError(
                f"the reward model's {name} holds NaN or infinite values: the file is damaged, or the "
                f"fit that made it diverged; {_REFIT_HINT}"
            )
    return payload


def _from_payload(
    cls: type[ModelT],
    payload: Mapping[str, Any],
    device: str | torch.device,
    member_factory: MemberFactory | None,
) -> ModelT:
    """Build a ``cls`` model from a payload's configuration and copy its weights in."""
    config = dict(payload["config"])
    saved_factory = config.pop("member_factory", None)
    factory = member_factory if member_factory is not None else saved_factory
    if factory == CUSTOM_CALLABLE:
        raise ValueError(
            "this reward model was built with a member_factory that cannot be imported by "
            "name (a lambda or a local function); pass the same factory: "
            "RewardEnsemble.load(path, member_factory=...)"
        )
    model = cls(
        space_from_config(config.pop("observation_space")),
        space_from_config(config.pop("action_space")),
        member_factory=factory,
        device=device,
        # Any seed: the weights are replaced below, and a seeded build leaves torch's
        # global random numbers (which the RL algorithm draws from) untouched.
        seed=0,
        **config,
    )
    try:
        model.load_state_dict(payload["state"])
    except RuntimeError as error:  # missing, extra or misshapen tensors
        raise ValueError(
            f"the reward model's weights do not fit its saved configuration ({error}); the file is "
            f"damaged or was edited: {_REFIT_HINT}"
        ) from error
    return model


# ---------------------------------------------------------------------- copies in memory
def clone(model: RewardEnsemble, cls: type[ModelT], member_factory: MemberFactory | None) -> ModelT:
    """An independent ``cls`` copy of ``model`` on its device (a faithful one: NaN weights stay NaN).

    ``member_factory`` is the callable ``model`` was built from, if any (a callable is not saved).
    """
    # No bytes in between: load_state_dict copies every tensor into the new model.
    payload = {"config": model.config(), "state": model.state_dict()}
    return _from_payload(cls, payload, model.device, member_factory=member_factory)


def reduction(model: RewardEnsemble, cls: type[RewardEnsemble]) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    """What ``model.__reduce__`` returns: rebuild a ``cls`` on the CPU from plain tensors."""
    # A pickle (e.g. sent to SubprocVecEnv workers) is a copy in memory, not a file: no header
    # (the transport has its own checks), and, like clone(), faithful even to weights that are
    # not finite.
    return (_unpickle, (cls, payload_bytes(model)))


def _unpickle(cls: type[ModelT], data: bytes) -> ModelT:
    return _from_payload(cls, _load_payload(io.BytesIO(data), FORMAT_VERSION, False), "cpu", None)


# ---------------------------------------------------------------------- member factories by name
def resolve_factory(factory: MemberFactory | str) -> MemberFactory:
    """The member factory itself, imported if given as ``"package.module:function"``."""
    if callable(factory):
        return factory
    module_name, _, attribute = factory.partition(":")
    if not attribute:
        raise ValueError(f"member_factory path must look like 'package.module:function', got {factory!r}")
    target: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    return target


def factory_path(factory: MemberFactory | str | None) -> str | None:
    """The import path to save for ``factory`` (``CUSTOM_CALLABLE`` if it has none)."""
    if factory is None or isinstance(factory, str):
        return factory
    module = getattr(factory, "__module__", None)
    qualname = getattr(factory, "__qualname__", "")
    if module and module != "__main__" and "<" not in qualname:
        return f"{module}:{qualname}"
    return CUSTOM_CALLABLE
