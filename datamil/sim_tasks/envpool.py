"""A fixed set of env slots stepped in lockstep, in this process or sharded over worker processes.

Only the envs go to workers; the caller keeps the policy. Slot s lives in worker s % workers, so
each worker steps its shard while the others step theirs, and one step costs about one shard's time.
Workers are started with "spawn" (safe when the parent already runs torch threads).
"""

from __future__ import annotations

import traceback
from multiprocessing import get_context
from multiprocessing.connection import Connection
from typing import Any, Protocol

import numpy as np

from datamil.sim_tasks.render import CameraConfig, EnvFrames
from datamil.sim_tasks.suites import EnvSpec

# obs (S, D) -- or, with cameras, {"state": (S, D), "image_*": (S, H, W, 3)} -- reward, success, truncated (S,)
Step = tuple[Any, np.ndarray, np.ndarray, np.ndarray]


class EnvPool(Protocol):
    def reset(self, slots: list[int], episodes: list[int]) -> np.ndarray:
        """Start episode episodes[i] in slot slots[i]; returns first observations (S, D_state)."""

    def step(self, slots: list[int], actions: np.ndarray) -> Step:
        """Apply actions (S, A) to the given slots."""

    def close(self) -> None: ...


class LocalEnvs:
    """n env slots in this process; with cameras, observations also carry each slot's rendered frames."""

    def __init__(self, spec: EnvSpec, n: int) -> None:
        self.seed = spec.seed
        self.envs = [spec.make() for _ in range(n)]
        cameras = spec.cameras
        self.frames = [EnvFrames(env, cameras) for env in self.envs] if cameras is not None else None

    def _obs(self, slots: list[int], states: list[np.ndarray]) -> Any:
        """(S, D) states, or {"state": (S, D), key: (S, H, W, 3)} when rendering."""
        if self.frames is None:
            return np.stack(states)
        frames = [self.frames[s].frames() for s in slots]
        return {"state": np.stack(states), **{k: np.stack([f[k] for f in frames]) for k in frames[0]}}

    def reset(self, slots: list[int], episodes: list[int]) -> Any:
        pairs = zip(slots, episodes, strict=True)
        return self._obs(
            slots, [self.envs[s].reset(seed=self.seed, options={"episode": e})[0] for s, e in pairs]
        )

    def step(self, slots: list[int], actions: np.ndarray) -> Step:
        obs, reward, success, truncated = [], [], [], []
        for slot, action in zip(slots, actions, strict=True):
            o, r, _, trunc, info = self.envs[slot].step(action)
            obs.append(o)
            reward.append(r)
            success.append(bool(info["success"]))
            truncated.append(trunc)
        return self._obs(slots, obs), np.asarray(reward, float), np.asarray(success), np.asarray(truncated)

    def close(self) -> None:
        for frames in self.frames or []:
            frames.close()
        for env in self.envs:
            env.close()


def _serve(conn: Connection, args: tuple) -> None:
    """Worker loop: build a LocalEnvs shard, then answer (method, slots, arg) until ("close", ...)."""
    try:
        envs = LocalEnvs(*args)
        conn.send(None)
        while True:
            cmd, slots, arg = conn.recv()
            if cmd == "close":
                break
            conn.send(getattr(envs, cmd)(slots, arg))
        envs.close()
    except Exception:  # report it to the parent instead of dying silently
        conn.send(RuntimeError(f"env worker failed:\n{traceback.format_exc()}"))
    finally:
        conn.close()


def _checked(message: Any) -> Any:
    if isinstance(message, Exception):
        raise message
    return message


class WorkerEnvs:
    """n env slots sharded over `workers` processes; slot s is local slot s // workers of worker s % workers."""

    def __init__(self, spec: EnvSpec, n: int, workers: int) -> None:
        ctx = get_context("spawn")
        self.workers = workers
        self.conns: list[Connection] = []
        self.procs = []
        for w in range(workers):
            parent, child = ctx.Pipe()
            shard = len(range(w, n, workers))
            proc = ctx.Process(target=_serve, args=(child, (spec, shard)), daemon=True)
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)
        for conn in self.conns:
            _checked(conn.recv())

    def _call(self, cmd: str, slots: list[int], arg: np.ndarray | list[int]) -> list[Any]:
        """Send each worker its part, then gather; returns per-worker answers and their slot positions."""
        parts = [[i for i, s in enumerate(slots) if s % self.workers == w] for w in range(self.workers)]
        busy = [w for w in range(self.workers) if parts[w]]
        for w in busy:
            local = [slots[i] // self.workers for i in parts[w]]
            self.conns[w].send((cmd, local, [arg[i] for i in parts[w]]))
        return [(parts[w], _checked(self.conns[w].recv())) for w in busy]

    def reset(self, slots: list[int], episodes: list[int]) -> Any:
        answers = self._call("reset", slots, episodes)
        return _gather(len(slots), [(positions, obs) for positions, obs in answers])

    def step(self, slots: list[int], actions: np.ndarray) -> Step:
        answers = self._call("step", slots, actions)
        parts = len(answers[0][1])
        return tuple(_gather(len(slots), [(p, a[i]) for p, a in answers]) for i in range(parts))  # type: ignore[return-value]

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(("close", [], []))
            except (BrokenPipeError, OSError):
                pass
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()


def _gather(n: int, answers: list[tuple[list[int], Any]]) -> Any:
    """Per-worker arrays (or dicts of arrays) at slot positions -> one (n, ...) array (or dict)."""
    first = answers[0][1]
    if isinstance(first, dict):
        return {k: _gather(n, [(p, value[k]) for p, value in answers]) for k in first}
    first = np.asarray(first)
    out = np.empty((n, *first.shape[1:]), first.dtype)
    for positions, value in answers:
        out[positions] = value
    return out


def make_pool(
    task: str,
    seed: int,
    stream: int,
    max_steps: int,
    n: int,
    workers: int,
    cameras: CameraConfig | None = None,
) -> EnvPool:
    """LocalEnvs for workers <= 1, else WorkerEnvs over min(workers, n) processes.

    With cameras the envs always live in worker processes (at least one): Mesa's EGL crashes a process
    that also loads TensorFlow, and GL contexts then never outlive the pool.
    """
    spec = EnvSpec(task, seed, stream, max_steps, cameras)
    if cameras is not None:
        return WorkerEnvs(spec, n, max(1, min(workers, n)))
    if workers <= 1 or n <= 1:
        return LocalEnvs(spec, n)
    return WorkerEnvs(spec, n, min(workers, n))
