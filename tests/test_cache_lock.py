"""A data cache that several jobs need at once (the proxy seeds of one select, a benchmark task's methods)
is built once: the first job builds it under a file lock, the others wait and read what it wrote."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import rlds_fixtures as fx

from datamil.data.cache import cached_store
from datamil.io import file_lock


def test_file_lock_serialises_holders(tmp_path: Path) -> None:
    events: list[str] = []

    def hold(name: str) -> None:
        with file_lock(tmp_path / "x.lock"):
            events.append(f"{name} in")
            time.sleep(0.2)
            events.append(f"{name} out")

    threads = [threading.Thread(target=hold, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # each holder leaves before the other enters
    assert events in (["a in", "a out", "b in", "b out"], ["b in", "b out", "a in", "a out"])


def test_concurrent_cached_store_builds_once(tmp_path: Path) -> None:
    builds: list[int] = []

    def make_episodes():
        builds.append(1)
        time.sleep(0.3)  # long enough that the other job arrives while this one builds
        return fx.make_episodes(n=3, image=False)

    stores = [None, None]

    def job(i: int) -> None:
        stores[i] = cached_store(tmp_path / "cache", {"k": 1}, make_episodes)

    threads = [threading.Thread(target=job, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1
    assert stores[0].n_episodes == stores[1].n_episodes == 3
