"""TracIn-style gradient influence (Pruthi et al. 2020), optionally with TRAK-style random projections
(Park et al. 2023): a first-order, checkpoint-summed estimate of what one more use of sample i does to S.

A step that contains sample i moves theta by -lr_t P_t grad loss_i / B (P_t = Adam's diagonal
preconditioner 1 / sqrt(v_hat + eps^2), or I); sample i is drawn about B / N times per step, so

    scores[i] = - sum_j (eta_j / N) < grad loss_i(theta_j), P_j grad S(theta_j) >,              (tracin)

with checkpoints theta_j at the start of n equal intervals and eta_j the summed learning rate of
interval j. The inner products are forward-mode directional derivatives of the per-sample losses; with
`projection_dim`, per-sample gradients (vmap(grad)) and the direction are both projected by one seeded
Gaussian matrix R (P_total, d), E[R R^T] = I, before the inner product.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from datamil.data.store import TrajectoryStore
from datamil.datamodels.base import EstimateResult, check_scores, prepare_proxy, scores_only, timed
from datamil.datamodels.proxy import ProxyConfig, initial_state, run_steps
from datamil.datamodels.surrogate import Surrogate, TrainPool, loss_directional_derivatives, take
from datamil.policies.base import Params, Policy, flatten_params, unflatten_params
from datamil.registry import configured
from datamil.training import OptState, lr_at


def preconditioned_direction(
    surrogate: Surrogate, params: Params, state: OptState, step: int, cfg: ProxyConfig, precondition: bool
) -> Tensor:
    """(P_total,) P_j grad S(theta_j) of eq. (tracin)."""
    grad = surrogate.grad(params)
    if precondition and step > 0:
        b2, eps = cfg.optim.betas[1], cfg.optim.eps
        grad = {k: g / torch.sqrt(state["v"][k] / (1.0 - b2**step) + eps**2) for k, g in grad.items()}
    return flatten_params(grad).detach()


def per_sample_grads(policy: Policy, params: Params, chunk: dict[str, Tensor]) -> Tensor:
    """(C, P_total) gradient of each sample's loss, by vmap(grad) over the chunk."""

    def loss_one(p: Params, sample: dict[str, Tensor]) -> Tensor:
        return policy.per_sample_loss(p, {k: v.unsqueeze(0) for k, v in sample.items()})[0]

    grads = torch.func.vmap(torch.func.grad(loss_one), in_dims=(None, 0))(params, chunk)
    return flatten_params(grads, batch_dims=1).detach()


def projection(
    n_params: int, dim: int, seed: int, dtype: torch.dtype, device: torch.device | None = None
) -> Tensor:
    """(P_total, d) Gaussian matrix with entries N(0, 1/d), a pure function of the seed: drawn on the CPU
    (the same matrix on every device), then moved to `device`."""
    generator = torch.Generator().manual_seed(int(seed))
    matrix = torch.randn(n_params, dim, generator=generator, dtype=dtype) / dim**0.5
    return matrix if device is None else matrix.to(device)


def checkpoint_dots(
    policy: Policy, pool: TrainPool, params: Params, direction: Tensor, chunk_size: int, proj: Tensor | None
) -> Tensor:
    """(n_scored,) <grad loss_i(params), direction> over every prior row (projected when proj is given).

    Unprojected, the inner products are forward-mode directional derivatives (no per-sample gradients).
    """
    if proj is None:
        return loss_directional_derivatives(policy, pool, params, unflatten_params(direction, params))
    target = direction @ proj
    out = torch.zeros(pool.n_scored, dtype=torch.float64, device=pool.device)
    for lo in range(0, pool.n_scored, chunk_size):
        rows = torch.arange(lo, min(lo + chunk_size, pool.n_scored), device=pool.device)
        grads = per_sample_grads(policy, params, take(pool.data, rows))
        out[rows] = (grads @ proj @ target).double()
    return out


# datamil/configs/estimator/influence.yaml is the only source of these defaults
DEFAULTS = configured("estimator", "influence")


def run_influence(
    policy: Policy,
    train_store: TrajectoryStore,
    target_val_store: TrajectoryStore,
    rng_seed: int = 0,
    proxy: ProxyConfig = DEFAULTS["proxy"],
    n_checkpoints: int = DEFAULTS["n_checkpoints"],
    precondition: bool = DEFAULTS["precondition"],
    projection_dim: int | None = DEFAULTS["projection_dim"],
    chunk_size: int = DEFAULTS["chunk_size"],
    include_target_train: bool = DEFAULTS["include_target_train"],
    target_train_store: TrajectoryStore | None = None,
) -> EstimateResult:
    """TracIn scores of eq. (tracin) (negative = helpful) from `n_checkpoints` checkpoints of one proxy run."""
    pool, surrogate, cfg = prepare_proxy(
        policy, train_store, target_val_store, target_train_store, include_target_train, proxy
    )
    timings: dict[str, float] = {}
    bounds = np.linspace(0, cfg.steps, max(1, n_checkpoints) + 1).round().astype(int)
    total = torch.zeros(pool.n_scored, dtype=torch.float64, device=pool.device)
    z, done, proj = initial_state(policy, rng_seed), 0, None
    with timed(timings, "total"):
        for start, stop in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
            z, done = run_steps(policy, pool, cfg, rng_seed, *z, done, start), start
            direction = preconditioned_direction(surrogate, *z, start, cfg, precondition)
            if projection_dim and proj is None:
                proj = projection(len(direction), projection_dim, rng_seed, direction.dtype, direction.device)
            eta = sum(lr_at(t, cfg.optim) for t in range(start, stop))
            total -= eta / pool.size * checkpoint_dots(policy, pool, z[0], direction, chunk_size, proj)
    scores = check_scores(total.cpu().numpy(), train_store.n_steps, "influence")
    return EstimateResult(scores, timings, {"checkpoints": bounds[:-1].tolist()})


estimate_influence = scores_only(run_influence)
