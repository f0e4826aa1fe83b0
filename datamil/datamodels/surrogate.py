"""The surrogate target and the training pool every estimator differentiates.

DataMIL's surrogate (Dass et al. 2025, Sec. 4.1) replaces the expensive policy success rate by the proxy
policy's action loss on held-out target demos:

    S(theta) = 1/|V| * sum_{v in V} loss(theta; v)                                         (surrogate)

V is the target-validation set; it is never trained on. The proxy is trained on the *pool*: the prior
(train) samples, optionally followed by target-train samples. Only the first `n_scored` pool entries (the
prior samples) receive scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from datamil.data.store import TrajectoryStore
from datamil.device import module_device
from datamil.errors import DatamilError
from datamil.policies.base import INDEX, Batch, Params, Policy


def check_policy(policy: object) -> None:
    """Estimators need an unreduced per-sample loss; fail on one line otherwise."""
    if not callable(getattr(policy, "per_sample_loss", None)) or not callable(
        getattr(policy, "params", None)
    ):
        raise DatamilError(
            f"{type(policy).__name__} has no per_sample_loss(params, batch) / params(); "
            "datamodel estimators need a datamil.policies.Policy"
        )


def param_dtype(policy: Policy) -> torch.dtype:
    """The floating dtype of the policy's parameters (float64 in exactness tests)."""
    return next(iter(policy.params().values())).dtype


def to_torch(
    batch: dict[str, np.ndarray], dtype: torch.dtype = torch.float32, device: torch.device | None = None
) -> Batch:
    """Numpy store batch -> tensors on `device` (default the CPU); floating arrays are cast to `dtype`,
    integer/bool arrays kept."""
    out: Batch = {}
    for key, value in batch.items():
        tensor = torch.as_tensor(np.asarray(value))
        tensor = tensor.to(dtype) if tensor.is_floating_point() else tensor
        out[key] = tensor if device is None else tensor.to(device)
    return out


def take(batch: Batch, idx: Tensor) -> Batch:
    """Rows `idx` of every tensor in `batch`; idx may be (B,) or (M, B) for an ensemble."""
    return {key: value[idx] for key, value in batch.items()}


@dataclass
class TrainPool:
    """All samples the proxy trains on, as tensors in memory.

    data: key -> (N_pool, ...) with "index" = global ids (prior step id, or n_prior + target step id);
    n_scored: the first n_scored rows are the prior samples that get scores (= train_store.n_steps);
    episode: (N_pool,) episode index of each row (target-train episodes numbered after the prior's).
    The tensors live on the proxy policy's device (`device`); `episode` is host bookkeeping.
    """

    data: Batch
    n_scored: int
    episode: np.ndarray

    @property
    def size(self) -> int:
        return len(self.episode)

    @property
    def device(self) -> torch.device:
        return next(iter(self.data.values())).device

    def rows_of_episodes(self, episodes: np.ndarray) -> np.ndarray:
        """(n,) pool rows of all samples of the given episodes."""
        return np.flatnonzero(np.isin(self.episode, episodes))


def loss_directional_derivatives(
    policy: Policy,
    pool: TrainPool,
    params: Params,
    direction: Params,
    chunk_size: int = 2048,
    rows: np.ndarray | None = None,
) -> Tensor:
    """float64 <grad loss_i(params), direction> of every prior row (n_scored,), or of pool `rows` (n,),
    one JVP per chunk.

    Forward mode gives every sample's directional derivative at the cost of about one forward pass,
    with no per-sample gradient ever materialized.
    """
    which = torch.arange(pool.n_scored) if rows is None else torch.as_tensor(rows, dtype=torch.int64)
    which = which.to(pool.device)
    out = torch.zeros(len(which), dtype=torch.float64, device=pool.device)
    for lo in range(0, len(which), chunk_size):
        part = slice(lo, min(lo + chunk_size, len(which)))
        chunk = take(pool.data, which[part])
        _, tangent = torch.func.jvp(lambda p, c=chunk: policy.per_sample_loss(p, c), (params,), (direction,))
        out[part] = tangent.detach().double()
    return out


def sampled_rows(pool: TrainPool, steps_per_trajectory: int | None) -> np.ndarray:
    """(n,) prior rows: all, or up to `steps_per_trajectory` evenly spaced steps of each prior trajectory,
    for estimators that score a trajectory from a sample of its steps (see `spread_to_steps`)."""
    episode = pool.episode[: pool.n_scored]
    if steps_per_trajectory is None:
        return np.arange(pool.n_scored)
    starts = np.flatnonzero(np.r_[True, episode[1:] != episode[:-1]])
    lengths = np.diff(np.r_[starts, pool.n_scored])
    picks = [
        s + np.unique(np.linspace(0, n - 1, min(n, steps_per_trajectory)).round().astype(np.int64))
        for s, n in zip(starts, lengths, strict=True)
    ]
    return np.concatenate(picks)


def spread_to_steps(pool: TrainPool, rows: np.ndarray, row_scores: np.ndarray) -> np.ndarray:
    """(n_scored,) per-step scores whose trajectory sums are the sampled rows' sums scaled up to the
    trajectory's length (each step gets its trajectory's mean): the sums that selection and the LDS use
    stay unbiased."""
    episode = pool.episode[: pool.n_scored]
    n_episodes = int(episode.max()) + 1
    sums = np.bincount(episode[rows], weights=row_scores, minlength=n_episodes)
    counts = np.bincount(episode[rows], minlength=n_episodes)
    return (sums / np.maximum(counts, 1))[episode]


def _store_arrays(store: TrajectoryStore, policy: Policy) -> dict[str, np.ndarray]:
    """Every step of `store` with the arrays a batch of `policy` needs (its batch_keys + extras)."""
    ids = np.arange(store.n_steps)
    keys = getattr(policy, "batch_keys", None)
    arrays = store.batch(ids, keys=list(keys) if keys is not None else None)
    extra = getattr(policy, "extra_batch_arrays", None)
    if callable(extra):
        arrays.update(extra(store, ids))
    return arrays


def build_pool(
    policy: Policy, train_store: TrajectoryStore, target_train_store: TrajectoryStore | None = None
) -> TrainPool:
    """The proxy's training pool: prior samples first (scored), then optional target-train samples, on
    the policy's device (move the policy first to score on a GPU)."""
    arrays = _store_arrays(train_store, policy)
    episode = train_store.episode_of_step
    if target_train_store is not None:
        extra = _store_arrays(target_train_store, policy)
        extra[INDEX] = extra[INDEX] + train_store.n_steps
        missing = set(arrays) ^ set(extra)
        if missing:
            raise DatamilError(
                f"target-train store has different keys than the prior ({sorted(missing)}); standardize them"
            )
        arrays = {k: np.concatenate([arrays[k], extra[k]]) for k in arrays}
        episode = np.concatenate([episode, target_train_store.episode_of_step + train_store.n_episodes])
    data = to_torch(arrays, param_dtype(policy), module_device(policy))
    return TrainPool(data, train_store.n_steps, np.asarray(episode))


@dataclass
class Surrogate:
    """S(theta): mean per-sample loss of the proxy over every target-validation sample (eq. surrogate)."""

    policy: Policy
    val: Batch

    @classmethod
    def from_store(cls, policy: Policy, target_val_store: TrajectoryStore | None) -> Surrogate:
        if target_val_store is None or target_val_store.n_steps == 0:
            raise DatamilError(
                "the target-validation set is empty; hold out at least one target demo for the surrogate"
            )
        val = to_torch(_store_arrays(target_val_store, policy), param_dtype(policy), module_device(policy))
        return cls(policy, val)

    def __call__(self, params: Params) -> Tensor:
        """Scalar surrogate value; differentiable in params."""
        return self.policy.per_sample_loss(params, self.val).mean()

    def grad(self, params: Params) -> Params:
        """dS/dtheta: the adjoint every reverse pass starts from."""
        return torch.func.grad(self.__call__)(params)
