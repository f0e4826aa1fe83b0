"""The truths of an LDS measurement (`datamil.datamodels.lds`), split across jobs and gathered.

The expensive part of an LDS is the truth: a proxy trained on each of the M held-out subsets, for each of
k truth seeds. That work is k x ceil(M / chunk) units, one (truth seed, vmapped chunk of subsets) each.
Shard s of S trains a contiguous run of whole units and writes `shard_dir/shard-s-of-S.npz` atomically
(`run_lds_shard`); `gather_lds_truths` checks that all S shards are there and were made with its settings,
and returns the (k, M) truths. The subsets are the global masks of `linear_datamodeling_score` and each
shard trains whole chunks of them with the seed of their unit, so the gathered truths equal, bit for bit,
those one process trains (`true_surrogates` for each truth seed on all M masks).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from datamil.data.store import TrajectoryStore
from datamil.datamodels.lds import (
    LdsRow,
    NoiseCeiling,
    noise_ceiling,
    predicted_surrogates,
    spearman_interval,
    true_surrogates,
)
from datamil.datamodels.proxy import ProxyConfig, random_masks
from datamil.datamodels.shards import (
    chunk_indices,
    fingerprint,
    load_shards,
    read_shard,
    run_settings,
    settings_json,
    shard_path,
    shard_share,
)
from datamil.errors import DatamilError
from datamil.io import atomic_write_npz
from datamil.policies.base import Policy


@dataclass(frozen=True)
class LdsSpec:
    """Everything that decides the truths: the M subsets and how each truth proxy trains."""

    seed: int = 0  # the estimator's proxy seed; with subset_seed, the seed of the subset masks
    proxy: ProxyConfig = field(default_factory=ProxyConfig)  # how each subset's proxy trains
    n_models: int = 50  # M held-out subsets
    alpha: float = 0.5  # fraction of prior trajectories in each subset
    mode: str = "resample"  # resample | reweight (see `true_surrogates`)
    subset_seed: int = 10_001  # with seed, the seed of the masks (as `linear_datamodeling_score`)
    truth_seeds: tuple[int, ...] | None = None  # training seeds of the truth; None = (seed,)
    chunk: int = 25  # subsets trained together in one vmapped ensemble
    include_target_train: bool = False  # every subset proxy also trains on target-train

    @property
    def seeds(self) -> tuple[int, ...]:
        """The k truth seeds: (seed,) by default, the seed `linear_datamodeling_score` trains its truth with."""
        seeds = (self.seed,) if self.truth_seeds is None else tuple(int(s) for s in self.truth_seeds)
        if not seeds or len(set(seeds)) != len(seeds):
            raise DatamilError(
                f"truth_seeds={list(seeds)} must be distinct and at least one; e.g. [1, 2, 3, 4]"
            )
        return seeds

    def masks(self, n_episodes: int) -> np.ndarray:
        """(M, E) bool: the masks of `linear_datamodeling_score`, a pure function of (seeds, M, alpha, E)."""
        if self.n_models < 3:
            raise DatamilError(
                f"LDS needs at least 3 subsets (got n_models={self.n_models}); use >= 50 for a stable number"
            )
        rng = np.random.default_rng([self.subset_seed, self.seed])
        return random_masks(n_episodes, self.n_models, self.alpha, rng)

    def units(self) -> list[tuple[int, np.ndarray]]:
        """(truth seed index, subset indices of one vmapped chunk) of the whole measurement, seed-major."""
        if self.chunk < 1:
            raise DatamilError(f"chunk={self.chunk} must be at least 1")
        chunks = chunk_indices(self.n_models, self.chunk)
        return [(j, models) for j in range(len(self.seeds)) for models in chunks]

    def shard_units(self, shard: int, n_shards: int) -> list[tuple[int, np.ndarray]]:
        """The units of shard s of S: a contiguous run of whole units (so results match one process)."""
        units = self.units()
        too_many = (
            f"n_shards={n_shards} is more than the {len(units)} units (truth seed x vmapped chunk) of "
            f"{len(self.seeds)} truth seeds, n_models={self.n_models}, chunk={self.chunk}; lower n_shards "
            "or lds.chunk, since each shard trains whole chunks"
        )
        return [units[u] for u in shard_share(shard, n_shards, len(units), too_many)]


def shard_settings(
    policy: Policy,
    train_store: TrajectoryStore,
    target_val_store: TrajectoryStore,
    target_train_store: TrajectoryStore | None,
    spec: LdsSpec,
    settings: dict | None = None,
) -> dict:
    """What every shard of one measurement must share: the spec, the policy, the data and the caller's
    `settings` (e.g. the resolved policy config)."""
    return run_settings(asdict(spec), policy, train_store, target_val_store, target_train_store, settings)


def _entries(units: list[tuple[int, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """(truth seed index, subset index) of every truth value the units train, in unit order."""
    seed_of = np.concatenate([np.full(len(models), j) for j, models in units])
    return seed_of.astype(np.int64), np.concatenate([models for _, models in units]).astype(np.int64)


def run_lds_shard(
    policy: Policy,
    train_store: TrajectoryStore,
    target_val_store: TrajectoryStore,
    spec: LdsSpec,
    shard: int,
    n_shards: int,
    shard_dir: str | Path,
    target_train_store: TrajectoryStore | None = None,
    settings: dict | None = None,
) -> Path:
    """Train shard s of S's truth proxies; write which (truth seed, subset) each value is, the subsets, the
    values and the measurement's fingerprint to `shard_dir/shard-s-of-S.npz`, atomically. A shard file of
    this exact measurement that is already there is kept as it is, so a failed sweep is run again as is."""
    units = spec.shard_units(shard, n_shards)
    meta = shard_settings(policy, train_store, target_val_store, target_train_store, spec, settings)
    masks = spec.masks(train_store.n_episodes)
    seed_of, models = _entries(units)
    path = shard_path(shard_dir, shard, n_shards)
    done = read_shard(path, SHARD_KEYS) if path.is_file() else None
    if done is not None and str(done["fingerprint"]) == fingerprint(meta):
        if np.array_equal(done["seed_of"], seed_of) and np.array_equal(done["models"], models):
            return path
    values, start = [], time.perf_counter()
    for j in np.unique(seed_of):  # a seed's units are consecutive whole chunks: one ensemble call each
        mine = models[seed_of == j]
        values.append(
            true_surrogates(
                policy,
                train_store,
                target_val_store,
                masks[mine],
                spec.proxy,
                spec.seeds[j],
                spec.mode,
                spec.chunk,
                target_train_store,
                spec.include_target_train,
            )
        )
    return atomic_write_npz(
        path,
        fingerprint=np.array(fingerprint(meta)),
        seed_of=seed_of,
        models=models,
        masks=masks[models],
        values=np.concatenate(values),
        train_s=np.array(time.perf_counter() - start),
        settings=np.array(settings_json(meta)),
    )


SHARD_KEYS = ("fingerprint", "seed_of", "models", "masks", "values", "train_s", "settings")


@dataclass
class LdsTruths:
    """The gathered measurement: (M, E) masks, (k, M) truths (row j trained with seeds[j]), train seconds."""

    masks: np.ndarray
    truths: np.ndarray
    seeds: tuple[int, ...]
    train_s: float


def gather_lds_truths(
    policy: Policy,
    train_store: TrajectoryStore,
    target_val_store: TrajectoryStore,
    spec: LdsSpec,
    n_shards: int,
    shard_dir: str | Path,
    target_train_store: TrajectoryStore | None = None,
    settings: dict | None = None,
) -> LdsTruths:
    """The (k, M) truths one process trains, from the S shard files of this exact measurement (checked
    complete and consistent); trains nothing."""
    meta = shard_settings(policy, train_store, target_val_store, target_train_store, spec, settings)
    shards = load_shards(
        shard_dir,
        n_shards,
        fingerprint(meta),
        SHARD_KEYS,
        what="the LDS truths",
        settings="data, policy, subsets, proxy or truth seeds",
    )
    masks = spec.masks(train_store.n_episodes)
    truths = np.full((len(spec.seeds), spec.n_models), np.nan)
    for s, shard in enumerate(shards):
        seed_of, models = _entries(spec.shard_units(s, n_shards))
        same = np.array_equal(shard["seed_of"], seed_of) and np.array_equal(shard["models"], models)
        if not (same and np.array_equal(shard["masks"], masks[models])):
            raise DatamilError(
                f"{shard_path(shard_dir, s, n_shards)} does not hold shard {s}'s truth seeds and subsets; "
                "delete it and train that shard again"
            )
        truths[seed_of, models] = shard["values"]
    return LdsTruths(masks, truths, spec.seeds, float(sum(float(s["train_s"]) for s in shards)))


def lds_rows(
    scores: dict[str, np.ndarray],
    train_store: TrajectoryStore,
    measured: LdsTruths,
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[list[LdsRow], NoiseCeiling | None]:
    """Each estimator's LDS against the mean of the k truths (with one truth seed, exactly the rows of
    `linear_datamodeling_score`), and the truths' noise ceiling when k >= 2."""
    truth = measured.truths.mean(0)
    rows = []
    for name, s in scores.items():
        predicted = predicted_surrogates(s, train_store, measured.masks)
        rows.append(LdsRow(name, *spearman_interval(predicted, truth, n_boot, seed)))
    ceiling = noise_ceiling(measured.truths) if len(measured.seeds) >= 2 else None
    return rows, ceiling
