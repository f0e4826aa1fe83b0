"""Data sources: where a run's prior and target demos come from, as trajectory stores.

A source is a config plus a class registered by name (`data=metaworld`, `data=rlds`, `data=robomimic`).
`load(task)` returns the three stores every stage needs. Generated or converted data is cached on disk,
keyed by everything that determines it, and reused when the same config asks again.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from datamil.data.cache import cache_key, cached_store, default_cache_dir, files_fingerprint
from datamil.data.mixture import check_labels, common_layout, drop_state, prior_entries, write_mixture
from datamil.data.normalization import ActingNormalization, check_mode, group_stats, normalize_store
from datamil.data.oxe_registry import plain
from datamil.data.splits import split_target
from datamil.data.store import TrajectoryStore
from datamil.errors import DataError
from datamil.registry import ConfigRegistry, configured

DATA_SOURCES = ConfigRegistry("data source", "data")  # datamil/configs/data/<name>.yaml (_target_: the class)
logger = logging.getLogger(__name__)


@dataclass
class TaskData:
    """The stores of a run. target_val is held out: estimators never train on it.

    normalization: the target's statistics when the pipeline normalized the data (None: raw units), saved
        with a trained policy so it acts in the target's raw units.
    prior_weights / robots: a mixture prior's per-dataset sampling weight and robot, keyed by the
        episodes' `dataset` label (empty for a single prior).
    """

    task: str
    prior: TrajectoryStore
    target_train: TrajectoryStore
    target_val: TrajectoryStore
    prior_weights: dict[str, float] = field(default_factory=dict)
    robots: dict[str, str] = field(default_factory=dict)
    normalization: ActingNormalization | None = None

    def summary(self) -> dict:
        """What identifies the data in a score file's fingerprint (the normalization only when there is
        one, so fingerprints of unnormalized runs stay as they were)."""
        out = {
            "task": self.task,
            **{
                f"{name}_{unit}": getattr(getattr(self, name), attr)
                for name in ("prior", "target_train", "target_val")
                for unit, attr in (("episodes", "n_episodes"), ("steps", "n_steps"))
            },
        }
        return out if self.normalization is None else {**out, "normalization": self.normalization.mode}


def normalize_task_data(data: TaskData, mode: str, prior_groups: Sequence[str] | None = None) -> TaskData:
    """`data` with actions and states normalized (datamil.data.normalization): the prior by each of its
    datasets' own statistics (`prior_groups`: one label per episode; None = one dataset), target-train and
    target-val by target-train's (target-val stays unseen). `mode="none"` returns `data` untouched."""
    if check_mode(mode) == "none":
        return data
    prior_stats = group_stats(data.prior, prior_groups)
    target_stats = group_stats(data.target_train)
    normalize = functools.partial(normalize_store, mode=mode, stats=target_stats)
    acting = ActingNormalization(mode, target_stats[""]["action"], target_stats[""].get("obs/state"))
    return replace(
        data,
        prior=normalize_store(data.prior, mode, prior_stats, prior_groups),
        target_train=normalize(data.target_train),
        target_val=normalize(data.target_val),
        normalization=acting,
    )


# datamil/configs/data/<name>.yaml is the only source of the defaults its source class restates
_METAWORLD, _RLDS, _ROBOMIMIC = (configured("data", name) for name in ("metaworld", "rlds", "robomimic"))


@dataclass
class MetaWorldSource:
    """Self-generated MetaWorld data: a prior of scripted experts (with noise, so successes and failures)
    across many tasks, with some target-task data inside it, plus clean target demos split by seed."""

    # e.g. [metaworld/reach, push]; empty = whole suite. Default: datamil/configs/data/metaworld.yaml, as below
    prior_tasks: list[str] = field(default_factory=lambda: list(_METAWORLD["prior_tasks"]))
    episodes_per_task: int = _METAWORLD["episodes_per_task"]
    target_in_prior: bool = _METAWORLD["target_in_prior"]  # the reference prior has target data too
    noise_levels: tuple[float, ...] = _METAWORLD["noise_levels"]
    max_steps: int = _METAWORLD["max_steps"]  # prior episode length cap
    target_max_steps: int = _METAWORLD["target_max_steps"]  # target demo length cap
    target_noise: float = _METAWORLD["target_noise"]  # action noise of the (successful) target demos
    n_target_demos: int = _METAWORLD["n_target_demos"]
    n_target_val: int = _METAWORLD["n_target_val"]
    seed: int = _METAWORLD["seed"]
    workers: int = _METAWORLD["workers"]
    cache_dir: str | None = None
    cameras: dict[str, str] = field(default_factory=dict)  # obs key -> camera, e.g. {image_primary: corner}
    image_size: tuple[int, int] = (84, 84)  # (H, W) of rendered frames
    render_fast: bool = True  # shadows, reflections and skybox off (~9x faster software rendering)
    render_samples: int = 0  # multisample anti-aliasing (MuJoCo's default 4 costs ~3x on software GL)
    image_encoding: str = "png"  # how frames are stored in RLDS: png (lossless) or jpeg
    normalization: str = _METAWORLD["normalization"]  # actions already live in [-1, 1]

    def camera_config(self):  # -> datamil.sim_tasks.render.CameraConfig | None
        """The rendering settings, or None when the data is state-only (no cameras)."""
        from datamil.sim_tasks.render import CameraConfig

        return CameraConfig.of(self.cameras, self.image_size, self.render_fast, self.render_samples)

    def _image_key(self) -> dict:
        """Cache-key entries for the images; empty for state-only data, so its old caches stay valid."""
        cameras = self.camera_config()
        return {} if cameras is None else {"images": cameras.to_dict(), "image_encoding": self.image_encoding}

    def load(self, task: str) -> TaskData:
        from datamil.sim_tasks.suites import split_task

        split_task(task)  # an unknown task fails here, listing the valid names
        check_mode(self.normalization)
        root = Path(self.cache_dir) if self.cache_dir else default_cache_dir()
        prior = self._prior(task, root)
        target = self._target(task, root)
        target_train, target_val = split_target(target, self.n_target_val, self.seed)
        return normalize_task_data(TaskData(task, prior, target_train, target_val), self.normalization)

    def prior_task_list(self, task: str) -> list[str]:
        """The prior's tasks: `prior_tasks` (default: every task of the target's suite), target in or out."""
        from datamil.sim_tasks.suites import split_task, task_names

        suite = task.partition("/")[0]
        tasks = [t if "/" in t else f"{suite}/{t}" for t in self.prior_tasks]
        for name in tasks:
            split_task(name)
        tasks = tasks or [t for t in task_names() if t.startswith(suite + "/")]
        if self.target_in_prior and task not in tasks:
            tasks = [*tasks, task]
        if not self.target_in_prior:
            tasks = [t for t in tasks if t != task]
        if not tasks:
            raise DataError("the MetaWorld prior has no tasks; set data.prior_tasks to at least one task")
        return tasks

    def _prior(self, task: str, root: Path) -> TrajectoryStore:
        """The prior's store. An episode depends only on its (task, seed, index), so a prior without the
        target is the prior with it less the target's episodes: every target of one task list reads one
        cache (the full 8,250-trajectory prior is generated once, not once per target)."""
        tasks = self.prior_task_list(task)
        store = self._generated_prior(sorted({*tasks, task}), root)
        if task in tasks:
            return store
        kept = store.subset(np.flatnonzero(np.asarray(store.episodes.task) != task))
        # rebuilt from its parts, not copied again: statistics over the kept episodes only
        return TrajectoryStore(kept.arrays, kept.offsets, kept.episodes)

    def _generated_prior(self, tasks: list[str], root: Path) -> TrajectoryStore:
        from datamil.sim_tasks.generate import generate_episodes

        config = {
            "kind": "prior",
            "tasks": sorted(tasks),
            "episodes_per_task": self.episodes_per_task,
            "seed": self.seed,
            "noise_levels": list(self.noise_levels),
            "max_steps": self.max_steps,
            **self._image_key(),
        }
        return cached_store(
            root / "metaworld" / f"prior-{cache_key(config)}",
            config,
            lambda: generate_episodes(
                sorted(tasks),
                self.episodes_per_task,
                self.seed,
                noise_levels=self.noise_levels,
                max_steps=self.max_steps,
                workers=self.workers,
                cameras=self.camera_config(),
            ),
            self.image_encoding,
        )

    def _target(self, task: str, root: Path) -> TrajectoryStore:
        from datamil.sim_tasks.generate import generate_target_demos

        config = {
            "kind": "target",
            "task": task,
            "n": self.n_target_demos,
            "seed": self.seed,
            "noise": self.target_noise,
            "max_steps": self.target_max_steps,
            **self._image_key(),
        }
        return cached_store(
            root / "metaworld" / f"target-{cache_key(config)}",
            config,
            lambda: generate_target_demos(
                task,
                self.n_target_demos,
                self.seed,
                noise=self.target_noise,
                max_steps=self.target_max_steps,
                workers=self.workers,
                cameras=self.camera_config(),
            ),
            self.image_encoding,
        )


@dataclass
class RLDSSource:
    """Your own data: a prior and target demos as RLDS/TFDS datasets (e.g. an Open X-Embodiment dataset).

    `prior` and `target` are dataset directories, or dataset names resolved under `data_dir`
    (e.g. gs://gresearch/robotics). Each is converted once into a store under the cache directory, and
    again when a local dataset's files change (re-written in place).
    Cameras come from the dataset's OXE registry entry (bridge: image_0 -> image_primary);
    `prior_image_keys` / `target_image_keys` ({raw camera: our image key}) read other ones.
    """

    prior: Any = ""  # a dataset (path or name), or a list of entries (datamil.data.mixture.PriorEntry)
    target: str = ""
    standardization: str | None = (
        None  # the single prior's OXE row; None = its own (a list sets it per entry)
    )
    target_standardization: str | None = None  # the target's OXE row; None = its own (see _target_reading)
    target_mapping: dict | None = None  # read the target by config (docs/oxe.md); None = its own entry
    normalization: str = _RLDS["normalization"]  # per dataset: q01_q99 | mean_std | none
    n_target_val: int = _RLDS["n_target_val"]
    seed: int = _RLDS["seed"]
    data_dir: str | None = None
    max_prior_episodes: int | None = None
    cache_dir: str | None = None
    prior_image_keys: dict[str, str] | None = None  # e.g. {image_1: image_primary}; None = the registry's
    target_image_keys: dict[str, str] | None = None  # the same for the target demos
    grayscale_to_rgb: bool = _RLDS["grayscale_to_rgb"]  # False = reject one-channel cameras
    mapping: dict | None = None  # read the single prior by config (docs/oxe.md); None = its registry entry

    # what the apps say when a required setting is missing (datamil.cli.require_values)
    usage: ClassVar[str] = (
        "data=rlds needs data.prior=<RLDS dir or name> and data.target=<RLDS dir of target demos>"
    )

    def load(self, task: str) -> TaskData:
        check_mode(self.normalization)
        if not self.prior or not self.target:
            raise DataError(self.usage)
        root = (Path(self.cache_dir) if self.cache_dir else default_cache_dir()) / "rlds"
        target, _ = self._ingest(self.target, root, None, self.target_image_keys, *self._target_reading())
        if isinstance(self.prior, str):
            prior, _ = self._ingest(
                self.prior,
                root,
                self.max_prior_episodes,
                self.prior_image_keys,
                self.standardization,
                self.mapping,
            )
            data = TaskData(task, prior, *split_target(target, self.n_target_val, self.seed))
            return normalize_task_data(data, self.normalization)
        prior, entries, note = self._mixture(root, target)
        if note:
            logger.warning(note)
            target = drop_state(target)
        weights = {label: entry.weight for label, entry in entries.items()}
        robots = {label: entry.robot for label, entry in entries.items()}
        data = TaskData(task, prior, *split_target(target, self.n_target_val, self.seed), weights, robots)
        return normalize_task_data(data, self.normalization, prior.episodes.dataset)

    def _mixture(self, root: Path, target: TrajectoryStore) -> tuple[TrajectoryStore, dict, str | None]:
        """One store of every `data.prior` entry in a common layout, cached (datamil.data.mixture)."""
        from datamil.data.rlds import open_builder

        single = {"standardization": self.standardization, "mapping": self.mapping}
        single |= {"max_prior_episodes": self.max_prior_episodes, "prior_image_keys": self.prior_image_keys}
        if any(single.values()):
            set_here = sorted(k for k, v in single.items() if v)
            raise DataError(f"with a list data.prior, set {set_here} per entry of data.prior (docs/oxe.md)")
        entries = prior_entries(self.prior)
        labels = [e.label or open_builder(self._resolved(e.source), self.data_dir).name for e in entries]
        check_labels(labels)
        stores, dirs = {}, {}
        for label, e in zip(labels, entries, strict=True):
            reading = (e.standardization, e.mapping)
            stores[label], dirs[label] = self._ingest(e.source, root, e.max_episodes, e.image_keys, *reading)
        layout = common_layout(stores, target)
        key = cache_key({"mixture": dirs, "keep": sorted(layout.keep), "sizes": layout.sizes})
        path = root / f"mixture-{key}"
        prior = (
            TrajectoryStore.load(path)
            if (path / "meta.json").is_file()
            else write_mixture(stores, layout, path)
        )
        return prior, dict(zip(labels, entries, strict=True)), layout.note

    def _resolved(self, source: str) -> str:
        return str(Path(source).expanduser().resolve()) if Path(source).expanduser().exists() else source

    def _target_reading(self) -> tuple[str | None, dict | None]:
        """(standardization, mapping) of the target: its own settings when given; else its own entry (our
        write_rlds layout or its registry row, read as is); else, for a target the registry does not know,
        the single prior's, as before they were separate."""
        from datamil.data.oxe import STANDARDIZATIONS
        from datamil.data.rlds import is_datamil_layout, open_builder

        if self.target_standardization or self.target_mapping:
            return self.target_standardization, self.target_mapping
        builder = open_builder(self._resolved(self.target), self.data_dir)
        if is_datamil_layout(builder.info.features) or builder.name in STANDARDIZATIONS:
            return None, None
        return (self.standardization, self.mapping) if isinstance(self.prior, str) else (None, None)

    def _ingest(
        self,
        source: str,
        root: Path,
        max_episodes: int | None,
        image_keys: dict[str, str] | None,
        standardization: str | None,
        mapping: dict | None,
    ) -> tuple[TrajectoryStore, Path]:
        """The dataset's store (converted once, cached by everything that determines it) and its path."""
        from datamil.data.rlds import ingest_rlds

        resolved = self._resolved(source)
        config = {"source": resolved, "standardization": standardization, "max_episodes": max_episodes}
        image_keys = dict(image_keys) if image_keys else None
        # only when set, so the caches of registry-camera, RGB data keep their keys
        config.update({"image_keys": image_keys} if image_keys else {})
        config.update({"grayscale_to_rgb": True} if self.grayscale_to_rgb else {})
        config.update({"mapping": plain(mapping)} if mapping else {})
        files = files_fingerprint(self._local_dir(resolved))
        config.update({"files": files} if files else {})  # local data: a re-written dataset is re-converted
        store_dir = root / f"{Path(source).name}-{cache_key(config)}"
        if (store_dir / "meta.json").is_file():
            return TrajectoryStore.load(store_dir), store_dir
        store = ingest_rlds(
            resolved,
            store_dir,
            standardization=self._standardization(resolved, standardization, mapping),
            data_dir=self.data_dir,
            max_episodes=max_episodes,
            image_keys=image_keys,
            grayscale_to_rgb=self.grayscale_to_rgb,
        )
        return store, store_dir

    def _local_dir(self, source: str) -> Path | None:
        """The dataset's directory on this machine (a path, or a name under a local data_dir), else None."""
        candidates = [Path(source)] + ([Path(self.data_dir) / source] if self.data_dir else [])
        return next((path for path in candidates if path.is_dir()), None)

    def _standardization(self, source: str, name: str | None, mapping: dict | None) -> Any:
        """The entry to read `source` with: `name` and `mapping` applied to its registry row.

        Datasets in our own layout (write_rlds) describe themselves and ignore `mapping`; an unknown
        dataset without a mapping fails here, saying how to map it by config.
        """
        from datamil.data.oxe import configured_standardization
        from datamil.data.rlds import is_datamil_layout, open_builder

        builder = open_builder(source, self.data_dir)
        if is_datamil_layout(builder.info.features):
            return name
        return configured_standardization(builder.name, builder.info.features, name, mapping)


@dataclass
class RobomimicSource:
    """robomimic hdf5 files as prior and target; `state_keys` are concatenated into the state vector."""

    prior: str = ""
    target: str = ""
    state_keys: list[str] = field(default_factory=lambda: list(_ROBOMIMIC["state_keys"]))
    image_keys: dict[str, str] = field(default_factory=lambda: dict(_ROBOMIMIC["image_keys"]))
    prior_filter_key: str | None = None
    target_filter_key: str | None = None
    n_target_val: int = _ROBOMIMIC["n_target_val"]
    seed: int = _ROBOMIMIC["seed"]
    normalization: str = _ROBOMIMIC["normalization"]  # delta actions already in [-1, 1]

    usage: ClassVar[str] = "data=robomimic needs data.prior=<file.hdf5> and data.target=<file.hdf5>"

    def load(self, task: str) -> TaskData:
        from datamil.data.robomimic_hdf5 import read_robomimic

        if not self.prior or not self.target:
            raise DataError(self.usage)
        prior, target = (
            TrajectoryStore.from_episodes(read_robomimic(path, self.state_keys, dict(self.image_keys), key))
            for path, key in ((self.prior, self.prior_filter_key), (self.target, self.target_filter_key))
        )
        target_train, target_val = split_target(target, self.n_target_val, self.seed)
        return normalize_task_data(TaskData(task, prior, target_train, target_val), self.normalization)


def source_config(source: object) -> dict:
    """The source's settings, for the resolved config saved next to every artifact."""
    return asdict(source)  # type: ignore[call-overload]
