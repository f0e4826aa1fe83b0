"""The Policy interface: one per-sample loss that training weights, the surrogate averages, and
every datamodel estimator differentiates. One definition, three uses.

Batches are dicts of tensors keyed like the store: "obs/<key>" (B, ...), "action" (B, A) in the units
of the store (normalized by the data pipeline when `data.normalization` is set, else raw), and "index" (B,) global step ids (used to draw per-sample noise deterministically).
Parameters are passed explicitly (a dict name -> tensor) so that `torch.func` can differentiate and
vmap through them; `params()` gives the module's current ones.
"""

from __future__ import annotations

import functools
import inspect
from abc import ABC, abstractmethod
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from datamil.data.normalization import NormStats
from datamil.device import module_device
from datamil.registry import ConfigRegistry

ACTION = "action"
INDEX = "index"
OBS_STATE_KEY = "obs/state"
DATA_NORMALIZATION = "data_normalization"  # attribute: the ActingNormalization a policy was trained with

Batch = dict[str, Tensor]
Params = dict[str, Tensor]


def flatten_params(tree: Params, like: Params | None = None, batch_dims: int = 0) -> Tensor:
    """One vector (P_total,), or (C, P_total) with one leading batch dim, in `like`'s key order."""
    keys = like if like is not None else tree
    return torch.cat([tree[k].reshape(*tree[k].shape[:batch_dims], -1) for k in keys], dim=-1)


def unflatten_params(vector: Tensor, like: Params) -> Params:
    """Inverse of `flatten_params` for one vector: views of it shaped like `like`."""
    sizes = [v.numel() for v in like.values()]
    return {k: x.view_as(v) for (k, v), x in zip(like.items(), vector.split(sizes), strict=True)}


# datamil/configs/policy/<name>.yaml (_target_: the class) registers it
POLICIES = ConfigRegistry("policy", "policy")


class Normalizer(nn.Module):
    """Gaussian normalization with fixed statistics, saved with the checkpoint as buffers."""

    def __init__(self, stats: NormStats | None, dim: int) -> None:
        super().__init__()
        mean = np.zeros(dim) if stats is None else stats.mean
        std = np.ones(dim) if stats is None else stats.std
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(np.maximum(std, 1e-6), dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def inverse(self, y: Tensor) -> Tensor:
        return y * self.std + self.mean


class Policy(nn.Module, ABC):
    """A policy whose loss is defined per sample and whose parameters can be passed functionally.

    Required: `loss_fn` and `predict` (the rest of the core, `per_sample_loss`, `act`, `params`, follows).
    Optional capabilities are declared here with the answer of a policy that lacks them, so callers read
    them directly instead of probing with getattr; a policy that has one overrides its members:

    - images: `reads_images` (build_policy passes `image_shapes` and accepts state-free data),
      `image_keys`, `cameras` and `render` (what evaluation renders), `check_data`, `camera_config`.
    - chunks: `horizon` (actions per prediction; None = one action), `n_action_steps` (executed before
      re-planning), `reset_sampler` (reseed sampling noise), `extra_batch_arrays` (e.g. action chunks).
    - normalization: `obs_norm`, the fixed-statistics state normalizer saved with the checkpoint (None
      when the policy reads no state). Every policy sets it; it is a submodule, so it is not a class default.

    `init_kwargs` records the constructor arguments of the outermost class (filled in automatically),
    so a checkpoint can rebuild the policy without knowing its type in advance.
    """

    batch_keys: tuple[str, ...] = (OBS_STATE_KEY, ACTION)  # store arrays a training batch needs
    init_kwargs: dict[str, Any]
    obs_norm: Normalizer | None  # normalization capability (see the class docstring)

    # images capability: absent
    reads_images: ClassVar[bool] = False
    image_keys: tuple[str, ...] = ()
    cameras: Mapping[str, str] = MappingProxyType({})  # observation key -> simulator camera
    render: Mapping[str, Any] = MappingProxyType({})  # scene flags the data was rendered with

    # chunks capability: absent (one action per prediction)
    horizon: int | None = None
    n_action_steps: int = 1

    @property
    def capabilities(self) -> frozenset[str]:
        """Which optional capabilities this policy has: a subset of {"images", "chunks", "normalization"}."""
        has = {"images": bool(self.image_keys), "chunks": self.horizon is not None}
        has["normalization"] = getattr(self, "obs_norm", None) is not None
        return frozenset(name for name, present in has.items() if present)

    def check_data(self, stores: Mapping[str, Any]) -> None:
        """Refuse (one-line DataError) datasets the policy cannot read; name -> TrajectoryStore or None.

        A state policy's state sizes are checked where the stores meet (datamil.training.cotraining.state_mismatch)."""

    def camera_config(self) -> dict[str, Any] | None:
        """What evaluation must render for this policy; None = it reads no camera."""
        return None

    def reset_sampler(self, seed: int) -> None:
        """Reseed the sampling noise of `predict` for reproducible rollouts; deterministic policies have none."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _recording_init(cls.__init__)  # type: ignore[method-assign]

    def extra_batch_arrays(self, store: Any, step_ids: np.ndarray) -> dict[str, np.ndarray]:
        """Arrays beyond `batch_keys` that a batch of these (B,) flat step ids needs (e.g. action chunks)."""
        return {}

    @abstractmethod
    def loss_fn(self, batch: Batch) -> Tensor:
        """(B,) unreduced loss of the module's own parameters; subclasses implement this."""

    @abstractmethod
    def predict(self, obs: dict[str, Tensor]) -> Tensor:
        """(B, A) or (B, H, A) actions in raw units from a batch of observations."""

    def per_sample_loss(self, params: Params, batch: Batch) -> Tensor:
        """(B,) loss of each sample under `params`. A fixed, differentiable function of the parameters."""
        return functional_call(self, params, (batch,), {"mode": "loss"}, strict=False)

    def forward(self, batch: Batch, mode: str = "loss") -> Tensor:
        """mode="loss": (B,) per-sample loss of `batch`; mode="predict": actions for batch's observations."""
        return self.loss_fn(batch) if mode == "loss" else self.predict(batch)

    def params(self) -> Params:
        """Detached copies of the trainable parameters: the starting point for functional training."""
        return {name: p.detach().clone() for name, p in self.named_parameters()}

    def load_params(self, params: Params) -> None:
        with torch.no_grad():
            for name, p in self.named_parameters():
                p.copy_(params[name])

    @torch.no_grad()
    def act(self, params: Params | None, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Actions for a batch of raw observations {"state": (B, D), ...}: numpy (B, A) or (B, H, A).

        The observations go to the device of `params` (or of the policy's own parameters). A policy trained
        on normalized data (its `data_normalization`, set by co-training and by loading the checkpoint)
        gets its state normalized and returns actions in the target's raw units."""
        device = module_device(self) if params is None else next(iter(params.values())).device
        norm = getattr(self, DATA_NORMALIZATION, None)  # set when trained on normalized data (checkpoint)
        obs = obs if norm is None else norm.observations(obs)
        tensors = {f"obs/{k}": torch.as_tensor(np.asarray(v)).to(device) for k, v in obs.items()}
        if params is None:
            actions = self.predict(tensors).cpu().numpy()
        else:
            call = functional_call(self, params, (tensors,), {"mode": "predict"}, strict=False)
            actions = call.cpu().numpy()
        return actions if norm is None else norm.actions(actions)


def _recording_init(init: Any) -> Any:
    """Wrap __init__ so the outermost call stores its bound arguments in `self.init_kwargs`."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self: Policy, *args: Any, **kwargs: Any) -> None:
        if "init_kwargs" not in self.__dict__:
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            recorded: dict[str, Any] = {}
            for name, value in list(bound.arguments.items())[1:]:
                if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
                    recorded.update(value)
                else:
                    recorded[name] = value
            object.__setattr__(self, "init_kwargs", recorded)
        init(self, *args, **kwargs)

    return wrapper
