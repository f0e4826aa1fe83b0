"""Train robomimic's BC / BC-RNN on a datamil co-training mixture (optional extra `robomimic`).

The adapter is deliberately thin: datamil writes the mixture in robomimic's hdf5 layout and hands
robomimic a config; robomimic trains. robomimic imports torchvision, which does not load against every
torch build (not against the CPU torch 2.13 here), so robomimic is imported only when training starts
and a failure is one line (`RobomimicUnavailable`). The export needs only h5py and is always available.

Layout written (what robomimic and `datamil.data.robomimic_hdf5` read):
`data/demo_N/{obs/<key>, actions, rewards, dones}` with `num_samples` and our `episode_id` as demo
attrs, `data.attrs["total"]` and `["env_args"]`, and `mask/<name>` arrays of demo names. `dones` is the
episode's terminal flags with the last step set for successful episodes, so success survives a round trip.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from datamil.data.store import ACTION, OBS_PREFIX, REWARD, TrajectoryStore
from datamil.errors import DatamilError
from datamil.io import temp_file

ALGOS = {"bc": False, "bc_rnn": True}  # datamil name -> robomimic "bc" with the RNN enabled?


class RobomimicUnavailable(DatamilError):
    """robomimic (or its torchvision dependency) does not import in this environment."""


def import_robomimic() -> Any:
    """The robomimic package, or RobomimicUnavailable naming the ImportError (torchvision, usually)."""
    try:
        import robomimic
        import robomimic.config  # noqa: F401
        import robomimic.scripts.train  # noqa: F401 - pulls torchvision, where it breaks
    except Exception as error:  # noqa: BLE001 - a broken torchvision raises RuntimeError, not ImportError
        cause = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise RobomimicUnavailable(
            f"robomimic's stack does not import here: {type(error).__name__}: {cause}; "
            "install `datamil[robomimic]` with a torch/torchvision pair that loads together"
        ) from None
    return robomimic


# ---------------------------------------------------------------------------- export (h5py only)
def _write_demo(data: Any, name: str, store: TrajectoryStore, index: int) -> int:
    """One store episode as data/<name>; returns its number of steps."""
    lo, hi = int(store.offsets[index]), int(store.offsets[index + 1])
    demo = data.create_group(name)
    for array_name, values in store.arrays.items():
        if array_name.startswith(OBS_PREFIX):
            demo.create_dataset(f"obs/{array_name[len(OBS_PREFIX) :]}", data=values[lo:hi])
    demo.create_dataset("actions", data=store.arrays[ACTION][lo:hi])
    demo.create_dataset("rewards", data=store.arrays[REWARD][lo:hi])
    dones = np.asarray(store.arrays["is_terminal"][lo:hi], np.int64)
    dones[-1] |= int(bool(store.episodes.success[index]))
    demo.create_dataset("dones", data=dones)
    demo.attrs["num_samples"] = hi - lo
    demo.attrs["episode_id"] = store.episodes.episode_id[index]
    return hi - lo


def store_to_robomimic(
    store: TrajectoryStore,
    path: str | Path,
    episode_indices: Sequence[int] | None = None,
    masks: Mapping[str, Sequence[int]] | None = None,
    env_name: str = "",
) -> Path:
    """Write episodes of `store` (all by default, in order) as demo_0, demo_1, ... into `path`, atomically.

    masks: filter key -> store episode indices (each must be among the written ones), e.g.
    {"target": [...], "prior": [...]}; "train" (all written demos) is added unless given.
    env_name: recorded in env_args (default: the first episode's task).
    """
    import h5py

    indices = list(range(store.n_episodes)) if episode_indices is None else [int(i) for i in episode_indices]
    if not indices:
        raise DatamilError("no episodes to export; select at least one episode")
    names = {index: f"demo_{n}" for n, index in enumerate(indices)}
    masks = {"train": indices, **(masks or {})}
    unknown = {key: [i for i in idx if i not in names] for key, idx in masks.items()}
    bad = {key: idx for key, idx in unknown.items() if idx}
    if bad:
        key = next(iter(bad))
        raise DatamilError(
            f"mask {key!r} names episodes {bad[key][:5]} that are not exported; export them too"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file(path)  # default permissions, unlike mkstemp's 0600
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            data = f.create_group("data")
            data.attrs["total"] = sum(_write_demo(data, names[i], store, i) for i in indices)
            task = env_name or store.episodes.task[indices[0]]
            data.attrs["env_args"] = json.dumps({"env_name": task, "type": 0, "env_kwargs": {}})
            for key, idx in masks.items():
                f.create_dataset(f"mask/{key}", data=np.array([names[i].encode() for i in idx], dtype="S"))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@dataclass(frozen=True)
class RobomimicData:
    """A mixture exported for robomimic: one file per pool and the pools' sampling weights."""

    paths: tuple[Path, ...]  # target first, then the selected prior (absent for target-only)
    weights: tuple[float, ...]  # normalized target:prior share of each batch


def mixture_to_robomimic(mixture: Any, out_dir: str | Path) -> RobomimicData:
    """`datamil.training.cotraining.Mixture` -> target.hdf5 (+ prior.hdf5) with the mixture's target:prior weights.

    One file per pool, because robomimic weights datasets, not demos, in multi-dataset training.
    """
    out_dir = Path(out_dir)
    n_target, n_total = mixture.n_target_episodes, mixture.store.n_episodes
    pools = [("target", range(n_target)), ("prior", range(n_target, n_total))]
    paths = tuple(
        store_to_robomimic(mixture.store, out_dir / f"{name}.hdf5", list(idx))
        for name, idx in pools
        if len(idx)
    )
    return RobomimicData(paths, tuple(float(w) for w in mixture.sampler.ratios[: len(paths)]))


# ---------------------------------------------------------------------------- training (needs robomimic)
def robomimic_config(
    data: RobomimicData, algo: str, obs_keys: Sequence[str], out_dir: Path, epochs: int, seed: int
) -> Any:
    """robomimic's own BC config, pointed at the exported files; observation keys by modality."""
    if algo not in ALGOS:
        raise DatamilError(f"unknown robomimic algo {algo!r}; valid: {sorted(ALGOS)}")
    from robomimic.config import config_factory

    config = config_factory("bc")
    with config.values_unlocked():
        weighted = len(data.paths) > 1
        config.train.data = (
            [{"path": str(p), "weight": w} for p, w in zip(data.paths, data.weights, strict=True)]
            if weighted
            else str(data.paths[0])
        )
        config.train.output_dir = str(out_dir)
        config.train.num_epochs, config.train.seed = int(epochs), int(seed)
        config.algo.rnn.enabled = ALGOS[algo]
        config.observation.modalities.obs.low_dim = [k for k in obs_keys if not k.startswith("image")]
        config.observation.modalities.obs.rgb = [k for k in obs_keys if k.startswith("image")]
        config.experiment.validate = False
        config.experiment.rollout.enabled = False  # datamil.evaluate does the rollouts
        config.experiment.logging.log_wandb = False
    return config


def train_robomimic(
    mixture: Any, out_dir: str | Path, algo: str = "bc", epochs: int = 50, seed: int = 0
) -> Path:
    """Export the mixture and train robomimic's `algo` on it; returns robomimic's output directory.

    Multi-dataset weighting (target:prior) needs a robomimic whose `train.data` takes a list of
    {path, weight} (0.4+); older versions reject the list in their own config check.
    """
    import_robomimic()
    import torch
    from robomimic.scripts.train import train

    out_dir = Path(out_dir)
    data = mixture_to_robomimic(mixture, out_dir / "data")
    obs_keys = mixture.store.obs_keys
    config = robomimic_config(data, algo, obs_keys, out_dir / "robomimic", epochs, seed)
    config.lock()
    train(config, device=torch.device("cpu"))
    return out_dir / "robomimic"
