"""The on-disk cache of generated and converted datasets, keyed by everything that determines them.

A cached dataset is a directory holding the RLDS files it was written as (`rlds/`), the store it was
converted into (`store/`) and the config that made it (`config.json`). The key is a hash of that config
plus, for a local dataset, the names, sizes and mtimes of its files, so a dataset re-written in place is
converted again instead of silently reusing the stale store. Parallel jobs asking for the same key build
it once (a file lock), and a failed build leaves nothing behind (the writers are atomic).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from datamil.data.schema import Episode
from datamil.data.store import TrajectoryStore
from datamil.io import file_lock

CACHE_VERSION = 1


def default_cache_dir() -> Path:
    """$DATAMIL_CACHE, else ~/.cache/datamil."""
    return Path(os.environ.get("DATAMIL_CACHE", Path.home() / ".cache" / "datamil"))


def cache_key(config: dict) -> str:
    """A short stable hash of everything that determines a dataset."""
    text = json.dumps({"cache_version": CACHE_VERSION, **config}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def files_fingerprint(directory: Path | None) -> str | None:
    """A hash of every file's relative name, size and mtime under `directory` (None for remote data).

    Part of a converted store's cache key, so a dataset re-written in place is converted again instead
    of silently reusing the stale store; stat-only, so checking a large dataset stays cheap.
    """
    if directory is None:
        return None
    entries = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        stat = path.stat()
        entries.append((str(path.relative_to(directory)), stat.st_size, stat.st_mtime_ns))
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]


def cached_store(
    directory: Path,
    config: dict,
    make_episodes: Callable[[], Iterable[Episode]],
    image_encoding: str = "png",
) -> TrajectoryStore:
    """Load `directory/store`, or build it once: episodes → RLDS (`directory/rlds`) → store.

    Going through RLDS means generated data lives in the same format as OXE data and real-robot
    recordings, and the reader is exercised on every first run.
    """
    from datamil.data.rlds import ingest_rlds, write_rlds

    store_dir = directory / "store"
    if (store_dir / "meta.json").is_file():
        return TrajectoryStore.load(store_dir)
    with file_lock(directory.parent / f".{directory.name}.lock"):  # parallel jobs build it once
        if (store_dir / "meta.json").is_file():  # another job built it while this one waited
            return TrajectoryStore.load(store_dir)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True, default=str))
        rlds_dir = write_rlds(
            make_episodes(), directory / "rlds", name="datamil_metaworld", image_encoding=image_encoding
        )
        return ingest_rlds(rlds_dir, store_dir)
