"""One deterministic, functional training loop with per-sample weights (co-training on a target + selected-prior
mixture builds on it in `datamil.training.cotraining`).

The optimizer step is a pure function `(params, grads, state) -> (params, state)` built from torch ops, so
the same definition trains policies and is differentiated end to end by the metagradient estimator
(`torch.func.vjp` through every step). A run is a function of (policy, data, config, seed): batch order
comes from `(seed, step)`, initialization from `seed`, and per-sample noise from `(step id, seed)`.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from datamil.checkpoint import load_train_state, save_train_state
from datamil.data.sampling import MixtureSampler, Sampler, UniformSampler, action_chunks, batch_indices
from datamil.data.store import TrajectoryStore
from datamil.device import gather_to, host_to, module_device, resolve_device, tree_to
from datamil.errors import DatamilError
from datamil.logger import Logger
from datamil.policies.base import Batch, Params, Policy

__all__ = [
    "BatchSource",
    "LossCurve",
    "MixtureSampler",
    "OptState",
    "OptimConfig",
    "StreamingBatchSource",
    "TrainResult",
    "UniformSampler",
    "action_chunks",
    "adamw_step",
    "batch_indices",
    "clip_grads",
    "gather_batch",
    "init_opt_state",
    "init_params",
    "loss_and_grads",
    "lr_at",
    "train",
    "train_step",
    "weighted_loss",
]

OptState = dict[str, dict[str, Tensor]]


@dataclass
class OptimConfig:
    """AdamW with linear warmup and cosine decay; the same numbers drive training and metagradients."""

    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0
    total_steps: int = 1000
    min_lr_ratio: float = 0.1  # cosine decay to lr * min_lr_ratio at total_steps
    grad_clip: float | None = 1.0  # global-norm clipping; None disables it (estimators do)

    def __post_init__(self) -> None:
        self.betas = (float(self.betas[0]), float(self.betas[1]))  # YAML gives a list


def lr_at(step: int, cfg: OptimConfig) -> float:
    """Learning rate of 0-based `step`: linear warmup to cfg.lr, then cosine down to lr * min_lr_ratio."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(cfg.total_steps - cfg.warmup_steps, 1)
    progress = min((step - cfg.warmup_steps) / span, 1.0)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.lr * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine)


def init_opt_state(params: Params) -> OptState:
    """Zero first and second moments {"m": {name: zeros}, "v": {name: zeros}}."""
    return {
        "m": {k: torch.zeros_like(p) for k, p in params.items()},
        "v": {k: torch.zeros_like(p) for k, p in params.items()},
    }


def clip_grads(grads: Params, max_norm: float) -> Params:
    """Scale all gradients by min(1, max_norm / ||g||) (global norm), differentiably.

    The norm is sqrt(sum g^2 + 1e-24): the tiny floor keeps its derivative finite at g = 0.
    """
    squares = torch.stack([g.pow(2).sum() for g in grads.values()]).sum()
    scale = torch.clamp(max_norm / torch.sqrt(squares + 1e-24), max=1.0)
    return {k: g * scale for k, g in grads.items()}


def adamw_step(
    params: Params, grads: Params, state: OptState, step: int, cfg: OptimConfig
) -> tuple[Params, OptState]:
    """One AdamW update (decoupled weight decay, Loshchilov & Hutter 2019), without mutating its inputs.

    p <- p - lr * (wd * p + m_hat / sqrt(v_hat + eps^2)), with m_hat, v_hat bias-corrected at t = step + 1.
    eps sits inside the root: sqrt'(0) is infinite, and v is exactly 0 for parameters that have not
    had a gradient yet, which makes `sqrt(v) + eps` give NaN metagradients (docs/notes.md, "NaN trap").
    """
    if cfg.grad_clip is not None:
        grads = clip_grads(grads, cfg.grad_clip)
    lr, (b1, b2), t = lr_at(step, cfg), cfg.betas, step + 1
    c1, c2 = 1.0 - b1**t, 1.0 - b2**t
    decay = 1.0 - lr * cfg.weight_decay
    new_params, new_m, new_v = {}, {}, {}
    for k, p in params.items():
        g = grads[k]
        # In-place ops only on fresh temporaries: fewer allocations, same autograd graph.
        m = torch.lerp(state["m"][k], g, 1.0 - b1)  # b1 m + (1 - b1) g
        v = state["v"][k] * b2 + (1.0 - b2) * (g * g)  # plain ops: vmap (ensembles) has rules for them
        denom = (v * (1.0 / c2)).add_(cfg.eps**2).sqrt_()
        kept = p * decay if cfg.weight_decay else p
        new_params[k] = torch.addcdiv(kept, m, denom, value=-lr / c1)
        new_m[k], new_v[k] = m, v
    return new_params, {"m": new_m, "v": new_v}


def weighted_loss(policy: Policy, params: Params, batch: Batch, weights: Tensor) -> Tensor:
    """Scalar sum_i w_i * loss_i / B. Dividing by B (not by sum w) makes w_i = 0 remove sample i exactly
    and keeps d loss / d w_i = loss_i / B, the quantity datamodel estimators differentiate."""
    losses = policy.per_sample_loss(params, batch)
    return (weights * losses).sum() / losses.shape[0]


def loss_and_grads(
    policy: Policy, params: Params, batch: Batch, weights: Tensor, composable: bool = False
) -> tuple[Tensor, Params]:
    """(0-d weighted loss, its gradient w.r.t. params).

    composable=True uses torch.func.grad, which nests inside torch.func transforms (vjp, vmap);
    the default uses torch.autograd.grad on leaf copies: the same kernels and the same numbers, but
    about 0.5 ms a step cheaper on CPU, which keeps the training loop near a bare torch loop.
    """
    if composable:

        def loss(p: Params) -> tuple[Tensor, Tensor]:
            value = weighted_loss(policy, p, batch, weights)
            return value, value.detach()

        grads, value = torch.func.grad(loss, has_aux=True)(params)
        return value, grads
    leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
    value = weighted_loss(policy, leaves, batch, weights)
    grads = torch.autograd.grad(value, list(leaves.values()))
    return value.detach(), dict(zip(leaves, grads, strict=True))


def train_step(
    policy: Policy,
    params: Params,
    state: OptState,
    batch: Batch,
    weights: Tensor,
    step: int,
    cfg: OptimConfig,
    composable: bool = False,
) -> tuple[Params, OptState, Tensor]:
    """Gradient of the weighted loss + one AdamW step; returns (params, state, 0-d loss before the step)."""
    value, grads = loss_and_grads(policy, params, batch, weights, composable)
    params, state = adamw_step(params, grads, state, step, cfg)
    return params, state, value


def init_params(policy: Policy, seed: int) -> Params:
    """Re-initialize `policy` from `seed` (every submodule's reset_parameters, in module order) and
    return detached copies of its parameters, on the policy's device: initialization becomes part of the
    run's seed. The draws always come from the CPU generator (a policy on a GPU is re-initialized on the
    CPU and moved back), so one seed gives the same initial parameters on every device."""
    home = module_device(policy)
    detour = home.type not in ("cpu", "meta")  # meta tensors hold no values to move
    if detour:
        policy.to("cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in policy.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset) and module is not policy:
                reset()
    if detour:
        policy.to(home)
    return policy.params()


class BatchSource:
    """Tensors of every step a sampler can return, gathered from the store once.

    A training step is then index arithmetic on tensors, with no per-step numpy copies from the
    (possibly memory-mapped) store. Rows are the sorted unique `step_ids`; `batch(ids)` maps global ids
    to rows by binary search. The tensors stay in host memory; batches come out on `device` (default the
    CPU), through pinned memory on a GPU (`datamil.device.gather_to`).
    """

    def __init__(
        self,
        policy: Policy,
        store: TrajectoryStore,
        step_ids: np.ndarray,
        weights: np.ndarray | None = None,
        device: torch.device | None = None,
    ) -> None:
        self.device = torch.device("cpu") if device is None else device
        self.ids = np.unique(np.asarray(step_ids, np.int64))
        self.weights = (
            None if weights is None else torch.as_tensor(np.asarray(weights)[self.ids], dtype=torch.float32)
        )
        self._load(policy, store)

    def _load(self, policy: Policy, store: TrajectoryStore) -> None:
        """Gather every step of the pool from the store into host tensors, once."""
        arrays = store.batch(self.ids, keys=list(policy.batch_keys))
        arrays.update(policy.extra_batch_arrays(store, self.ids))
        self.tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}

    def rows(self, step_ids: np.ndarray) -> Tensor:
        """(B,) row of each global step id; ids outside the source fail loudly."""
        rows = np.searchsorted(self.ids, step_ids)
        if np.any(rows >= len(self.ids)) or np.any(self.ids[np.minimum(rows, len(self.ids) - 1)] != step_ids):
            raise IndexError("step ids outside the batch source; build it from the sampler's pool")
        return torch.from_numpy(rows)

    def batch(self, step_ids: np.ndarray) -> tuple[Batch, Tensor]:
        """(batch dict of (B, ...) tensors including "index", (B,) weights: ones when none were given)."""
        rows = self.rows(np.asarray(step_ids, np.int64))
        batch = {k: gather_to(v, rows, self.device) for k, v in self.tensors.items()}
        return batch, self._weights(rows)

    def _weights(self, rows: Tensor) -> Tensor:
        """(B,) weights of these rows on the batch device: ones when none were given."""
        if self.weights is None:
            return torch.ones(len(rows), device=self.device)
        return gather_to(self.weights, rows, self.device)


class StreamingBatchSource(BatchSource):
    """A BatchSource that reads each batch from the store when it is asked for, instead of gathering
    every step up front: the same batches (value for value), with one batch of frames in memory.

    For pools larger than memory (an image prior of many episodes in a memory-mapped store): rows come
    through `TrajectoryStore.read` (positioned reads, nothing mapped into the process). Slower per step
    than index arithmetic on tensors, so the in-memory BatchSource stays the default.
    """

    def _load(self, policy: Policy, store: TrajectoryStore) -> None:
        """Keep the store to read each batch from it later; nothing is gathered up front."""
        self.policy, self.store, self.keys = policy, store, list(policy.batch_keys)

    def batch(self, step_ids: np.ndarray) -> tuple[Batch, Tensor]:
        step_ids = np.asarray(step_ids, np.int64)
        rows = self.rows(step_ids)  # the same out-of-pool check as the in-memory source
        arrays = self.store.read(step_ids, self.keys)
        arrays["index"] = step_ids
        arrays.update(self.policy.extra_batch_arrays(self.store, step_ids))
        host = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
        batch = {k: host_to(v, self.device) for k, v in host.items()}
        return batch, self._weights(rows)


def gather_batch(
    policy: Policy, store: TrajectoryStore, step_ids: np.ndarray, weights: np.ndarray | None = None
) -> Batch:
    """A batch of tensors for these (B,) flat step ids, with every key `policy` needs (chunks included)."""
    return BatchSource(policy, store, step_ids, weights).batch(np.asarray(step_ids, np.int64))[0]


@dataclass
class TrainResult:
    """Final parameters and the per-step training loss curve (steps,)."""

    params: Params
    losses: np.ndarray
    steps: int
    opt_state: OptState = field(repr=False, default_factory=dict)


def _as_sampler(sampler_or_pool: Sampler | np.ndarray, batch_size: int, seed: int) -> Sampler:
    if hasattr(sampler_or_pool, "indices"):
        if sampler_or_pool.batch_size != batch_size:
            raise ValueError(f"sampler batch size {sampler_or_pool.batch_size} != batch_size {batch_size}")
        return sampler_or_pool
    return UniformSampler(np.asarray(sampler_or_pool), batch_size, seed)


def train(
    policy: Policy,
    store: TrajectoryStore,
    sampler_or_pool: Sampler | np.ndarray,
    steps: int,
    batch_size: int,
    cfg: OptimConfig,
    seed: int,
    weights: np.ndarray | None = None,
    logger: Logger | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 1000,
    resume: bool = True,
    progress: bool = True,
    params: Params | None = None,
    log_every: int = 50,
    device: str | torch.device | None = None,
    stream: bool = False,
) -> TrainResult:
    """Train `policy` for `steps` AdamW steps on batches from the sampler (or a uniform one over a pool).

    weights: (N,) per flat step id of the store, default 1. params: starting point (default: initialized
    from `seed`; a sampler passed in keeps its own seed for the batch order, a pool is sampled with
    `seed`). The learning-rate schedule spans cfg.total_steps: set it to `steps`. With `checkpoint_dir`, the run state is saved every `checkpoint_every` steps and a
    later call with `resume=True` continues from it, bit-identical to an uninterrupted run. The final
    parameters are also loaded into `policy`, so `policy.act(None, obs)` uses them. device: where to
    train (`datamil.device.resolve_device` names); None = where the policy is, the CPU unless it was
    moved. The policy is moved there and stays there. stream: read each batch from the store when it is
    needed (`StreamingBatchSource`, for pools larger than memory) instead of gathering the pool up front;
    the same run either way.
    """
    device = module_device(policy) if device is None else resolve_device(device)
    policy.to(device)
    sampler = _as_sampler(sampler_or_pool, batch_size, seed)
    source = (StreamingBatchSource if stream else BatchSource)(policy, store, sampler.pool, weights, device)
    start = (
        init_params(policy, seed)
        if params is None
        else tree_to({k: v.detach().clone() for k, v in params.items()}, device)
    )
    result = _run_loop(
        policy,
        source,
        sampler,
        steps,
        cfg,
        start,
        logger=logger,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
        resume=resume,
        progress=progress,
        log_every=log_every,
        seed=seed,
    )
    policy.load_params(result.params)
    return result


def _digest(arrays: list[np.ndarray]) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def _fingerprint(
    policy: Policy, sampler: Sampler, source: BatchSource, cfg: OptimConfig, seed: int, start: Params
) -> dict:
    """What a resumed run must share with the saved one for the continuation to be the same run."""
    pools = getattr(sampler, "pools", [sampler.pool])
    return {
        "policy": f"{type(policy).__name__}({hashlib.sha256(repr(policy.init_kwargs).encode()).hexdigest()[:16]})",
        "initial params": _digest([p.cpu().numpy() for p in start.values()]),
        "optim": repr(asdict(cfg)),
        "seed": seed,
        "sampler": f"{type(sampler).__name__}(batch={sampler.batch_size}, seed={sampler.seed}, "
        f"ratios={getattr(sampler, 'ratios', None)})",
        "data": _digest(pools + ([] if source.weights is None else [source.weights.numpy()])),
    }


def _resume(checkpoint_dir: Path, fingerprint: dict, steps: int) -> dict | None:
    saved = load_train_state(checkpoint_dir)
    if saved is None:
        return None
    differ = [k for k in fingerprint if saved["fingerprint"].get(k) != fingerprint[k]]
    if differ:
        raise DatamilError(
            f"{checkpoint_dir} holds a run with different {', '.join(differ)}; "
            "use a new checkpoint_dir or pass resume=False"
        )
    if saved["step"] > steps:
        raise DatamilError(
            f"{checkpoint_dir} is at step {saved['step']} > steps={steps}; use a new checkpoint_dir"
        )
    return saved


def _save(
    checkpoint_dir: Path, fingerprint: dict, step: int, params: Params, state: OptState, losses: np.ndarray
) -> None:
    save_train_state(
        checkpoint_dir,
        {
            "fingerprint": fingerprint,
            "step": step,
            "params": params,
            "opt_state": state,
            "losses": torch.from_numpy(losses[:step].copy()),
        },
    )


class LossCurve:
    """(steps,) float64 training losses. On the CPU each step's loss is read at once; on a GPU the 0-d
    loss tensors wait on the device until `sync` (log and checkpoint steps), so no step waits for the
    device to finish it. The values are the same either way (float32 losses, stored exactly)."""

    def __init__(self, steps: int, device: torch.device) -> None:
        self.values = np.full(steps, np.nan)
        self.lazy = device.type != "cpu"
        self._pending: list[Tensor] = []
        self._first = 0

    def record(self, step: int, loss: Tensor) -> None:
        if not self.lazy:
            self.values[step] = loss.item()
            return
        if not self._pending:
            self._first = step
        self._pending.append(loss)

    def sync(self) -> np.ndarray:
        """The curve with every recorded step filled in (one device-to-host copy for all pending ones)."""
        if self._pending:
            stop = self._first + len(self._pending)
            self.values[self._first : stop] = torch.stack(self._pending).cpu().numpy()
            self._pending.clear()
        return self.values


def _run_loop(
    policy: Policy,
    source: BatchSource,
    sampler: Sampler,
    steps: int,
    cfg: OptimConfig,
    params: Params,
    *,
    logger: Logger | None,
    checkpoint_dir: str | Path | None,
    checkpoint_every: int,
    resume: bool,
    progress: bool,
    log_every: int,
    seed: int,
) -> TrainResult:
    state, curve, start = init_opt_state(params), LossCurve(steps, source.device), 0
    ckpt = None if checkpoint_dir is None else Path(checkpoint_dir)
    fingerprint = _fingerprint(policy, sampler, source, cfg, seed, params)
    saved = _resume(ckpt, fingerprint, steps) if ckpt is not None and resume else None
    if saved is not None:
        params, state = tree_to(saved["params"], source.device), tree_to(saved["opt_state"], source.device)
        start = saved["step"]
        curve.values[:start] = saved["losses"].numpy()
    bar = tqdm(total=steps, initial=start, disable=not progress, desc="train", dynamic_ncols=True)
    for step in range(start, steps):
        batch, weights = source.batch(sampler.indices(step))
        params, state, loss = train_step(policy, params, state, batch, weights, step, cfg)
        curve.record(step, loss)
        done = step + 1
        if done % log_every == 0 or done == steps:
            recent = float(np.mean(curve.sync()[max(done - log_every, start) : done]))
            bar.set_postfix(loss=f"{recent:.4g}", refresh=False)
            if logger is not None:
                logger.log({"train/loss": recent, "train/lr": lr_at(step, cfg)}, step=done)
        if ckpt is not None and (done % checkpoint_every == 0 or done == steps):
            _save(ckpt, fingerprint, done, params, state, curve.sync())
        bar.update(1)
    bar.close()
    return TrainResult(params, curve.sync(), steps, state)
