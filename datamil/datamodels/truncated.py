"""The reference release's truncated metagradient estimator, kept for comparison with the exact one.

The proxy trains for S steps. At step t* = S - W every candidate is injected once with weight zero:

    g_{t*} = grad_theta [ sum_{b in B_t*} loss_b / B + sum_i w_i loss_i / B ],   w = 0,        (inject)

so the run is unchanged (the correct batch B_t* is replayed inside the special step). Reverse mode goes
only through the last W steps:

    scores[i] = dS/dw_i = <gbar_{t*}, grad loss_i(theta_t*)> / B,   gbar_{t*} = (dz_{t*+1}/dg)^T zbar_{t*+1}.

The candidate term is a scatter-ADD over minibatches that together cover every candidate (each a JVP of
the per-sample losses in direction gbar), not one minibatch per trajectory. Optionally the scores are
averaged over R runs trained on random `subset_fraction` subsets of the prior trajectories.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from datamil.data.store import TrajectoryStore
from datamil.datamodels.base import EstimateResult, check_scores, prepare_proxy, scores_only, timed
from datamil.datamodels.metagrad import pull_back, record_segment
from datamil.datamodels.proxy import (
    ProxyConfig,
    batch_order,
    initial_state,
    random_masks,
    run_steps,
    subset_rows,
)
from datamil.datamodels.surrogate import Surrogate, TrainPool, loss_directional_derivatives, take
from datamil.policies.base import Params, Policy
from datamil.registry import configured
from datamil.training import OptState, adamw_step, weighted_loss


def _special_step(
    policy: Policy,
    pool: TrainPool,
    cfg: ProxyConfig,
    seed: int,
    z: tuple[Params, OptState],
    t: int,
    pool_rows: np.ndarray,
):
    """Step t with an extra gradient input g_extra (= 0): returns (z_{t+1}, pullback to gbar) (eq. inject)."""
    params, state = z
    batch = take(pool.data, batch_order(pool, cfg, seed, pool_rows)(t))
    first = next(iter(params.values()))
    ones = torch.ones(cfg.batch_size, dtype=first.dtype, device=first.device)

    def step(g_extra: Params) -> tuple[Params, OptState]:
        grads = torch.func.grad(lambda p: weighted_loss(policy, p, batch, ones))(params)
        grads = {k: g + g_extra[k] for k, g in grads.items()}
        return adamw_step(params, grads, state, t, cfg.optim)

    return torch.func.vjp(step, {k: torch.zeros_like(p) for k, p in params.items()})


def truncated_scores(
    policy: Policy,
    pool: TrainPool,
    surrogate: Surrogate,
    cfg: ProxyConfig,
    seed: int,
    window: int,
    pool_rows: np.ndarray,
    chunk_size: int = 2048,
) -> Tensor:
    """(n_scored,) scores of one truncated run on pool rows `pool_rows` (see the module docstring)."""
    steps = cfg.steps
    t_star = steps - max(1, min(int(window), steps))
    z = run_steps(policy, pool, cfg, seed, *initial_state(policy, seed), 0, t_star, pool_rows)
    theta_star = z[0]
    z, special_vjp = _special_step(policy, pool, cfg, seed, z, t_star, pool_rows)
    z, records = record_segment(policy, pool, cfg, seed, z, t_star + 1, steps, pool_rows)
    state_zero = {k: {n: torch.zeros_like(p) for n, p in d.items()} for k, d in z[1].items()}
    adjoint = pull_back(records, (surrogate.grad(z[0]), state_zero), None)
    (g_bar,) = special_vjp(adjoint)
    return loss_directional_derivatives(policy, pool, theta_star, g_bar, chunk_size) / cfg.batch_size


# datamil/configs/estimator/truncated.yaml is the only source of these defaults
DEFAULTS = configured("estimator", "truncated")


def run_truncated(
    policy: Policy,
    train_store: TrajectoryStore,
    target_val_store: TrajectoryStore,
    rng_seed: int = 0,
    proxy: ProxyConfig = DEFAULTS["proxy"],
    window: int = DEFAULTS["window"],
    n_runs: int = DEFAULTS["n_runs"],
    subset_fraction: float = DEFAULTS["subset_fraction"],
    chunk_size: int = DEFAULTS["chunk_size"],
    include_target_train: bool = DEFAULTS["include_target_train"],
    target_train_store: TrajectoryStore | None = None,
) -> EstimateResult:
    """Truncated-window metagradient scores (negative = helpful), averaged over `n_runs` runs.

    n_runs = 1 trains on the whole pool; n_runs > 1 trains run r on a random `subset_fraction` of the prior
    trajectories (seeded by (rng_seed, r)) and injects every candidate in every run.
    """
    pool, surrogate, cfg = prepare_proxy(
        policy, train_store, target_val_store, target_train_store, include_target_train, proxy
    )
    timings: dict[str, float] = {}
    total = torch.zeros(pool.n_scored, dtype=torch.float64, device=pool.device)
    with timed(timings, "total"):
        for r in range(n_runs):
            rng = np.random.default_rng([rng_seed, r])
            rows = np.arange(pool.size)
            if n_runs > 1:
                mask = random_masks(train_store.n_episodes, 1, subset_fraction, rng)
                rows = subset_rows(pool, train_store.n_episodes, mask)[0]
            total += truncated_scores(policy, pool, surrogate, cfg, rng_seed, window, rows, chunk_size)
    scores = check_scores((total / n_runs).cpu().numpy(), train_store.n_steps, "truncated")
    return EstimateResult(scores, timings, {"window": window, "n_runs": n_runs})


estimate_truncated = scores_only(run_truncated)
