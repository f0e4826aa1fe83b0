"""Policy checkpoints and resumable training state, written atomically.

A policy checkpoint is one torch file holding plain data: the registry name of the policy, its
constructor arguments (normalization statistics included), its state dict (parameters and buffers), the
task, the training config and the step, and, for a policy trained on normalized data, the target's
statistics it acts with (`normalization`). Loading rebuilds the policy by name, so an evaluation script
needs no knowledge of how it was trained; loading it as another type fails with one line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datamil.data.normalization import ActingNormalization, NormStats
from datamil.errors import DatamilError
from datamil.io import atomic_torch_save

FORMAT = "datamil-policy-checkpoint"
VERSION = 1
TRAIN_STATE_FILE = "train_state.pt"
DATA_NORMALIZATION = "data_normalization"  # datamil.policies.base.DATA_NORMALIZATION (no import cycle)
_NORMSTATS_TAG = "__normstats__"


def _encode(value: Any) -> Any:
    """Constructor arguments -> plain data that torch.load(weights_only=True) accepts."""
    if isinstance(value, NormStats):
        return {_NORMSTATS_TAG: value.to_dict()}
    if isinstance(value, Mapping):  # dict, or an OmegaConf DictConfig from hydra.utils.instantiate
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):  # list, tuple, ListConfig
        return [_encode(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise DatamilError(f"cannot save a policy argument of type {type(value).__name__}; use plain values")


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if _NORMSTATS_TAG in value:
            return NormStats.from_dict(value[_NORMSTATS_TAG])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def policy_name(policy: torch.nn.Module) -> str:
    """The policy option (datamil/configs/policy/<name>.yaml) whose `_target_` is the policy's class."""
    from datamil.policies import POLICIES

    return POLICIES.name_of(type(policy))


def save_policy(
    path: str | Path,
    policy: torch.nn.Module,
    params: dict[str, torch.Tensor] | None = None,
    task: str = "",
    train_config: dict | None = None,
    step: int = 0,
) -> Path:
    """Write `policy` (with `params` in place of its own, if given) to `path` atomically, as CPU tensors
    wherever they were trained, so any machine loads it."""
    state = {k: v.detach().cpu().clone() for k, v in policy.state_dict().items()}
    if params is not None:
        state.update({k: v.detach().cpu().clone() for k, v in params.items()})
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "policy": policy_name(policy),
        "kwargs": _encode(policy.init_kwargs),
        "state_dict": state,
        "task": task,
        "train_config": _encode(train_config or {}),
        "step": int(step),
    }
    norm = getattr(policy, DATA_NORMALIZATION, None)  # the target statistics it acts with, if any
    payload.update({"normalization": norm.to_dict()} if norm is not None else {})
    return atomic_torch_save(Path(path), payload)


@dataclass
class LoadedPolicy:
    """A rebuilt policy and what it was trained for."""

    policy: Any
    name: str
    task: str
    train_config: dict
    step: int


def load_policy(path: str | Path, expected: str | None = None) -> LoadedPolicy:
    """Rebuild the policy saved at `path`; `expected` (a registry name) guards against the wrong type."""
    from datamil.policies import POLICIES

    path = Path(path)
    if not path.is_file():
        raise DatamilError(f"no checkpoint at {path}; train one with `python -m datamil.cotrain`")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise DatamilError(
            f"{path} is not a datamil policy checkpoint; point to a file written by save_policy"
        )
    name = payload["policy"]
    if expected is not None and name != expected:
        raise DatamilError(
            f"{path} holds a {name!r} policy, not {expected!r}; set policy={name} or pick its checkpoint"
        )
    policy = POLICIES.get(name)(**_decode(payload["kwargs"]))
    policy.load_state_dict(payload["state_dict"])
    if payload.get("normalization") is not None:  # acts in the target's raw units (Policy.act)
        setattr(policy, DATA_NORMALIZATION, ActingNormalization.from_dict(payload["normalization"]))
    return LoadedPolicy(policy, name, payload["task"], _decode(payload["train_config"]), payload["step"])


def save_train_state(directory: str | Path, state: dict) -> Path:
    """Save a resumable training state (params, optimizer moments, step, losses) into `directory`."""
    return atomic_torch_save(Path(directory) / TRAIN_STATE_FILE, state)


def load_train_state(directory: str | Path) -> dict | None:
    """The training state saved in `directory`, or None when there is none yet."""
    path = Path(directory) / TRAIN_STATE_FILE
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)
