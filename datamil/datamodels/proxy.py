"""The proxy training run that estimators score: the co-training step (`datamil.training.train_step`) on a
`TrainPool`, with batch order a pure function of (seed, step).

Single runs (`train_proxy`) and vmapped ensembles of runs on different subsets (`train_ensemble`, used by
the regression estimator and the LDS check) share one step definition, so every estimator measures or
differentiates the same training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import Tensor

from datamil.datamodels.surrogate import Surrogate, TrainPool, take
from datamil.device import host_to
from datamil.errors import DatamilError
from datamil.policies.base import Params, Policy
from datamil.training import (
    OptimConfig,
    OptState,
    batch_indices,
    init_opt_state,
    init_params,
    train_step,
)


def random_masks(n_episodes: int, n_models: int, alpha: float, rng: np.random.Generator) -> np.ndarray:
    """(M, E) bool: each row keeps exactly round(alpha * E) (at least 1) random episodes."""
    if not 0.0 < alpha <= 1.0:
        raise DatamilError(f"subset fraction alpha={alpha} must be in (0, 1]")
    k = max(1, round(alpha * n_episodes))
    masks = np.zeros((n_models, n_episodes), bool)
    for m in range(n_models):
        masks[m, rng.choice(n_episodes, k, replace=False)] = True
    return masks


def subset_rows(pool: TrainPool, n_prior_episodes: int, masks: np.ndarray) -> list[np.ndarray]:
    """Pool rows of each mask's prior episodes plus every target-train row (always trained on)."""
    target = np.arange(n_prior_episodes, int(pool.episode.max()) + 1)
    return [pool.rows_of_episodes(np.concatenate([np.flatnonzero(m), target])) for m in masks]


def smooth_optim() -> OptimConfig:
    """Defaults for a differentiated proxy run: Adam eps 1e-2 (inside the root), no clipping (docs/notes.md, "Metasmoothness")."""
    return OptimConfig(lr=1e-3, eps=1e-2, warmup_steps=0, total_steps=400, min_lr_ratio=1.0, grad_clip=None)


SAMPLINGS = ("uniform", "epoch", "trajectory", "cover", "auto", "auto_trajectory")


@dataclass
class ProxyConfig:
    """How the proxy policy is trained for scoring. `steps` = optim.total_steps.

    sampling: how each step's batch is drawn from the pool (see `BatchOrder`): "uniform" (with
    replacement), "epoch" (a fresh permutation of the rows each epoch), "trajectory" (rounds that visit
    every trajectory once, one random step of each), "cover" (epoch permutations, with the batch raised
    until the run draws every row: `fit_to_pool`), "auto" (`resolve_sampling`), or "auto_trajectory" (the
    rule "auto" followed before "cover" existed, which the committed benchmark runs used).
    target_share: the fraction of each batch drawn uniformly from the pool's target-train rows (when it
    holds them), as co-training's target:prior mixture does; the rest follows `sampling` over the prior.
    0 keeps target-train among the pool's rows at its natural share.
    """

    optim: OptimConfig = field(default_factory=smooth_optim)
    batch_size: int = 256
    sampling: str = "auto"
    target_share: float = 0.0

    def __post_init__(self) -> None:
        if self.sampling not in SAMPLINGS:
            raise DatamilError(f"proxy sampling {self.sampling!r} must be one of {SAMPLINGS}")
        if not 0.0 <= self.target_share < 1.0:
            raise DatamilError(
                f"proxy target_share {self.target_share!r} must be in [0, 1): the share of each batch "
                "drawn from target-train, e.g. 0.5 for co-training's 1:1 mixture"
            )

    @property
    def steps(self) -> int:
        return self.optim.total_steps

    def with_steps(self, steps: int) -> ProxyConfig:
        return replace(self, optim=replace(self.optim, total_steps=steps))


def covers(cfg: ProxyConfig, pool_size: int) -> bool:
    """Whether the run draws at least as many samples as the pool holds."""
    return cfg.steps * cfg.batch_size >= pool_size


def resolve_sampling(cfg: ProxyConfig, pool_size: int) -> str:
    """The batch order "auto" and "cover" stand for, chosen from the pool size.

    A run that draws at least as many samples as the pool holds keeps uniform draws under "auto" (the
    embedded default, where every row is drawn several times). Otherwise, and always under "cover", the
    run walks epoch permutations: uniform draws would leave most rows undrawn, and a sample the run never
    draws has a metagradient of exactly 0 (README, "Fidelity at full size"). `fit_to_pool` also raises
    the batch so that the permutation covers every row.
    """
    if cfg.sampling in ("auto", "cover"):
        return "uniform" if cfg.sampling == "auto" and covers(cfg, pool_size) else "epoch"
    if cfg.sampling == "auto_trajectory":  # the earlier rule: trajectory rounds at the configured batch
        return "uniform" if covers(cfg, pool_size) else "trajectory"
    return cfg.sampling


def fit_to_pool(cfg: ProxyConfig, pool_size: int) -> ProxyConfig:
    """`cfg` with "auto"/"cover" made concrete for a pool of `pool_size` rows.

    A run too short to draw every row ("cover", or "auto" on a large pool such as the full 8,250-trajectory
    prior) keeps its steps and raises its batch to ceil(pool_size / steps), one epoch permutation of the
    pool. A larger batch averages more of the pool into every step, so the one batch order the metagradient
    differentiates stands closer to the expectation over batch orders that co-training's own draws sample;
    on the full prior this lifted LDS from 0.52 to 0.85 at alpha = 0.5 and from 0.79 to 0.87 at alpha = 0.1,
    against the trajectory rounds at 256 it replaces (README, "Fidelity at full size").
    Any other sampling is returned unchanged: explicit "uniform", "epoch" or "trajectory" stay comparable,
    and "auto_trajectory" keeps its batch and resolves per pool in `batch_split`, as "auto" used to.
    """
    if cfg.sampling not in ("auto", "cover"):
        return cfg
    sampling = resolve_sampling(cfg, pool_size)  # the one rule for when the pool is covered
    batch = cfg.batch_size if sampling == "uniform" else max(cfg.batch_size, -(-pool_size // cfg.steps))
    return replace(cfg, batch_size=batch, sampling=sampling)


class BatchOrder:
    """Which pool rows each proxy step trains on: a pure function of (seed, step), so the forward run, a
    replayed segment, the reverse pass and an ensemble member all see the same batches.

    "epoch" and "trajectory" walk through shuffled rounds of units (a unit = one row, or one
    trajectory with a random step of it drawn each round); step t takes positions [tB, (t + 1)B) of the
    concatenated rounds, so every unit is visited once per round. The order is drawn on the host and
    each step's rows are handed out on `device` (the pool's).
    """

    _ROUND_STREAM = 0x7A3C  # keeps round shuffles apart from uniform draws of the same (seed, step)

    def __init__(
        self,
        episode: np.ndarray,
        rows: np.ndarray,
        batch_size: int,
        seed: int,
        sampling: str,
        device: torch.device | None = None,
    ) -> None:
        self.rows, self.batch_size, self.seed, self.sampling = rows, int(batch_size), int(seed), sampling
        self.device = torch.device("cpu") if device is None else device
        if len(rows) == 0:
            raise DatamilError("the proxy's training pool is empty; keep at least one trajectory")
        if sampling == "trajectory":
            ep = episode[rows]
            self.starts = np.flatnonzero(np.r_[True, ep[1:] != ep[:-1]])
            self.lengths = np.diff(np.r_[self.starts, len(rows)])
        else:
            self.starts, self.lengths = np.arange(len(rows)), np.ones(len(rows), np.int64)
        self._rounds: dict[int, np.ndarray] = {}

    def _round(self, r: int) -> np.ndarray:
        """(U,) pool rows of round r: the units in a shuffled order, one random step of each."""
        if r not in self._rounds:
            rng = np.random.default_rng([self.seed % 2**64, r, self._ROUND_STREAM])
            order = rng.permutation(len(self.starts))
            offset = (rng.random(len(order)) * self.lengths[order]).astype(np.int64)
            if len(self._rounds) >= 2:  # a batch spans at most two rounds; keep memory flat
                self._rounds.pop(min(self._rounds))
            self._rounds[r] = self.rows[self.starts[order] + offset]
        return self._rounds[r]

    def __call__(self, step: int) -> Tensor:
        """(B,) pool rows of `step`'s batch."""
        if self.sampling == "uniform":
            rows = self.rows[batch_indices(self.seed, step, len(self.rows), self.batch_size)]
            return host_to(torch.from_numpy(rows), self.device)
        position = step * self.batch_size + np.arange(self.batch_size)
        units = len(self.starts)
        rounds = position // units
        out = np.empty(self.batch_size, np.int64)
        for r in np.unique(rounds):
            hit = rounds == r
            out[hit] = self._round(int(r))[position[hit] % units]
        return host_to(torch.from_numpy(out), self.device)


@dataclass(frozen=True)
class BatchSplit:
    """How a proxy batch of `cfg` divides over pool rows: `batch_size` rows per step walk `rows` by
    `sampling`, and `n_target` more are drawn uniformly from `target_rows` (none when target_share is 0)."""

    rows: np.ndarray
    batch_size: int
    sampling: str
    target_rows: np.ndarray
    n_target: int


def batch_split(pool: TrainPool, cfg: ProxyConfig, rows: np.ndarray) -> BatchSplit:
    """The one rule both the batch order and the coverage warning follow; at least one prior row a batch."""
    target = rows[rows >= pool.n_scored]
    n_target = min(round(cfg.target_share * cfg.batch_size), cfg.batch_size - 1) if len(target) else 0
    walked = rows[rows < pool.n_scored] if n_target else rows
    n_walked = cfg.batch_size - n_target
    sampling = resolve_sampling(replace(cfg, batch_size=n_walked), len(walked))
    return BatchSplit(walked, n_walked, sampling, target, n_target)


def batch_order(
    pool: TrainPool, cfg: ProxyConfig, seed: int, pool_rows: np.ndarray | None = None
) -> BatchOrder | MixedBatchOrder:
    """The batch order of a proxy run of `cfg` from `seed` on `pool_rows` (default: the whole pool).

    "auto" resolves against the size of the rows trained on, so a subset proxy and the full-pool run use
    the same rule.
    """
    rows = np.arange(pool.size) if pool_rows is None else np.asarray(pool_rows, np.int64)
    split = batch_split(pool, cfg, rows)
    order = BatchOrder(pool.episode, split.rows, split.batch_size, seed, split.sampling, pool.device)
    return MixedBatchOrder(order, split.target_rows, split.n_target, seed) if split.n_target else order


class MixedBatchOrder:
    """A `BatchOrder` over the prior rows plus `n_target` uniform draws from the target-train rows in
    every batch: the proxy sees the target at co-training's share, and every prior row keeps the
    coverage its own order gives it. A pure function of (seed, step), like `BatchOrder`."""

    _TARGET_STREAM = 0x51A2  # keeps target draws apart from the prior order's draws of the same step

    def __init__(self, prior: BatchOrder, target_rows: np.ndarray, n_target: int, seed: int) -> None:
        self.prior, self.target_rows, self.n_target, self.seed = prior, target_rows, int(n_target), int(seed)

    def __call__(self, step: int) -> Tensor:
        """(B,) pool rows of `step`'s batch: the prior's rows, then the target's."""
        pick = batch_indices(self.seed, step, len(self.target_rows), self.n_target, self._TARGET_STREAM)
        target = host_to(torch.from_numpy(self.target_rows[pick]), self.prior.device)
        return torch.cat([self.prior(step), target])


StepFn = Callable[[Params, OptState, Tensor], tuple[Params, OptState]]


def step_fn(
    policy: Policy, pool: TrainPool, cfg: ProxyConfig, rows: Tensor, step: int, composable: bool = True
) -> StepFn:
    """theta_{t+1}, state_{t+1} = f_t(theta_t, state_t, w_batch): one co-training step on rows `rows`.

    composable=True (torch.func.grad inside) is needed under vjp/vmap; False is the training loop's path.
    """
    batch = take(pool.data, rows)

    def f(params: Params, state: OptState, weights: Tensor) -> tuple[Params, OptState]:
        new_params, new_state, _ = train_step(
            policy, params, state, batch, weights, step, cfg.optim, composable
        )
        return new_params, new_state

    return f


def initial_state(policy: Policy, seed: int) -> tuple[Params, OptState]:
    """(theta_0, zero Adam moments): initialization is part of the run's seed."""
    params = init_params(policy, seed)
    return params, init_opt_state(params)


def run_steps(
    policy: Policy,
    pool: TrainPool,
    cfg: ProxyConfig,
    seed: int,
    params: Params,
    state: OptState,
    start: int,
    stop: int,
    pool_rows: np.ndarray | None = None,
) -> tuple[Params, OptState]:
    """Plain (non-differentiated) steps [start, stop) with all data weights 1, on all rows or `pool_rows`."""
    first = next(iter(params.values()))
    ones = torch.ones(cfg.batch_size, dtype=first.dtype, device=first.device)
    order = batch_order(pool, cfg, seed, pool_rows)
    for t in range(start, stop):
        rows = order(t)
        params, state = step_fn(policy, pool, cfg, rows, t, composable=False)(params, state, ones)
    return params, state


def train_proxy(policy: Policy, pool: TrainPool, cfg: ProxyConfig, seed: int) -> Params:
    """One full proxy training run on the whole pool: the unit every estimator's cost is measured in."""
    params, state = initial_state(policy, seed)
    return run_steps(policy, pool, cfg, seed, params, state, 0, cfg.steps)[0]


def _stack(tree: dict, m: int) -> dict:
    return {
        k: (_stack(v, m) if isinstance(v, dict) else v.unsqueeze(0).expand(m, *v.shape).clone())
        for k, v in tree.items()
    }


@torch.no_grad()
def train_ensemble(
    policy: Policy,
    pool: TrainPool,
    subsets: Sequence[np.ndarray],
    cfg: ProxyConfig,
    seed: int,
    weights: Tensor | None = None,
) -> Params:
    """M proxies trained together, model m only on pool rows `subsets[m]`, vmapped over the training step.

    All models share theta_0 and the seed, so they differ only in their data. weights: optional (M, N_pool)
    per-row data weights (w = 0 removes a row from model m's batches without changing their order).
    Returns stacked params {name: (M, ...)}, on the pool's device like every tensor of the ensemble.
    """
    m = len(subsets)
    params, state = initial_state(policy, seed)
    params, state = _stack(params, m), _stack(state, m)
    dtype = next(iter(params.values())).dtype
    ones = torch.ones(m, cfg.batch_size, dtype=dtype, device=pool.device)
    weights = None if weights is None else weights.to(pool.device)
    orders = [batch_order(pool, cfg, seed, s) for s in subsets]
    for t in range(cfg.steps):
        rows = torch.stack([order(t) for order in orders])
        batch = take(pool.data, rows)
        w = ones if weights is None else torch.gather(weights.to(dtype), 1, rows)

        def f(p: Params, s: OptState, b: dict, w: Tensor, t: int = t) -> tuple[Params, OptState]:
            new_p, new_s, _ = train_step(policy, p, s, b, w, t, cfg.optim, composable=True)
            return new_p, new_s

        params, state = torch.func.vmap(f)(params, state, batch, w)
    return params


@torch.no_grad()
def ensemble_surrogates(surrogate: Surrogate, stacked: Params) -> np.ndarray:
    """(M,) surrogate value of each stacked model."""
    return torch.func.vmap(surrogate)(stacked).double().cpu().numpy()


def ensemble_surrogates_on_subsets(
    policy: Policy,
    pool: TrainPool,
    surrogate: Surrogate,
    subsets: Sequence[np.ndarray],
    cfg: ProxyConfig,
    seed: int,
    chunk: int = 25,
    weights: Tensor | None = None,
) -> np.ndarray:
    """(M,) true surrogate of a proxy trained on each pool-row subset, in vmapped chunks of `chunk` models."""
    values = []
    for lo in range(0, len(subsets), chunk):
        w = None if weights is None else weights[lo : lo + chunk]
        stacked = train_ensemble(policy, pool, subsets[lo : lo + chunk], cfg, seed, w)
        values.append(ensemble_surrogates(surrogate, stacked))
    return np.concatenate(values)
