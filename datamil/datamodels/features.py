"""Datamodels for image policies, in two modes that share every estimator.

frozen (the default for image policies): fit the image policy once by BC on prior + target-train,
cache its encoder's features for every frame (keyed by the encoder's hash), and run any registered
estimator on the head alone, a small MLP over (N, F) feature vectors:

    scores = estimator(head, features(prior), features(target_val), ...)                     (frozen)

end_to_end: the exact (or truncated) metagradient through encoder and head, with segment checkpointing
bounding memory (datamil.datamodels.metagrad), the surrogate evaluated without augmentation.

The frozen mode treats the encoder as data-independent; what it loses is the encoder's own
dependence on the data (measured against end_to_end in benchmarks/image_pipeline.py).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datamil.data.store import StoreWriter, TrajectoryStore
from datamil.datamodels.base import ESTIMATORS, EstimateResult, check_scores, prepare, scores_only, timed
from datamil.datamodels.metagrad import metagradient
from datamil.datamodels.proxy import ProxyConfig
from datamil.datamodels.surrogate import Surrogate
from datamil.datamodels.truncated import truncated_scores
from datamil.device import module_device, tree_to
from datamil.errors import DatamilError
from datamil.io import atomic_dir, atomic_torch_save
from datamil.policies.base import OBS_STATE_KEY, Params, Policy
from datamil.policies.vision import OBS_PREFIX, VisionPolicy, conform_store, resize_frames
from datamil.registry import configured
from datamil.training import OptimConfig, train

FEATURES_FILE = "features.npy"
META_FILE = "meta.json"


# ------------------------------------------------------------------------------------- the encoder
def encoder_hash(policy: Policy, params: Params) -> str:
    """16 hex digits of the encoder's configuration and parameter bytes: the feature cache's key."""
    digest = hashlib.sha256(repr(sorted(policy.encoder.shapes.items())).encode())
    digest.update(repr((policy.encoder.image_size, policy.encoder.state_dim)).encode())
    for name in sorted(k for k in params if k.startswith("encoder.")):
        digest.update(name.encode())
        digest.update(params[name].detach().to(torch.float32).cpu().contiguous().numpy().tobytes())
    for name, buffer in sorted(policy.encoder.named_buffers()):
        digest.update(name.encode())
        digest.update(buffer.detach().to(torch.float32).cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


@dataclass
class FitConfig:
    """How the encoder is fitted once for the frozen mode: BC on prior + target-train."""

    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0  # independent of the proxy seeds: one encoder serves every seed


def fit_encoder(
    policy: Policy, stores: list[TrajectoryStore], fit: FitConfig, workdir: str | Path | None = None
) -> Params:
    """Train the whole image policy by BC (augmentation on) on the concatenated stores; returns params.

    workdir: where the concatenated fit data is written (`write_fit_data`, removed afterwards) and read
    back a batch at a time, so the fit holds one batch of frames rather than every frame of the prior;
    None concatenates in memory (small stores). The same parameters either way.
    """
    if workdir is None:
        return _fit(policy, fit_data(policy, stores), fit)
    Path(workdir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=workdir, prefix="fit_data_") as tmp:
        return _fit(policy, write_fit_data(policy, stores, Path(tmp) / "store"), fit)


def _fit(policy: Policy, data: TrajectoryStore, fit: FitConfig) -> Params:
    optim = OptimConfig(lr=fit.lr, total_steps=fit.steps, warmup_steps=min(100, fit.steps // 10))
    policy.train()
    pool = np.arange(data.n_steps)
    result = train(
        policy, data, pool, fit.steps, fit.batch_size, optim, fit.seed, progress=False, stream=True
    )
    return result.params


def _fit_layout(policy: Policy) -> tuple[set[str], dict[str, tuple[int, int]]]:
    """(observation arrays the policy reads, camera -> (H, W) the encoder takes when it resizes)."""
    sizes = {}
    if policy.encoder.image_size is not None:
        sizes = {OBS_PREFIX + k: policy.encoder.input_size(k) for k in policy.image_keys}
    return set(policy.batch_keys), sizes


def fit_data(policy: Policy, stores: list[TrajectoryStore]) -> TrajectoryStore:
    """The stores as one, keeping only the observations the policy reads, cameras at the encoder's size
    when `image_size` is set (which also keeps the in-memory copy small)."""
    keys, sizes = _fit_layout(policy)
    return TrajectoryStore.concat([conform_store(s, keys, sizes) for s in stores])


def write_fit_data(policy: Policy, stores: list[TrajectoryStore], path: str | Path) -> TrajectoryStore:
    """`fit_data` streamed to a store on disk one episode at a time, opened memory-mapped: the same
    arrays, episodes and statistics, without holding the frames of every store in memory."""
    keys, sizes = _fit_layout(policy)
    with StoreWriter(path) as writer:
        for store in stores:
            for index in range(store.n_episodes):
                episode = store.read_episode(index, keys)
                for name, size in sizes.items():
                    key = name[len(OBS_PREFIX) :]
                    frames = episode.observations.get(key)
                    if frames is not None and tuple(frames.shape[1:3]) != tuple(size):
                        episode.observations[key] = resize_frames(frames, tuple(size))
                writer.add(episode)
    return TrajectoryStore.load(path)


@torch.no_grad()
def encode_store(policy: Policy, params: Params, store: TrajectoryStore, chunk: int = 512) -> np.ndarray:
    """(N, F) float32 encoder features of every step of `store`, no augmentation (eval mode), computed on
    the device of `params` (frames are moved there a chunk at a time) and returned in host memory."""
    encoder_params = {k[len("encoder.") :]: v for k, v in params.items() if k.startswith("encoder.")}
    device = next(iter(encoder_params.values())).device
    keys = [k for k in policy.batch_keys if k.startswith("obs/")]
    out = np.empty((store.n_steps, policy.encoder.out_dim), np.float32)
    was_training = policy.training
    policy.eval()
    try:
        for lo in range(0, store.n_steps, chunk):
            ids = np.arange(lo, min(lo + chunk, store.n_steps))
            # positioned reads (TrajectoryStore.read): the pass leaves no frame of the store mapped in memory
            arrays = {**store.read(ids, keys), "index": ids}.items()
            batch = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in arrays}
            feats = torch.func.functional_call(policy.encoder, encoder_params, (batch,), strict=False)
            out[lo : lo + len(ids)] = feats.float().cpu().numpy()
    finally:
        policy.train(was_training)
    return out


# ------------------------------------------------------------------------------------- the cache
def store_fingerprint(store: TrajectoryStore, keys: list[str]) -> str:
    """16 hex digits of a store's episode ids, offsets and a strided sample of its observation bytes."""
    digest = hashlib.sha256(json.dumps(store.episodes.episode_id).encode())
    digest.update(np.asarray(store.offsets).tobytes())
    picks = np.unique(np.linspace(0, store.n_steps - 1, 16).astype(np.int64))
    for key in sorted(keys):
        digest.update(np.ascontiguousarray(store.arrays[key][picks]).tobytes())
    return digest.hexdigest()[:16]


class FeatureCache:
    """Per-frame features on disk: <root>/<encoder hash>/<store fingerprint>/{features.npy, meta.json}.

    Every entry records the encoder hash it was made with; reading it for another encoder fails loudly
    (a stale cache would silently score the prior with features of a different network).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, encoder: str, fingerprint: str) -> Path:
        return self.root / encoder / fingerprint

    def load(self, path: Path, encoder: str, n_steps: int) -> np.ndarray | None:
        """The cached (N, F) features at `path`, None if absent; a hash or length mismatch raises."""
        if not (path / META_FILE).is_file():
            return None
        meta = json.loads((path / META_FILE).read_text())
        if meta.get("encoder_hash") != encoder:
            raise DatamilError(
                f"feature cache {path} was made by encoder {meta.get('encoder_hash')}, not {encoder}; "
                "delete it or use another cache directory"
            )
        features = np.load(path / FEATURES_FILE, mmap_mode="r")
        if len(features) != n_steps:
            raise DatamilError(
                f"feature cache {path} has {len(features)} frames, the store {n_steps}; delete it"
            )
        return features

    def save(self, path: Path, encoder: str, features: np.ndarray) -> None:
        with atomic_dir(path) as tmp:
            np.save(tmp / FEATURES_FILE, features)
            (tmp / META_FILE).write_text(json.dumps({"encoder_hash": encoder, "shape": list(features.shape)}))

    def features(self, policy: Policy, params: Params, store: TrajectoryStore) -> np.ndarray:
        """(N, F) features of `store` under this encoder, computed once and then read from disk."""
        encoder = encoder_hash(policy, params)
        keys = [k for k in policy.batch_keys if k.startswith("obs/")]
        path = self.path(encoder, store_fingerprint(store, keys))
        cached = self.load(path, encoder, store.n_steps)
        if cached is not None:
            return np.asarray(cached)
        features = encode_store(policy, params, store)
        self.save(path, encoder, features)
        return features


def feature_store(store: TrajectoryStore, features: np.ndarray) -> TrajectoryStore:
    """The store with its observations replaced by obs/state = features (N, F); actions etc. kept."""
    arrays = {k: v for k, v in store.arrays.items() if not k.startswith("obs/")}
    arrays[OBS_STATE_KEY] = np.asarray(features, np.float32)
    return TrajectoryStore(arrays, store.offsets, store.episodes)


# ------------------------------------------------------------------------------------- the two modes
def _fitted_params(policy: Policy, stores: list[TrajectoryStore], fit: FitConfig, cache: Path) -> Params:
    """Fit once per (policy config, data, fit settings); later calls (other seeds) load the saved params.

    Fitted on the policy's device and saved as CPU tensors; loaded back onto the policy's device."""
    key = hashlib.sha256(
        json.dumps(
            [repr(policy.init_kwargs), [store_fingerprint(s, ["action"]) for s in stores], vars(fit)],
            default=str,
        ).encode()
    ).hexdigest()[:16]
    path = cache / "encoders" / f"{key}.pt"
    if path.is_file():
        return tree_to(torch.load(path, map_location="cpu", weights_only=True), module_device(policy))
    params = fit_encoder(policy, stores, fit, workdir=cache / "encoders")
    atomic_torch_save(path, {k: v.cpu() for k, v in params.items()})
    return params


def frozen_feature_stores(
    policy: Policy,
    train_store: TrajectoryStore,
    target_val_store: TrajectoryStore,
    target_train_store: TrajectoryStore | None,
    fit: FitConfig,
    cache_dir: str | Path,
) -> tuple[TrajectoryStore, TrajectoryStore, TrajectoryStore | None, dict[str, float]]:
    """(prior, target-val, target-train) as feature stores, plus the seconds spent fitting and encoding."""
    timings: dict[str, float] = {}
    cache = Path(cache_dir)
    fit_on = [train_store] + ([target_train_store] if target_train_store is not None else [])
    with timed(timings, "fit_encoder"):
        params = _fitted_params(policy, fit_on, fit, cache)
    features = FeatureCache(cache / "features")
    with timed(timings, "encode"):
        out = [
            None if s is None else feature_store(s, features.features(policy, params, s))
            for s in (train_store, target_val_store, target_train_store)
        ]
    return out[0], out[1], out[2], timings


# datamil/configs/estimator/image.yaml is the only source of these defaults
DEFAULTS = configured("estimator", "image")


def run_image(
    policy: Policy,
    train_store: TrajectoryStore,
    target_val_store: TrajectoryStore,
    rng_seed: int = 0,
    proxy: ProxyConfig = DEFAULTS["proxy"],
    mode: str = DEFAULTS["mode"],
    estimator: str = DEFAULTS["estimator"],
    estimator_kwargs: dict[str, Any] | None = DEFAULTS["estimator_kwargs"],
    fit: FitConfig = DEFAULTS["fit"],
    cache_dir: str | Path | None = DEFAULTS["cache_dir"],
    include_target_train: bool = DEFAULTS["include_target_train"],
    target_train_store: TrajectoryStore | None = None,
) -> EstimateResult:
    """Scores of every prior step for an image policy (negative = helpful); see the module docstring.

    mode: "frozen" (estimator = any registered estimator, run on the head over cached features) or
    "end_to_end" (estimator = "metagrad" or "truncated", through the conv net).
    """
    if not isinstance(policy, VisionPolicy):
        raise DatamilError(
            f"estimator=image needs an image policy (policy=bc_image), got {type(policy).__name__}"
        )
    stores = {"prior": train_store, "target_val": target_val_store, "target_train": target_train_store}
    policy.check_data(stores)  # a missing camera or a size clash fails before any fit
    kwargs = dict(estimator_kwargs or {})
    if mode == "end_to_end":
        return _end_to_end(
            policy,
            train_store,
            target_val_store,
            rng_seed,
            proxy,
            estimator,
            kwargs,
            include_target_train,
            target_train_store,
        )
    if mode != "frozen":
        raise DatamilError(f"unknown image estimator mode {mode!r}; use 'frozen' or 'end_to_end'")
    from datamil.data.cache import default_cache_dir

    root = Path(cache_dir) if cache_dir else default_cache_dir() / "image_features"
    prior, val, target, timings = frozen_feature_stores(
        policy, train_store, target_val_store, target_train_store, fit, root
    )
    head = policy.head
    result = ESTIMATORS.get(estimator)(
        head,
        prior,
        val,
        rng_seed,
        proxy=proxy,
        include_target_train=include_target_train,
        target_train_store=target,
        **kwargs,
    )
    result.timings = {**timings, **result.timings}
    result.info = {**result.info, "mode": "frozen", "estimator": estimator}
    return result


class CleanSurrogate(Surrogate):
    """S(theta) with the policy in eval mode: no augmentation on the held-out target demos."""

    def __call__(self, params: Params) -> torch.Tensor:
        was_training = self.policy.training
        self.policy.eval()
        try:
            return super().__call__(params)
        finally:
            self.policy.train(was_training)


def _end_to_end(
    policy: Policy,
    train_store: TrajectoryStore,
    target_val_store: TrajectoryStore,
    seed: int,
    proxy: ProxyConfig,
    estimator: str,
    kwargs: dict[str, Any],
    include_target_train: bool,
    target_train_store: TrajectoryStore | None,
) -> EstimateResult:
    """Metagradient (segment-checkpointed) or truncated scores through encoder and head."""
    pool, plain = prepare(policy, train_store, target_val_store, target_train_store, include_target_train)
    surrogate = CleanSurrogate(policy, plain.val)
    policy.train()
    if estimator == "metagrad":
        result = metagradient(policy, pool, surrogate, proxy, seed, int(kwargs.get("checkpoint_every", 100)))
    elif estimator == "truncated":
        timings: dict[str, float] = {}
        with timed(timings, "total"):
            scores = truncated_scores(
                policy,
                pool,
                surrogate,
                proxy,
                seed,
                int(kwargs.get("window", 50)),
                np.arange(pool.size),
                int(kwargs.get("chunk_size", 256)),
            )
        result = EstimateResult(scores.cpu().numpy(), timings, {})
    else:
        raise DatamilError(f"end_to_end mode supports estimator metagrad or truncated, not {estimator!r}")
    result.scores = check_scores(result.scores, train_store.n_steps, f"image/{estimator}")
    result.info = {**result.info, "mode": "end_to_end", "estimator": estimator}
    return result


estimate_image = scores_only(run_image)

__all__ = [
    "CleanSurrogate",
    "FeatureCache",
    "FitConfig",
    "encode_store",
    "encoder_hash",
    "estimate_image",
    "feature_store",
    "fit_data",
    "fit_encoder",
    "frozen_feature_stores",
    "run_image",
    "write_fit_data",
]
