"""The selection stage: estimate datamodel scores on the surrogate, aggregate, select, write the run.

Resumable: each proxy seed's per-sample scores are saved in the run directory with a fingerprint of
the settings that produced them; a re-run (after a kill, or to add seeds) reuses the finished seeds and
refuses to mix scores made with different settings. The same files let the proxy seeds fan out over
launcher jobs (`score_seeds`, one job per seed) and be gathered into one selection (`check_seed_files`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from datamil.data.sources import TaskData
from datamil.data.store import TrajectoryStore
from datamil.device import resolve_device
from datamil.errors import DataError, DatamilError
from datamil.io import atomic_write_npz
from datamil.policies.base import OBS_STATE_KEY
from datamil.policies.build import PolicyFactory, build_policy, reads_state
from datamil.report import success_count, write_selection_report
from datamil.selection import Selection, per_trajectory, write_selection
from datamil.selection.methods import DATAMODEL_METHODS, SELECTION_METHODS, SelectionConfig, SelectionRequest
from datamil.training.cotraining import state_mismatch

# (policy, prior store, target-val store, rng_seed=..., target_train_store=...) -> (N_prior_steps,) scores
EstimateFn = Callable[..., np.ndarray]
CROSS_FIT_DIR = "cross_fit"  # where a run's scores with target-train and target-val swapped live
CONSTANT_SPREAD = 1e-6  # a state dimension whose max - min is at most this is constant (the normalizer's eps)
logger = logging.getLogger(__name__)


def fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def seed_scores(
    estimate: EstimateFn,
    factory: PolicyFactory,
    data: TaskData,
    seed: int,
    run_dir: Path,
    settings: dict,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """(N_prior_steps,) scores of one proxy seed, loaded from run_dir if this exact run already made them.

    The proxy policy is built on the CPU and moved to `device`; estimators run where the policy is."""
    path = score_path(run_dir, seed)
    key = fingerprint({**settings, "seed": seed})
    if path.is_file():
        saved = np.load(path)
        if str(saved["fingerprint"]) != key:
            raise DatamilError(
                f"{path} was made with different settings; use a new run directory or delete {path.parent}"
            )
        return saved["scores"]
    policy = build_policy(factory, data.prior).to(resolve_device(device))
    # image policies: every dataset has the cameras, at a usable size
    policy.check_data({"prior": data.prior, "target_train": data.target_train, "target_val": data.target_val})
    scores = np.asarray(
        estimate(policy, data.prior, data.target_val, rng_seed=seed, target_train_store=data.target_train),
        np.float64,
    )
    atomic_write_npz(path, scores=check_scores(scores), fingerprint=np.array(key))
    return scores


def score_path(run_dir: Path, seed: int) -> Path:
    return Path(run_dir) / "scores" / f"seed{seed}.npz"


def score_settings(config: dict, data: TaskData) -> dict:
    """What a score file's fingerprint covers (with its seed): the estimator, the proxy policy, the data."""
    return {"estimator": config.get("estimator"), "policy": config.get("policy"), "data": data.summary()}


def score_seeds(
    data: TaskData,
    factory: PolicyFactory,
    estimate: EstimateFn,
    seeds: list[int],
    run_dir: Path,
    config: dict,
    device: str | torch.device = "cpu",
    cross_fit: bool = False,
) -> list[Path]:
    """One fan-out job (`score_only=true`): write these seeds' score files in run_dir (and, with cross_fit,
    in run_dir/cross_fit), select nothing."""
    if data.target_val.n_episodes == 0:
        raise DatamilError("target-val is empty; hold out at least one target demo (data.n_target_val)")
    check_states(data, factory)
    settings = score_settings(config, data)
    paths = []
    for split, where in score_splits(data, Path(run_dir), cross_fit):
        for seed in seeds:
            seed_scores(estimate, factory, split, seed, where, settings, device)
            paths.append(score_path(where, seed))
    return paths


def score_splits(data: TaskData, run_dir: Path, cross_fit: bool) -> list[tuple[TaskData, Path]]:
    """The (data, directory) pairs a selection's proxies are scored on: the data as given in run_dir, and
    with cross_fit also target-train and target-val swapped in run_dir/cross_fit."""
    if not cross_fit:
        return [(data, Path(run_dir))]
    if data.target_train.n_episodes == 0:
        raise DatamilError("cross_fit needs target-train demos to score against; set cross_fit=false")
    swapped = dataclasses.replace(data, target_train=data.target_val, target_val=data.target_train)
    return list(zip((data, swapped), score_dirs(run_dir, cross_fit), strict=True))


def score_dirs(run_dir: Path, cross_fit: bool) -> list[Path]:
    """Where a selection's score files live: run_dir, and with cross_fit also run_dir/cross_fit."""
    return [Path(run_dir), Path(run_dir) / CROSS_FIT_DIR] if cross_fit else [Path(run_dir)]


def check_seed_files(run_dir: Path, seeds: list[int], settings: dict, cross_fit: bool = False) -> None:
    """Refuse, on one line, a gather whose score files are missing, unreadable or made with other settings
    (with cross_fit, those of both splits)."""
    missing, foreign, unreadable = [], [], []
    for where, seed in ((where, seed) for where in score_dirs(run_dir, cross_fit) for seed in seeds):
        path = score_path(where, seed)
        if not path.is_file():
            missing.append(seed)
            continue
        try:
            key = str(np.load(path)["fingerprint"])
        except Exception:  # a truncated or foreign file: zip, pickle and key errors alike
            unreadable.append(seed)
            continue
        if key != fingerprint({**settings, "seed": seed}):
            foreign.append(seed)
    problems = [
        f"seeds {_listed(missing)} have no score file (run them with score_only=true)" if missing else "",
        f"seeds {_listed(foreign)} were scored with other settings" if foreign else "",
        f"seeds {_listed(unreadable)} cannot be read; delete those files and rerun them"
        if unreadable
        else "",
    ]
    if any(problems):
        found = "; ".join(p for p in problems if p)
        raise DatamilError(f"cannot gather {len(seeds)} proxy seeds from {Path(run_dir) / 'scores'}: {found}")


def _listed(seeds: list[int]) -> str:
    return ", ".join(str(s) for s in dict.fromkeys(seeds))  # a seed missing from both splits is named once


def check_scores(scores: np.ndarray) -> np.ndarray:
    """Refuse scores no selection can come from, before they are saved for re-runs to reuse."""
    if np.all((scores == 0) | ~np.isfinite(scores)):
        raise DatamilError(
            "every datamodel score is 0 or not finite: the estimator could not tell the prior trajectories "
            "apart; likely a state dimension constant in the prior but varying in the target (see the "
            "warning above; use data.mapping or policy=bc_image_only), or a proxy run too short to draw "
            "the prior's samples (raise estimator.proxy.optim.total_steps)"
        )
    if not np.all(np.isfinite(scores)):
        raise DatamilError(
            f"{int(np.sum(~np.isfinite(scores)))} of {len(scores)} scores are NaN/inf; re-run the "
            "estimator (see its smoothness settings)"
        )
    return scores


def check_states(data: TaskData, factory: PolicyFactory) -> None:
    """Before any proxy trains, for a policy that reads the state: states of different sizes fail on one
    line, and dimensions constant in the prior but varying in a target are named in a warning (the
    prior's statistics cannot normalize them, which typically leaves every score 0)."""
    if not reads_state(factory):
        return
    targets = {"target-train": data.target_train, "target-val": data.target_val}
    for name, store in targets.items():
        mismatch = state_mismatch(data.prior, store, name)
        if mismatch:
            raise DataError(mismatch)
    for name, dims in constant_in_prior(data.prior, targets).items():
        logger.warning(
            "state dimensions %s are constant in the prior but vary in %s; the proxy cannot learn from "
            "them and the scores may all be 0: leave them out of the state (data.mapping={state_keys: [...]})",
            dims,
            name,
        )


def constant_in_prior(prior: TrajectoryStore, targets: dict[str, TrajectoryStore]) -> dict[str, list[int]]:
    """target name -> the state dimensions that are constant in the prior but vary in that target."""
    if OBS_STATE_KEY not in prior.arrays or prior.n_steps == 0:
        return {}
    constant = _spread(prior) <= CONSTANT_SPREAD
    found = {}
    for name, store in targets.items():
        if OBS_STATE_KEY in store.arrays and store.n_steps:
            dims = np.flatnonzero(constant & (_spread(store) > CONSTANT_SPREAD)).tolist()
            found.update({name: dims} if dims else {})
    return found


def _spread(store: TrajectoryStore) -> np.ndarray:
    """(D,) max - min of each state dimension over all steps."""
    return np.ptp(store.arrays[OBS_STATE_KEY], axis=0).astype(np.float64)  # no copy of a memory-mapped prior


def estimate_scores(
    estimate: EstimateFn,
    factory: PolicyFactory,
    data: TaskData,
    seeds: list[int],
    run_dir: Path,
    settings: dict,
    device: str | torch.device = "cpu",
    cross_fit: bool = False,
) -> np.ndarray:
    """Per-sample scores averaged over proxy seeds (averaging tames the seed noise of one proxy run).

    cross_fit: also score with the target demos' roles swapped (the surrogate on target-train, the proxy
    trained beside target-val) and average both, so the surrogate reads every target demo and no single
    10-demo split decides the ranking. The swapped runs live in run_dir/cross_fit.
    """
    if data.target_val.n_episodes == 0:
        raise DatamilError("target-val is empty; hold out at least one target demo (data.n_target_val)")
    jobs = [(split, where, s) for split, where in score_splits(data, Path(run_dir), cross_fit) for s in seeds]
    runs = [
        seed_scores(estimate, factory, split, s, where, settings, device)
        for split, where, s in tqdm(jobs, desc="proxy runs")
    ]
    return np.mean(runs, axis=0)


def datamodel_scorer(
    estimate: EstimateFn,
    factory: PolicyFactory,
    data: TaskData,
    cfg: SelectionConfig,
    seeds: list[int],
    run_dir: Path,
    settings: dict,
    device: str | torch.device = "cpu",
) -> Callable[[np.ndarray | None], np.ndarray]:
    """active prior episodes (None = all) -> (E,) trajectory scores of a proxy trained on them (NaN elsewhere)."""

    def scores(active: np.ndarray | None) -> np.ndarray:
        if active is None:
            per_step = estimate_scores(
                estimate, factory, data, seeds, run_dir, settings, device, cfg.cross_fit
            )
            return per_trajectory(per_step, data.prior, cfg.aggregate)
        subset = TaskData(data.task, data.prior.subset(active), data.target_train, data.target_val)
        round_dir = run_dir / "rounds" / fingerprint({"active": np.asarray(active).tolist()})
        per_step = estimate_scores(
            estimate, factory, subset, seeds, round_dir, settings, device, cfg.cross_fit
        )
        out = np.full(data.prior.n_episodes, np.nan)
        out[active] = per_trajectory(per_step, subset.prior, cfg.aggregate)
        return out

    return scores


def run_selection(
    data: TaskData,
    factory: PolicyFactory,
    estimate: EstimateFn,
    estimator_name: str,
    cfg: SelectionConfig,
    seeds: list[int],
    run_dir: Path,
    config: dict,
    device: str | torch.device = "cpu",
) -> Selection:
    """Score → select (by `cfg.method`) → write selection.json, plots and report.md into run_dir.

    Datamodel methods record the estimator's name as the selection's method; baselines their own.
    device: where the proxies train and the estimators run (`datamil.device.resolve_device` names).
    """
    run_dir = Path(run_dir)
    method = SELECTION_METHODS.get(cfg.method)
    if cfg.method in DATAMODEL_METHODS:
        check_states(data, factory)
    settings = score_settings(config, data)
    scorer = datamodel_scorer(estimate, factory, data, cfg, seeds, run_dir, settings, device)
    traj, chosen = method(SelectionRequest(data, cfg, seeds[0], scorer))
    if len(chosen) == 0 and cfg.method != "target_only":
        raise DatamilError(
            f"the selection is empty (method {cfg.method}); raise the budget or cutoff, or co-train "
            "target-only with `selection=null`"
        )
    label = estimator_name if cfg.method in DATAMODEL_METHODS else cfg.method
    budget = None if cfg.method == "threshold" else cfg.budget
    ids = data.prior.episodes.episode_id
    selection = Selection.from_arrays(ids, traj, chosen, label, budget, seeds[0], config)
    write_selection(run_dir / "selection.json", selection)
    _write_report(run_dir, data, traj, chosen, label, seeds)
    return selection


def _write_report(
    run_dir: Path,
    data: TaskData,
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
        "method": estimator_name,
        "proxy seeds": seeds,
        "prior": f"{prior.n_episodes} trajectories, {prior.n_steps} steps",
        "target-train / target-val": f"{data.target_train.n_episodes} / {data.target_val.n_episodes} demos",
        "selected": f"{len(chosen)} trajectories ({len(chosen) / prior.n_episodes:.0%} of the prior)",
        "selected successes": success_count(picked_success),
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
        sources=(list(prior.episodes.dataset), data.robots) if data.robots else None,
    )
