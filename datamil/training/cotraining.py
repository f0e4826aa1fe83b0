"""Co-training: target-train demos plus the selected prior trajectories, mixed by sampling weight.

Target-only and all-prior are selections too (empty, and everything), so every baseline trains through
this one function with the same policy, steps and mixing ratio.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datamil.checkpoint import save_policy
from datamil.data.normalization import ActingNormalization
from datamil.data.sampling import MixtureSampler
from datamil.data.schema import is_image_key
from datamil.data.sources import TaskData
from datamil.data.store import TrajectoryStore
from datamil.errors import DataError, DatamilError
from datamil.logger import Logger
from datamil.policies.base import DATA_NORMALIZATION, OBS_STATE_KEY
from datamil.policies.build import PolicyFactory, build_policy, reads_state
from datamil.policies.vision import conform_store
from datamil.report import pyplot, save_figure
from datamil.training import OptimConfig, TrainResult, train


def state_mismatch(prior: TrajectoryStore, other: TrajectoryStore, name: str) -> str | None:
    """A one-line explanation when `other`'s state vector differs in size from the prior's, else None.

    Checked where the stores meet (selection, the co-training mixture): past there a mismatch is a numpy
    traceback deep inside training.
    """
    ours, theirs = prior.arrays.get(OBS_STATE_KEY), other.arrays.get(OBS_STATE_KEY)
    if ours is None or theirs is None or ours.shape[1:] == theirs.shape[1:]:
        return None
    return (
        f"the prior's state is {tuple(ours.shape[1:])} per step but the {name} state is "
        f"{tuple(theirs.shape[1:])}; use an image-only policy (policy=bc_image_only) or map both to the "
        "same state (data.mapping={state_keys: [...]})"
    )


def _mixable(
    target: TrajectoryStore, chosen: TrajectoryStore, use_state: bool
) -> tuple[TrajectoryStore, TrajectoryStore]:
    """Target and chosen prior episodes whose states concatenate: the same size, or (use_state=False) none."""
    mismatch = state_mismatch(chosen, target, "target-train")
    if mismatch is None:
        return target, chosen
    if use_state:
        raise DataError(mismatch)
    keep = set(target.arrays) - {OBS_STATE_KEY}
    return conform_store(target, keep, {}), conform_store(chosen, keep, {})


@dataclass
class Mixture:
    """The co-training data: one store (target episodes first) and a sampler over its two pools."""

    store: TrajectoryStore
    sampler: MixtureSampler
    n_target_episodes: int
    n_prior_episodes: int


def in_target_layout(prior: TrajectoryStore, target: TrajectoryStore) -> TrajectoryStore:
    """The prior with only the observation keys the target has, its cameras resized to the target's size.

    An OXE prior comes with its own camera size and often keys the target lacks; the policy acts on the
    target's observations, so the target's layout is the one to train in. Keys only the target has
    still fail in `TrajectoryStore.concat`, with a one-line error.
    """
    sizes = {
        f"obs/{k}": tuple(target.arrays[f"obs/{k}"].shape[1:3]) for k in target.obs_keys if is_image_key(k)
    }
    return conform_store(prior, set(target.arrays), sizes)


def build_mixture(
    target_train: TrajectoryStore,
    prior: TrajectoryStore,
    selected_ids: list[str],
    target_ratio: float,
    prior_ratio: float,
    batch_size: int,
    seed: int,
    use_state: bool = True,
    prior_weights: Mapping[str, float] | None = None,
) -> Mixture:
    """Target-train + the selected prior episodes; each batch draws target:prior in the given ratio.

    With no prior episodes selected the batch is all target data (target-only training). States of
    different sizes fail on one line, unless the policy reads no state (`use_state=False`, see
    reads_state): then they are left out. prior_weights ({dataset label: w}, a mixture prior's): the prior
    share of a batch draws a selected step of dataset d with probability proportional to w_d, i.e. dataset d
    gets the share w_d n_d / sum_e w_e n_e of it (n: selected steps); equal weights draw uniformly over the
    selected steps, as without weights.
    """
    if not (target_ratio > 0 and prior_ratio > 0):
        raise DatamilError(
            f"mixing ratio target:prior = {target_ratio}:{prior_ratio} must be positive on both sides; "
            "use an empty selection for target-only training"
        )
    parts = [target_train]
    if selected_ids:
        target, chosen = _mixable(target_train, prior.subset(prior.index_of(selected_ids)), use_state)
        parts = [target, in_target_layout(chosen, target)]
    store = TrajectoryStore.concat(parts)
    n_target_steps = target_train.n_steps
    pools = [np.arange(n_target_steps)]
    ratios = [target_ratio]
    if selected_ids:
        prior_pools, shares = _prior_pools(store, target_train.n_episodes, n_target_steps, prior_weights)
        pools += prior_pools
        ratios += [prior_ratio * share for share in shares]
    sampler = MixtureSampler(pools, ratios, batch_size, seed)
    return Mixture(store, sampler, target_train.n_episodes, len(selected_ids))


def _prior_pools(
    store: TrajectoryStore, first_prior: int, first_step: int, weights: Mapping[str, float] | None
) -> tuple[list[np.ndarray], list[float]]:
    """The prior's step pools and their shares of the prior part of a batch: one pool (share 1) unless the
    selected datasets carry different sampling weights, then one pool per dataset, share w_d n_d / sum w n."""
    labels = np.asarray(store.episodes.dataset[first_prior:])
    weight_of = {d: float((weights or {}).get(d, 1.0)) for d in sorted(set(labels.tolist()))}
    if len(set(weight_of.values())) <= 1:
        return [np.arange(first_step, store.n_steps)], [1.0]
    pools = [store.step_indices(first_prior + np.flatnonzero(labels == d)) for d in weight_of]
    mass = np.asarray([weight_of[d] * len(p) for d, p in zip(weight_of, pools, strict=True)])
    return pools, (mass / mass.sum()).tolist()


def cotrain(
    factory: PolicyFactory,
    mixture: Mixture,
    steps: int,
    optim: OptimConfig,
    seed: int,
    run_dir: Path,
    task: str,
    config: dict,
    logger: Logger | None = None,
    checkpoint_every: int = 2000,
    log_every: int = 50,
    device: str | torch.device = "cpu",
    normalization: ActingNormalization | None = None,
) -> tuple[Path, TrainResult]:
    """Train on the mixture on `device`; write `policy.pt` (CPU tensors) and `training_curve.png` into
    run_dir (resumable). normalization: the target statistics the data was normalized with (TaskData's);
    the policy then acts, and its checkpoint loads, in the target's raw units."""
    policy = build_policy(factory, mixture.store)
    if normalization is not None:
        setattr(policy, DATA_NORMALIZATION, normalization)
    result = train(
        policy,
        mixture.store,
        mixture.sampler,
        steps,
        mixture.sampler.batch_size,
        optim,
        seed,
        logger=logger,
        checkpoint_dir=run_dir / "train_state",
        checkpoint_every=checkpoint_every,
        log_every=log_every,
        device=device,
    )
    path = save_policy(
        run_dir / "policy.pt", policy, result.params, task=task, train_config=config, step=steps
    )
    plot_training_curve(result.losses, run_dir / "training_curve.png", log_every)
    return path, result


def plot_training_curve(losses: np.ndarray | list[float], path: Path, every: int = 50) -> Path:
    """Training loss against step, smoothed over `every` steps."""
    losses = np.asarray(losses, np.float64)
    fig, ax = pyplot().subplots(figsize=(5, 3.2))
    ax.plot(np.arange(len(losses)), losses, color="0.75", lw=0.6, label="per step")
    if len(losses) >= every:
        smooth = np.convolve(losses, np.ones(every) / every, mode="valid")
        ax.plot(np.arange(every - 1, len(losses)), smooth, color="tab:blue", label=f"mean of {every}")
    ax.set(xlabel="step", ylabel="training loss")
    ax.legend()
    return save_figure(fig, path)


def cotrain_on_selection(
    factory: PolicyFactory,
    data: TaskData,
    selected_ids: list[str],
    target_ratio: float,
    prior_ratio: float,
    batch_size: int,
    steps: int,
    optim: OptimConfig,
    seed: int,
    run_dir: Path,
    config: dict,
    **train_options: Any,
) -> tuple[Path, TrainResult, Mixture]:
    """Co-train on `data`'s target-train plus the selected prior episodes, as every caller must.

    The one place the mixture is built from a task's data and the data's normalization reaches the
    checkpoint, so the co-train app and the benchmarks cannot drift apart (a benchmark that left the
    normalization out once acted on raw states with a policy trained on normalized ones). The state is
    kept only when the policy reads it, and a mixture prior's dataset weights apply. train_options go to
    `cotrain` (logger, checkpoint_every, log_every, device).
    """
    mixture = build_mixture(
        data.target_train,
        data.prior,
        selected_ids,
        target_ratio,
        prior_ratio,
        batch_size,
        seed,
        use_state=reads_state(factory),
        prior_weights=data.prior_weights,
    )
    path, result = cotrain(
        factory,
        mixture,
        steps,
        optim,
        seed,
        run_dir,
        data.task,
        config,
        normalization=data.normalization,
        **train_options,
    )
    return path, result, mixture
