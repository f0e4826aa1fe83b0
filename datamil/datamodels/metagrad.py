"""Exact metagradients through the whole proxy run (Engstrom et al. 2025, "Optimizing ML Training with
Metagradient Descent"), with single-level segment checkpointing; the DataMIL default estimator.

Every pool sample carries a data weight w_i (= 1). One training step is the map

    z_{t+1} = f_t(z_t, w_{B_t}),   z_t = (theta_t, m_t, v_t),                              (step)

(gradient of sum_b w_b loss_b / B, then AdamW), and the score is the total derivative of the surrogate:

    scores[i] = dS(theta_T)/dw_i = sum_{t: i in B_t} zbar_{t+1}^T df_t/dw_i,
    zbar_t = (df_t/dz_t)^T zbar_{t+1},   zbar_T = (dS/dtheta_T, 0, 0).                        (adjoint)

Single-level segment checkpointing (not REPLAY's nested, logarithmic scheme): the forward run stores z
once at the start of every segment of `checkpoint_every` steps. The reverse pass re-runs each segment
exactly once, keeping every step's autograd graph (the re-run *is* the reverse pass's primal pass, so
nothing is computed twice), then pulls the adjoint back step by step and scatter-adds the weight
cotangents into an (N_pool,) buffer on the pool's device, whose first n_scored entries are the scores.
The last segment is recorded during the forward run itself.

The exact metagradient belongs to one batch order: a sample the run never draws scores exactly 0, and
which steps a trajectory happens to be drawn at moves its sum. Selection should target the expectation
over batch orders, since co-training draws its own batches. A sample drawn with probability B/N per step
adds loss_i / B to that step's mean gradient, so

    E[scores[i]] = sum_t <gbar_t, grad loss_i(theta_t)> / N
                 ~ (T / K N) sum_k <gbar_{t_k}, grad loss_i(theta_{t_k})>,                      (expected)

with gbar_t the cotangent of step t's mean gradient (pulled back from zbar_{t+1}) and t_k the midpoints
of K equal intervals. `expectation_points=K` evaluates it in the same reverse pass with one forward-mode
JVP per node over `steps_per_trajectory` evenly spaced steps of every prior trajectory (trajectory sums
scaled to its length); the truncated estimator is the special case of one node with a truncated adjoint.
Memory: O(steps / segment x |z| + segment x graph), not O(steps x |z|); time: the re-runs of all but
the last segment, under one extra training run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from datamil.data.store import TrajectoryStore
from datamil.datamodels.base import EstimateResult, check_scores, prepare_proxy, scores_only, timed
from datamil.datamodels.proxy import (
    ProxyConfig,
    batch_order,
    batch_split,
    initial_state,
    run_steps,
    step_fn,
)
from datamil.datamodels.surrogate import (
    Surrogate,
    TrainPool,
    loss_directional_derivatives,
    sampled_rows,
    spread_to_steps,
    take,
)
from datamil.errors import DatamilError
from datamil.policies.base import Params, Policy, flatten_params, unflatten_params
from datamil.registry import configured
from datamil.training import OptState, adamw_step, weighted_loss

logger = logging.getLogger(__name__)
Pullback = Callable[[tuple[Params, OptState]], tuple[Params, OptState, Tensor]]
REVERSE_MODES = ("autograd", "func")


@dataclass
class StepRecord:
    """One recorded step t: its batch rows and its pullback zbar_{t+1} -> (thetabar_t, statebar_t, wbar).

    The autograd pullback also takes `with_grad=True` and then appends (theta_t, gbar_t): gbar_t is the
    cotangent of the step's mean batch gradient, through which an injected sample acts (eq. expected).
    """

    rows: Tensor
    pullback: Pullback
    t: int = -1


def autograd_step(
    policy: Policy, pool: TrainPool, cfg: ProxyConfig, rows: Tensor, t: int, z: tuple[Params, OptState]
) -> tuple[tuple[Params, OptState], Pullback]:
    """One step on fresh leaves (z_t, w = 1) with its autograd graph kept; the pullback frees it.

    theta and each Adam moment are one flat vector inside the step (params are views of it), so AdamW and
    its reverse are a handful of large elementwise ops instead of a few per parameter tensor.
    """
    params, state = z

    def flat(tree: Params) -> Tensor:
        return flatten_params(tree, like=params)

    def split(vector: Tensor) -> Params:
        return unflatten_params(vector, params)

    theta = flat(params).requires_grad_()
    moments = {name: {"flat": flat(m).requires_grad_()} for name, m in state.items()}
    weights = torch.ones(cfg.batch_size, dtype=theta.dtype, device=theta.device, requires_grad=True)
    with torch.enable_grad():
        loss = weighted_loss(policy, split(theta), take(pool.data, rows), weights)
        (grad,) = torch.autograd.grad(loss, [theta], create_graph=True)
        new_theta, new_moments = adamw_step({"flat": theta}, {"flat": grad}, moments, t, cfg.optim)
    inputs = [theta, *(m["flat"] for m in moments.values()), weights]
    outputs = [new_theta["flat"], *(m["flat"] for m in new_moments.values())]

    def pullback(adjoint: tuple[Params, OptState], with_grad: bool = False) -> tuple:
        adj_params, adj_state = adjoint
        cotangents = [flat(adj_params), *(flat(adj_state[name]) for name in moments)]
        wrt = [*inputs, grad] if with_grad else inputs
        grads = torch.autograd.grad(outputs, wrt, cotangents, allow_unused=True)
        grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, wrt, strict=True)]
        out = (
            split(grads[0]),
            {name: split(g) for name, g in zip(moments, grads[1 : len(inputs) - 1], strict=True)},
            grads[len(inputs) - 1],
        )
        return (*out, (split(theta.detach()), split(grads[-1]))) if with_grad else out

    new_state = {name: split(m["flat"].detach()) for name, m in new_moments.items()}
    return (split(new_theta["flat"].detach()), new_state), pullback


def func_step(
    policy: Policy, pool: TrainPool, cfg: ProxyConfig, rows: Tensor, t: int, z: tuple[Params, OptState]
) -> tuple[tuple[Params, OptState], Pullback]:
    """The same step under torch.func.vjp: identical numbers, slower per step on CPU (functorch dispatch)."""
    first = next(iter(z[0].values()))
    ones = torch.ones(cfg.batch_size, dtype=first.dtype, device=first.device)
    return torch.func.vjp(step_fn(policy, pool, cfg, rows, t), *z, ones)


def record_segment(
    policy: Policy,
    pool: TrainPool,
    cfg: ProxyConfig,
    seed: int,
    z: tuple[Params, OptState],
    start: int,
    stop: int,
    pool_rows: np.ndarray | None = None,
    reverse: str = "autograd",
) -> tuple[tuple[Params, OptState], list[StepRecord]]:
    """Steps [start, stop), keeping each step's pullback (eq. step) for `pull_back`.

    reverse: "autograd" (plain autograd graph, the default: cheapest on CPU) or "func" (torch.func.vjp).
    pool_rows: train on these pool rows only (default: the whole pool).
    """
    if reverse not in REVERSE_MODES:
        raise DatamilError(f"reverse={reverse!r} must be one of {REVERSE_MODES}")
    record = autograd_step if reverse == "autograd" else func_step
    records: list[StepRecord] = []
    order = batch_order(pool, cfg, seed, pool_rows)
    for t in range(start, stop):
        rows = order(t)
        z, pullback = record(policy, pool, cfg, rows, t, z)
        records.append(StepRecord(rows, pullback, t))
    return z, records


Inject = Callable[[int, Params, Params], None]  # (t, theta_t, gbar_t) at an injection step


def pull_back(
    records: list[StepRecord],
    adjoint: tuple[Params, OptState],
    buffer: Tensor | None,
    inject: Inject | None = None,
    inject_steps: frozenset[int] = frozenset(),
) -> tuple[Params, OptState]:
    """Apply the recorded pullbacks last-to-first (eq. adjoint); scatter-add the weight cotangent of every
    batch row into the (N_pool,) `buffer` (None: discard them). Records are popped as they are used,
    freeing each graph. The buffer covers the whole pool, so no step filters its rows: on a GPU the
    reverse pass never waits for the device; the scored rows' sums are the same. At `inject_steps`,
    `inject(t, theta_t, gbar_t)` gets the step's gradient cotangent (autograd records only).
    """
    while records:
        record = records.pop()
        if inject is not None and record.t in inject_steps:
            adj_params, adj_state, adj_w, (theta_t, gbar) = record.pullback(adjoint, True)
            inject(record.t, theta_t, gbar)
        else:
            adj_params, adj_state, adj_w = record.pullback(adjoint)
        adjoint = (adj_params, adj_state)
        if buffer is not None:
            buffer.index_add_(0, record.rows, adj_w.to(buffer.dtype))
    return adjoint


def injection_steps(steps: int, points: int) -> frozenset[int]:
    """The midpoints of `points` equal intervals of the run: the quadrature nodes of eq. (expected)."""
    return frozenset(min(steps - 1, int((k + 0.5) * steps / points)) for k in range(points))


class ExpectedScores:
    """Accumulates eq. (expected) over injection steps for a sample of each prior trajectory's steps."""

    def __init__(self, policy: Policy, pool: TrainPool, steps: int, points: int, per_trajectory: int | None):
        self.policy, self.pool = policy, pool
        self.rows = sampled_rows(pool, per_trajectory)
        self.scale = steps / (points * pool.size)  # T/K steps per node, each drawing a row w.p. B/N, / B
        self.total = torch.zeros(len(self.rows), dtype=torch.float64, device=pool.device)

    def __call__(self, t: int, theta: Params, gbar: Params) -> None:
        self.total += self.scale * loss_directional_derivatives(
            self.policy, self.pool, theta, gbar, rows=self.rows
        )

    def scores(self) -> np.ndarray:
        """(n_scored,) per-step scores: each sampled row's own, or spread over its trajectory when sampled."""
        total = self.total.cpu().numpy()
        return total if len(self.rows) == self.pool.n_scored else spread_to_steps(self.pool, self.rows, total)


def warn_if_sparse(cfg: ProxyConfig, pool: TrainPool) -> None:
    """Warn when the proxy run cannot draw every sample (or, in trajectory rounds, every trajectory).

    dS/dw_i is exactly 0 for a sample the run never draws. With uniform draws on the 8,250-trajectory
    prior a 400 x 256 run draws 0.1 samples per pool row and scores 90% of the steps exactly 0; sampling
    "auto" raises the batch there until one epoch permutation covers every row (`fit_to_pool`), so only
    an explicit sampling or batch can trigger this.
    """
    split = batch_split(pool, cfg, np.arange(pool.size))
    draws, sampling = cfg.steps * split.batch_size, split.sampling
    units = len(np.unique(pool.episode[split.rows])) if sampling == "trajectory" else len(split.rows)
    if draws < units:
        what = "trajectories" if sampling == "trajectory" else "samples"
        logger.warning(
            "the metagrad proxy run draws %d samples but the pool holds %d %s (sampling %s); %s it never "
            "draws score 0. Raise estimator.proxy.optim.total_steps or estimator.proxy.batch_size "
            "(estimator.checkpoint_every bounds the memory)",
            draws, units, what, sampling, what,
        )  # fmt: skip


def metagradient(
    policy: Policy,
    pool: TrainPool,
    surrogate: Surrogate,
    cfg: ProxyConfig,
    seed: int,
    checkpoint_every: int = 500,
    reverse: str = "autograd",
    expectation_points: int = 0,
    steps_per_trajectory: int | None = 8,
) -> EstimateResult:
    """(n_scored,) dS/dw for the proxy run of `cfg` from seed `seed`; timings split forward/backward.

    checkpoint_every: segment length. A run no longer than it is recorded whole during the forward pass
    (cheapest; memory ~ steps x one step's graph); shorter segments bound memory at the price of
    re-running all but the last segment (~ +1 training run). reverse: see `record_segment`.
    expectation_points: 0 = the exact metagradient of this run (eq. adjoint); K > 0 = its expectation
    over batch orders (eq. expected), injecting `steps_per_trajectory` steps of every prior trajectory
    at K points of the same reverse pass.
    """
    if expectation_points and reverse != "autograd":
        raise DatamilError("expectation_points needs reverse=autograd (the step's gradient cotangent)")
    steps = cfg.steps
    seg = max(1, min(int(checkpoint_every), steps))
    starts = list(range(0, steps, seg))
    timings: dict[str, float] = {}
    expected = (
        ExpectedScores(policy, pool, steps, expectation_points, steps_per_trajectory)
        if expectation_points
        else None
    )
    nodes = injection_steps(steps, expectation_points) if expectation_points else frozenset()
    with timed(timings, "forward"):
        z = initial_state(policy, seed)
        checkpoints = []
        for s in starts[:-1]:
            checkpoints.append((s, z))
            z = run_steps(policy, pool, cfg, seed, *z, s, s + seg)
        z, records = record_segment(policy, pool, cfg, seed, z, starts[-1], steps, reverse=reverse)
        value = float(surrogate(z[0]))
    with timed(timings, "backward"):
        buffer = torch.zeros(pool.size, dtype=torch.float64, device=pool.device)
        state_zero = {k: {n: torch.zeros_like(p) for n, p in d.items()} for k, d in z[1].items()}
        adjoint = pull_back(records, (surrogate.grad(z[0]), state_zero), buffer, expected, nodes)
        while checkpoints:
            s, z_s = checkpoints.pop()
            _, records = record_segment(policy, pool, cfg, seed, z_s, s, min(s + seg, steps), reverse=reverse)
            adjoint = pull_back(records, adjoint, buffer, expected, nodes)
    info = {"surrogate": value, "steps": steps, "segment": seg, "expectation_points": expectation_points}
    scores = expected.scores() if expected is not None else buffer[: pool.n_scored].cpu().numpy()
    return EstimateResult(scores, timings, info)


# datamil/configs/estimator/metagrad.yaml is the only source of these defaults
DEFAULTS = configured("estimator", "metagrad")


def run_metagrad(
    policy: Policy,
    train_store: TrajectoryStore,
    target_val_store: TrajectoryStore,
    rng_seed: int = 0,
    proxy: ProxyConfig = DEFAULTS["proxy"],
    checkpoint_every: int = DEFAULTS["checkpoint_every"],
    include_target_train: bool = DEFAULTS["include_target_train"],
    target_train_store: TrajectoryStore | None = None,
    reverse: str = DEFAULTS["reverse"],
    expectation_points: int = 0,
    steps_per_trajectory: int | None = 8,
) -> EstimateResult:
    """Exact metagradient scores of every prior step (negative = helpful), or with `expectation_points` > 0
    their expectation over batch orders; see the module docstring."""
    pool, surrogate, cfg = prepare_proxy(
        policy, train_store, target_val_store, target_train_store, include_target_train, proxy
    )
    # a batch raised to cover the pool records as many rows per segment as the configured one did
    checkpoint_every = max(1, checkpoint_every * proxy.batch_size // cfg.batch_size)
    if not expectation_points:  # the expectation injects every trajectory whatever the run draws
        warn_if_sparse(cfg, pool)
    result = metagradient(
        policy,
        pool,
        surrogate,
        cfg,
        rng_seed,
        checkpoint_every,
        reverse,
        expectation_points,
        steps_per_trajectory,
    )
    result.scores = check_scores(result.scores, train_store.n_steps, "metagrad")
    result.info |= {
        "batch_size": cfg.batch_size,
        "sampling": cfg.sampling,
        "checkpoint_every": checkpoint_every,
    }
    return result


estimate_metagrad = scores_only(run_metagrad)


def finite_difference(
    policy: Policy,
    pool: TrainPool,
    surrogate: Surrogate,
    cfg: ProxyConfig,
    seed: int,
    row: int,
    eps: float = 1e-6,
) -> float:
    """Central difference (S(w + eps e_row) - S(w - eps e_row)) / 2 eps of the same run: the test oracle."""

    def step(params: Params, state: OptState, t: int, rows: torch.Tensor, delta: float) -> tuple:
        w = torch.ones(cfg.batch_size, dtype=torch.float64, device=rows.device)
        w = w + delta * (rows == row).double()
        return step_fn(policy, pool, cfg, rows, t, False)(
            params, state, w.to(params[next(iter(params))].dtype)
        )

    return replayed_difference(policy, pool, surrogate, cfg, seed, step, eps)


def replayed_difference(
    policy: Policy,
    pool: TrainPool,
    surrogate: Surrogate,
    cfg: ProxyConfig,
    seed: int,
    perturbed_step: Callable[[Params, OptState, int, torch.Tensor, float], tuple[Params, OptState]],
    eps: float,
) -> float:
    """(S(+eps) - S(-eps)) / 2 eps: the proxy run replayed twice from the same start and batch order, step t
    taken by `perturbed_step(params, state, t, rows, delta)` with delta = +eps, then -eps. The oracle of
    the finite-difference tests; what a step perturbs (a sample's weight, an injected loss) is the caller's."""
    values = []
    order = batch_order(pool, cfg, seed)
    for delta in (eps, -eps):
        params, state = initial_state(policy, seed)
        for t in range(cfg.steps):
            params, state = perturbed_step(params, state, t, order(t), delta)
        values.append(float(surrogate(params)))
    return (values[0] - values[1]) / (2 * eps)


__all__ = [
    "estimate_metagrad",
    "finite_difference",
    "metagradient",
    "record_segment",
    "pull_back",
    "replayed_difference",
    "run_metagrad",
]
