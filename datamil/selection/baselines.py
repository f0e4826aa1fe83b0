"""Selection baselines, registered next to DataMIL's datamodel methods (`method=random`, ...).

Each returns per-trajectory scores (lower = preferred) and the `budget` fraction of prior trajectories
with the lowest scores, so every baseline writes the same selection file under the same budget as DataMIL.
Method-specific settings come from `SelectionConfig.options`; an unknown option fails loudly, so a typo
in a sweep cannot silently run the defaults. Every retrieval baseline queries with the same demos as
DataMIL reads (`query_demos`: target-train and target-val), so no method knows more about the target.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np

from datamil.data.sources import TaskData
from datamil.data.store import TrajectoryStore
from datamil.errors import DatamilError
from datamil.selection.aggregate import per_trajectory
from datamil.selection.methods import SELECTION_METHODS, MethodResult, SelectionRequest
from datamil.selection.retrieval import (
    Featurizer,
    VAEConfig,
    cosine_similarity_to_set,
    dtw_costs,
    embed,
    knn_distance,
    ksg_contributions,
    spread_steps,
    sub_trajectories,
    train_vae,
)
from datamil.selection.strategies import top_k


def options_of(request: SelectionRequest, defaults: dict[str, Any]) -> dict[str, Any]:
    """`defaults` updated with `cfg.options`; keys the method does not know are an error."""
    given = dict(request.cfg.options or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise DatamilError(
            f"selection method {request.cfg.method!r} has no option(s) {unknown}; "
            f"its options are {sorted(defaults)}"
        )
    return {**defaults, **given}


def query_demos(data: TaskData) -> TrajectoryStore:
    """The target demos a retrieval baseline queries with: target-train and target-val together.

    DataMIL reads both (it co-trains on target-train and its surrogate is the loss on target-val), so a
    baseline that saw target-train alone would be compared with less knowledge of the target. The demos
    are only queries here; no baseline trains on them.
    """
    return TrajectoryStore.concat([data.target_train, data.target_val])


def ranked(scores: np.ndarray, request: SelectionRequest) -> MethodResult:
    """The common ending: keep the budget's lowest-scoring trajectories."""
    scores = np.asarray(scores, np.float64)
    return scores, top_k(scores, request.cfg.budget)


@SELECTION_METHODS.register("random")
def select_random(request: SelectionRequest) -> MethodResult:
    """Uniform over prior trajectories; a function of the seed only."""
    rng = np.random.default_rng([int(request.seed), 0x5E1EC7])
    return ranked(rng.random(request.data.prior.n_episodes), request)


@SELECTION_METHODS.register("all_prior")
def select_all_prior(request: SelectionRequest) -> MethodResult:
    """Every prior trajectory (the budget does not apply): the "more data is better" reference."""
    n = request.data.prior.n_episodes
    return np.zeros(n), np.arange(n)


@SELECTION_METHODS.register("target_only")
def select_target_only(request: SelectionRequest) -> MethodResult:
    """Nothing from the prior: co-training then trains on the target demos alone."""
    return np.zeros(request.data.prior.n_episodes), np.zeros(0, np.int64)


# ------------------------------------------------------------------------------------ k-NN similarity
KNN_DEFAULTS = {"k": 5, "state_dims": None}


def knn_similarity(request: SelectionRequest, kind: str) -> MethodResult:
    """Mean over a trajectory's steps of the distance from each (standardized) prior step to its k nearest
    target steps: trajectories that stay close to the target demos score low."""
    opts = options_of(request, KNN_DEFAULTS)
    data, query = request.data, query_demos(request.data)
    featurize = Featurizer.fit([data.prior, query], kind, opts["state_dims"])
    distance = knn_distance(featurize(data.prior), featurize(query), opts["k"])
    return ranked(per_trajectory(distance, data.prior, "mean"), request)


@SELECTION_METHODS.register("state_similarity")
def select_state_similarity(request: SelectionRequest) -> MethodResult:
    return knn_similarity(request, "state")


@SELECTION_METHODS.register("action_similarity")
def select_action_similarity(request: SelectionRequest) -> MethodResult:
    return knn_similarity(request, "action")


@SELECTION_METHODS.register("state_action_similarity")
def select_state_action_similarity(request: SelectionRequest) -> MethodResult:
    return knn_similarity(request, "state_action")


# ------------------------------------------------------------------------------------ Behavior Retrieval
BR_DEFAULTS = {**asdict(VAEConfig()), "reduce": "max"}


@SELECTION_METHODS.register("behavior_retrieval")
def select_behavior_retrieval(request: SelectionRequest) -> MethodResult:
    """Behavior Retrieval (Du et al. 2023): a VAE on the prior's (state, action) pairs; each prior pair is
    scored by the cosine similarity of its embedding to the target demos' embeddings (max over them), and a
    trajectory by the mean over its steps (negated, so that lower = more similar = preferred)."""
    opts = options_of(request, BR_DEFAULTS)
    reduce = opts.pop("reduce")
    data, query = request.data, query_demos(request.data)
    featurize = Featurizer.fit([data.prior, query], "state_action")
    prior_x = featurize(data.prior)
    vae = train_vae(prior_x, VAEConfig(**opts), request.seed)
    similarity = cosine_similarity_to_set(embed(vae, prior_x), embed(vae, featurize(query)), reduce)
    return ranked(-per_trajectory(similarity, data.prior, "mean"), request)


# ------------------------------------------------------------------------------------ STRAP
STRAP_DEFAULTS = {"segment_length": 20, "stride": 20, "state_dims": None, "max_cells": 4_000_000}


def strap_scores(costs: np.ndarray) -> np.ndarray:
    """(E,) trajectory scores from (Q, E) sub-trajectory match costs.

    Each query retrieves its own lowest-cost matches (as STRAP does per sub-trajectory), so a trajectory
    is as good as its best rank over the queries; ties between equal ranks go to the lower mean cost
    (scaled into [0, 1) so it never overrides a rank).
    """
    ranks = np.argsort(np.argsort(costs, axis=1, kind="stable"), axis=1, kind="stable")
    mean_cost = costs.mean(0)
    tie = (mean_cost - mean_cost.min()) / (np.ptp(mean_cost) + 1e-12) * 0.999
    return ranks.min(0) + tie


@SELECTION_METHODS.register("strap")
def select_strap(request: SelectionRequest) -> MethodResult:
    """STRAP (Memmel et al. 2024): the target demos are cut into sub-trajectories, each is matched to every
    prior trajectory by subsequence DTW on standardized states, and the lowest-cost matches are retrieved.
    The selection unit is the whole prior trajectory that holds a match (the common selection file)."""
    opts = options_of(request, STRAP_DEFAULTS)
    data, query = request.data, query_demos(request.data)
    length, stride = int(opts["segment_length"]), int(opts["stride"])
    if length < 1 or stride < 1:
        raise DatamilError(f"strap needs segment_length >= 1 and stride >= 1, got {length} and {stride}")
    featurize = Featurizer.fit([data.prior, query], "state", opts["state_dims"])
    queries = sub_trajectories(featurize(query), query.offsets, length, stride)
    costs = dtw_costs(queries, featurize(data.prior), data.prior.offsets, int(opts["max_cells"])) / length
    return ranked(strap_scores(costs), request)


# ------------------------------------------------------------------------------------ DemInf
DEMINF_DEFAULTS = {
    **asdict(VAEConfig(latent_dim=8, steps=1000)),
    "embedding": "vae",
    "k": 5,
    "steps_per_trajectory": 16,
}
DEMINF_EMBEDDINGS = ("vae", "standardized")


def deminf_embedding(x: np.ndarray, opts: dict[str, Any], seed: int) -> np.ndarray:
    """(n, d) the space the KSG estimator measures distances in: the posterior means of a small VAE fitted
    on the rows (as DemInf does: k-NN estimates degrade with dimension), or the standardized rows."""
    if opts["embedding"] == "standardized":
        return x
    vae_opts = {k: opts[k] for k in asdict(VAEConfig())}
    cfg = VAEConfig(**{**vae_opts, "latent_dim": min(int(opts["latent_dim"]), x.shape[1])})
    return embed(train_vae(x, cfg, seed), x)


@SELECTION_METHODS.register("deminf")
def select_deminf(request: SelectionRequest) -> MethodResult:
    """DemInf (Hejna et al. 2025): a demo is as good as its samples' average contribution to the mutual
    information between states and actions over the whole prior, estimated by KSG on state and action
    embeddings; consistent, predictable demos add information, noisy or random actions remove it.
    Target-agnostic: it ranks quality only. Scores are the negated mean contributions (lower = preferred);
    `steps_per_trajectory` evenly spaced steps per trajectory keep the k-NN search cheap on a large prior."""
    opts = options_of(request, DEMINF_DEFAULTS)
    if opts["embedding"] not in DEMINF_EMBEDDINGS:
        raise DatamilError(
            f"deminf embedding {opts['embedding']!r} is unknown; use {' or '.join(DEMINF_EMBEDDINGS)}"
        )
    prior = request.data.prior
    steps = spread_steps(prior.offsets, opts["steps_per_trajectory"])
    spaces = []
    for kind in ("state", "action"):
        x = Featurizer.fit([prior], kind)(prior)[steps]
        spaces.append(deminf_embedding(x, opts, request.seed))
    contribution = ksg_contributions(*spaces, int(opts["k"]))
    episode = prior.episode_of_step[steps]
    mean = np.bincount(episode, contribution, prior.n_episodes) / np.bincount(
        episode, minlength=prior.n_episodes
    )
    return ranked(-mean, request)


# ------------------------------------------------------------------------------------ privileged reference
@SELECTION_METHODS.register("same_task_success")
def select_same_task_success(request: SelectionRequest) -> MethodResult:
    """A privileged reference, not a baseline: the prior's own successful trajectories of the target task,
    read from the episode labels (task and success) that a benchmark's generated prior has and a real
    prior rarely does. It shows what a selection with knowledge no method has reaches, so a bar "over the
    best baseline" can be read against more than the baselines themselves (it is not a ceiling: on some
    tasks other tasks' data do better). The budget
    does not apply; scores rank same-task successes, then same-task failures, then everything else."""
    options_of(request, {})
    data = request.data
    episodes = data.prior.episodes
    same_task = np.array([task == data.task for task in episodes.task])
    if any(success is None for success, same in zip(episodes.success, same_task, strict=True) if same):
        raise DatamilError(
            f"same_task_success needs success labels on the prior's {data.task!r} episodes, and some "
            "have none; use a prior generated by datamil's sim tasks, or another method"
        )
    success = np.array([bool(s) for s in episodes.success])
    scores = np.where(same_task, np.where(success, 0.0, 1.0), 2.0)
    selected = np.flatnonzero(same_task & success)
    if not len(selected):
        raise DatamilError(
            f"same_task_success found no successful {data.task!r} trajectory in the prior "
            f"({int(same_task.sum())} of that task); it needs the target task in the prior"
        )
    return scores, selected
