"""Shard files of a fanned-out estimator: where shard s of S lives, reading one back, and gathering all S
with one error line; plus the fingerprint that ties a shard to the exact settings it was made with.

Each sharded estimator (`datamil.datamodels.regression`, `datamil.datamodels.lds_shards`) writes its own
arrays; this module only knows that every shard file holds a `fingerprint` and lives at `shard_path`.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from datamil.data.store import TrajectoryStore
from datamil.errors import DatamilError


def store_digest(store: TrajectoryStore | None) -> str | None:
    """16 hex digits of a store's episode ids, offsets and a strided sample of every array's rows."""
    if store is None:
        return None
    digest = hashlib.sha256(json.dumps(list(store.episodes.episode_id)).encode())
    digest.update(np.asarray(store.offsets).tobytes())
    picks = np.unique(np.linspace(0, max(store.n_steps - 1, 0), 64).astype(np.int64))
    for key in sorted(store.arrays):
        array = store.arrays[key]
        digest.update(f"{key}{array.shape}{array.dtype}".encode())
        if store.n_steps:
            digest.update(np.ascontiguousarray(array[picks]).tobytes())
    return digest.hexdigest()[:16]


def run_settings(
    spec: dict,
    policy: Any,
    train_store: TrajectoryStore,
    target_val_store: TrajectoryStore,
    target_train_store: TrajectoryStore | None,
    settings: dict | None,
) -> dict:
    """What every shard of one run must share: the trained part of the spec, the policy, digests of the
    data (target-train only when the proxies train on it) and the caller's `settings`."""
    data = {"prior": store_digest(train_store), "target_val": store_digest(target_val_store)}
    data["target_train"] = store_digest(target_train_store if spec["include_target_train"] else None)
    return {"spec": spec, "policy": repr(policy), "data": data, "settings": settings or {}}


def chunk_indices(n_items: int, chunk: int) -> list[np.ndarray]:
    """Indices of each vmapped chunk: [0, chunk), [chunk, 2 chunk), ... up to n_items."""
    return [np.arange(lo, min(lo + chunk, n_items)) for lo in range(0, n_items, chunk)]


def shard_share(shard: int, n_shards: int, n_units: int, too_many: str) -> np.ndarray:
    """Indices of the units shard s of S trains: a contiguous run of whole units (so results match one
    process). too_many: the error line when there are fewer units than shards."""
    if not 0 <= shard < n_shards:
        raise DatamilError(f"shard={shard} is outside 0..{n_shards - 1}; use 0 <= shard < n_shards")
    if n_shards > n_units:
        raise DatamilError(too_many)
    return np.array_split(np.arange(n_units), n_shards)[shard]


def plain(obj: Any) -> Any:
    """JSON fallback: mappings as dicts, sequences (tuples, OmegaConf lists) as lists, else str."""
    if hasattr(obj, "items"):
        return dict(obj.items())
    return list(obj) if hasattr(obj, "__iter__") and not isinstance(obj, (str, bytes)) else str(obj)


def settings_json(settings: dict) -> str:
    """The shard settings as the sorted JSON that `fingerprint` hashes and each shard file keeps."""
    return json.dumps(settings, sort_keys=True, default=plain)


def fingerprint(settings: dict) -> str:
    """16 hex digits of a run's shard settings: shards of one run share it; gather refuses any other."""
    return hashlib.sha256(settings_json(settings).encode()).hexdigest()[:16]


def shard_path(shard_dir: str | Path, shard: int, n_shards: int) -> Path:
    return Path(shard_dir) / f"shard-{shard:04d}-of-{n_shards:04d}.npz"


def read_shard(path: Path, keys: Sequence[str]) -> dict[str, np.ndarray] | None:
    """The arrays `keys` of a shard file, or None if it is not a whole shard file (cut short, foreign)."""
    try:
        with np.load(path) as saved:
            return {name: saved[name] for name in keys}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
        return None


def load_shards(
    shard_dir: str | Path,
    n_shards: int,
    key: str,
    keys: Sequence[str],
    *,
    what: str,
    settings: str,
    letter: str = "s",
) -> list[dict[str, np.ndarray]]:
    """The S shard files of fingerprint `key`, or one DatamilError line naming the missing, unreadable
    and mismatched shards and how to fix them.

    what: what the gather makes ("the LDS truths"); settings: what a fingerprint covers, named in the hint
    for mismatched shards ("data, policy, seed or estimator"); letter: the shard's name in the app's
    overrides (`shard=<s>`)."""
    missing, unreadable, mismatched, shards = [], [], [], []
    for s in range(n_shards):
        path = shard_path(shard_dir, s, n_shards)
        if not path.is_file():
            missing.append(s)
            continue
        shard = read_shard(path, keys)
        if shard is None:
            unreadable.append(s)
        elif str(shard["fingerprint"]) != key:
            mismatched.append(s)
        else:
            shards.append(shard)
    problems = []
    if missing:
        others = sorted({p.name.rsplit("-of-", 1)[-1][:-4] for p in Path(shard_dir).glob("shard-*-of-*.npz")})
        other = [int(n) for n in others if n.isdigit() and int(n) != n_shards]
        hint = f" (it holds shards of n_shards={', '.join(map(str, other))})" if other else ""
        problems.append(
            f"shards {_ids(missing)} of {n_shards} are missing in {shard_dir}{hint}; train them with the "
            f"same settings (shard=<{letter}> n_shards={n_shards}), then gather again"
        )
    if unreadable:
        problems.append(f"shards {_ids(unreadable)} cannot be read; delete those files and train them again")
    if mismatched:
        problems.append(
            f"shards {_ids(mismatched)} were made with other settings ({settings}) than this gather; train "
            "them again with this gather's settings, or gather with theirs"
        )
    if problems:
        raise DatamilError(f"cannot gather {what}: " + "; ".join(problems))
    return shards


def _ids(indices: list[int]) -> str:
    return ", ".join(map(str, indices))
