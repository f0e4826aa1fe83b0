"""The selection stage: estimate datamodel scores on the surrogate, aggregate, select, write the run.

Resumable: each proxy seed's per-sample scores are saved in the run directory with a fingerprint of
the settings that produced them; a re-run (after a kill, or to add seeds) reuses the finished seeds and
refuses to mix scores made with different settings.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from datamil.cotraining import PolicyFactory, build_policy
from datamil.data.sources import TaskData
from datamil.errors import DatamilError
from datamil.io import atomic_write_bytes
from datamil.report import write_selection_report
from datamil.selection import Selection, iterative_prune, per_trajectory, threshold, top_k, write_selection

# (policy, prior store, target-val store, rng_seed=..., target_train_store=...) -> (N_prior_steps,) scores
EstimateFn = Callable[..., np.ndarray]


@dataclass
class SelectionConfig:
    """How trajectory scores become a selection. Lower score = more helpful."""

    method: str = "topk"  # topk | threshold | iterative
    budget: float = 0.1  # topk / iterative: fraction of prior trajectories kept
    cutoff: float = 0.0  # threshold: keep trajectories scoring below this
    aggregate: str = "sum"  # per-sample -> per-trajectory: sum (datamodel-consistent) | mean
    rounds: int = 3  # iterative: re-estimation rounds
    drop_percentile: float = 80.0  # iterative: drop active trajectories at/above this percentile
    readmit_percentile: float = 20.0  # iterative: re-admit dropped ones at/below this percentile


def fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def seed_scores(
    estimate: EstimateFn, factory: PolicyFactory, data: TaskData, seed: int, run_dir: Path, settings: dict
) -> np.ndarray:
    """(N_prior_steps,) scores of one proxy seed, loaded from run_dir if this exact run already made them."""
    path = run_dir / "scores" / f"seed{seed}.npz"
    key = fingerprint({**settings, "seed": seed})
    if path.is_file():
        saved = np.load(path)
        if str(saved["fingerprint"]) != key:
            raise DatamilError(
                f"{path} was made with different settings; use a new run directory or delete {path.parent}"
            )
        return saved["scores"]
    policy = build_policy(factory, data.prior)
    scores = np.asarray(
        estimate(policy, data.prior, data.target_val, rng_seed=seed, target_train_store=data.target_train),
        np.float64,
    )
    import io

    buffer = io.BytesIO()
    np.savez(buffer, scores=scores, fingerprint=np.array(key))
    atomic_write_bytes(path, buffer.getvalue())
    return scores


def estimate_scores(
    estimate: EstimateFn,
    factory: PolicyFactory,
    data: TaskData,
    seeds: list[int],
    run_dir: Path,
    settings: dict,
) -> np.ndarray:
    """Per-sample scores averaged over proxy seeds (averaging tames the seed noise of one proxy run)."""
    if data.target_val.n_episodes == 0:
        raise DatamilError("target-val is empty; hold out at least one target demo (data.n_target_val)")
    runs = [
        seed_scores(estimate, factory, data, s, run_dir, settings) for s in tqdm(seeds, desc="proxy seeds")
    ]
    return np.mean(runs, axis=0)


def choose(
    traj_scores: np.ndarray, cfg: SelectionConfig, rescore: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """Selected episode indices under the configured strategy; an empty selection is an error."""
    if cfg.method == "topk":
        chosen = top_k(traj_scores, cfg.budget)
    elif cfg.method == "threshold":
        chosen = threshold(traj_scores, cfg.cutoff)
    elif cfg.method == "iterative":
        active, last = iterative_prune(
            rescore, len(traj_scores), cfg.rounds, cfg.drop_percentile, cfg.readmit_percentile
        )
        chosen = active[top_k(last[active], cfg.budget)] if len(active) else active
    else:
        raise DatamilError(f"unknown selection method {cfg.method!r}; use topk, threshold or iterative")
    if len(chosen) == 0:
        raise DatamilError(
            f"the selection is empty (method {cfg.method}); raise the budget/cutoff, or co-train target-only "
            "with `selection=null`"
        )
    return chosen


def run_selection(
    data: TaskData,
    factory: PolicyFactory,
    estimate: EstimateFn,
    estimator_name: str,
    cfg: SelectionConfig,
    seeds: list[int],
    run_dir: Path,
    config: dict,
) -> Selection:
    """Estimate → aggregate per trajectory → select → write selection.json, scores, plots and report.md."""
    run_dir = Path(run_dir)
    settings = {"estimator": config.get("estimator"), "policy": config.get("policy"), "data": data.summary()}
    prior = data.prior
    scores = estimate_scores(estimate, factory, data, seeds, run_dir, settings)
    traj = per_trajectory(scores, prior, cfg.aggregate)

    def rescore(active: np.ndarray) -> np.ndarray:
        if len(active) == prior.n_episodes:
            return traj
        subset = TaskData(data.task, prior.subset(active), data.target_train, data.target_val)
        round_dir = run_dir / "rounds" / fingerprint({"active": active.tolist()})
        sub_scores = estimate_scores(estimate, factory, subset, seeds, round_dir, settings)
        out = np.full(prior.n_episodes, np.nan)
        out[active] = per_trajectory(sub_scores, subset.prior, cfg.aggregate)
        return out

    chosen = choose(traj, cfg, rescore)
    budget = cfg.budget if cfg.method != "threshold" else None
    selection = Selection.from_arrays(
        prior.episodes.episode_id, traj, chosen, estimator_name, budget, seeds[0], config
    )
    write_selection(run_dir / "selection.json", selection)
    _write_report(run_dir, data, selection, traj, chosen, estimator_name, seeds)
    return selection


def _write_report(
    run_dir: Path,
    data: TaskData,
    selection: Selection,
    traj: np.ndarray,
    chosen: np.ndarray,
    estimator_name: str,
    seeds: list[int],
) -> Path:
    prior = data.prior
    mask = np.zeros(prior.n_episodes, bool)
    mask[chosen] = True
    picked_success = [prior.episodes.success[i] for i in chosen]
    facts = {
        "task": data.task,
        "estimator": estimator_name,
        "proxy seeds": seeds,
        "prior": f"{prior.n_episodes} trajectories, {prior.n_steps} steps",
        "target-train / target-val": f"{data.target_train.n_episodes} / {data.target_val.n_episodes} demos",
        "selected": f"{len(chosen)} trajectories ({len(chosen) / prior.n_episodes:.0%} of the prior)",
        "selected successes": f"{sum(bool(s) for s in picked_success)} of {len(chosen)}",
        "selected from the target task": f"{sum(prior.episodes.task[i] == data.task for i in chosen)}",
        "score range": f"{traj.min():.4g} … {traj.max():.4g} (negative = lowers target-val loss)",
    }
    return write_selection_report(
        run_dir,
        f"datamil selection for {data.task}",
        facts,
        traj,
        prior.episode_lengths,
        list(prior.episodes.task),
        list(prior.episodes.success),
        mask,
    )
