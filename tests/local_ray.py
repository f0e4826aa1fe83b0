"""A Ray of 2 CPUs on 127.0.0.1 for one `hydra/launcher=ray` sweep: the Hydra overrides that make the sweep
start it and stop it, and checks that every one of its processes used the loopback address and that none
outlives the sweep (any left are killed, by pid, so a failing test leaves nothing running on CI)."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


needs_ray = pytest.mark.skipif(
    not (has_module("ray") and has_module("hydra_plugins.hydra_ray_launcher")),
    reason="ray / hydra-ray-launcher are not installed (pip install -e '.[ray]', part of '.[dev]')",
)


ADDRESS = re.compile(r"--(?:node[-_]ip[-_]address|gcs[-_]address|host)[= ](\S+)")


def ray_env(env: dict[str, str]) -> dict[str, str]:
    """`env` for a sweep on a Ray of its own, on loopback: no usage report leaves the machine, no cluster
    named in the environment is joined, and RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps Ray on 127.0.0.1 (on
    Linux Ray otherwise swaps 127.0.0.1 for the machine's network address, `_node_ip_address` included)."""
    env = {**env, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_ADDRESS", None)
    return env


def processes_naming(text: str) -> dict[int, str]:
    """pid -> command line of this machine's processes whose command line contains `text`."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in command:
            found[int(entry.name)] = command
    return found


class Watch(threading.Thread):
    """Samples, every 0.2 s until stopped, the command lines of the processes that name `text`."""

    def __init__(self, text: str) -> None:
        super().__init__(daemon=True)
        self.text, self.seen, self.stop = text, {}, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.2):
            self.seen.update(processes_naming(self.text))


@contextmanager
def local_ray(grace_s: float = 60.0) -> Iterator[list[str]]:
    """Overrides for a sweep (run with `ray_env`) on a loopback-only Ray of 2 CPUs, one job per CPU, that
    the sweep starts and stops. On exit: fails if a Ray process was given an address other than 127.0.0.1;
    waits up to `grace_s` for its processes to end, kills any left and fails.

    Every process Ray starts names its temp dir (or the session dir inside it) on its command line: a fresh
    short dir (Ray's socket paths must fit 107 bytes) tells this sweep's processes from any other Ray's."""
    ray_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    overrides = [
        "hydra/launcher=ray",
        "hydra.launcher.ray.init.num_cpus=2",
        "+hydra.launcher.ray.init._node_ip_address=127.0.0.1",
        f"+hydra.launcher.ray.init._temp_dir={ray_dir}",
    ]
    watch = Watch(ray_dir)
    watch.start()
    try:
        yield overrides
    finally:
        watch.stop.set()
        watch.join()
        deadline = time.monotonic() + grace_s
        while (left := processes_naming(ray_dir)) and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(ray_dir, ignore_errors=True)
    assert not left, f"the sweep left Ray processes running: {sorted(left.values())}"
    assert watch.seen, "no Ray process was seen: did the sweep run on Ray?"
    addresses = {a for command in watch.seen.values() for a in ADDRESS.findall(command)}
    assert addresses and all(a.startswith("127.0.0.1") for a in addresses), addresses
