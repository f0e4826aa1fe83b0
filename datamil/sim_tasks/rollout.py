"""Seeded, batched policy evaluation in simulation.

Several envs step in lockstep so the policy is called once per step on a batch (B, D_state).
Episode k always starts from the layout of (task, seed, k), whichever env slot or worker runs it,
so two policies evaluated with the same seed face the same start states. With workers > 1 the envs
live in worker processes (a shard each) and the policy stays in this process: act_fn need not be
picklable, and the policy runs once per step on the whole batch.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import binomtest
from tqdm.auto import tqdm

from datamil.data.schema import OBS_STATE
from datamil.errors import DatamilError
from datamil.sim_tasks.envpool import EnvPool, make_pool
from datamil.sim_tasks.render import CameraConfig
from datamil.sim_tasks.suites import STREAM_EVAL, make_env, make_expert

ActFn = Callable[[dict[str, np.ndarray]], np.ndarray]  # {"state": (B, D)} -> (B, A) or (B, H, A)


def wilson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials (scipy's): honest at small n and at 0% / 100%,
    where the normal (Wald) interval collapses to a point. (Wilson 1927; Brown, Cai, DasGupta 2001.)"""
    if n <= 0:
        return 0.0, 1.0
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return max(0.0, float(ci.low)), min(1.0, float(ci.high))


@dataclass
class EvalResult:
    """Per-episode outcomes of one evaluation; arrays are (N,) in episode order."""

    task: str
    seed: int
    success: np.ndarray  # (N,) bool: info["success"] at any step
    length: np.ndarray  # (N,) int: steps until the first success, else max_steps
    returns: np.ndarray  # (N,) float: summed reward over those steps
    env_steps: int = 0
    wall_s: float = 0.0  # time of the stepping loop, env construction excluded
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def n_episodes(self) -> int:
        return len(self.success)

    @property
    def success_rate(self) -> float:
        return float(np.mean(self.success)) if self.n_episodes else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        """Wilson 95% interval of the success rate."""
        return wilson_interval(int(np.sum(self.success)), self.n_episodes)

    @property
    def mean_length(self) -> float:
        return float(np.mean(self.length)) if self.n_episodes else 0.0

    @property
    def steps_per_s(self) -> float:
        return self.env_steps / self.wall_s if self.wall_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready summary plus the per-episode lists."""
        low, high = self.interval
        return {
            "task": self.task,
            "seed": self.seed,
            "n_episodes": self.n_episodes,
            "success_rate": self.success_rate,
            "ci_low": low,
            "ci_high": high,
            "mean_length": self.mean_length,
            "mean_return": float(np.mean(self.returns)) if self.n_episodes else 0.0,
            "env_steps": self.env_steps,
            "wall_s": self.wall_s,
            "steps_per_s": self.steps_per_s,
            "settings": dict(self.settings),
            "success": self.success.astype(bool).tolist(),
            "length": self.length.astype(int).tolist(),
            "returns": self.returns.astype(float).tolist(),
        }


class Lockstep:
    """Book-keeping for N episodes run through S env slots: which slot runs which episode, the
    actions each slot still has queued from its last action chunk, and the per-episode outcomes."""

    def __init__(self, pool: EnvPool, n_episodes: int, n_slots: int, execute_steps: int) -> None:
        self.pool, self.execute_steps = pool, execute_steps
        self.pending = deque(range(n_episodes))
        self.episode = np.full(n_slots, -1)
        self.queues: list[deque] = [deque() for _ in range(n_slots)]
        self.obs: np.ndarray | None = None  # (S, D_state)
        self.images: dict[str, np.ndarray] = {}  # key -> (S, H, W, 3) uint8 when the pool renders
        self.success = np.zeros(n_episodes, bool)
        self.length = np.zeros(n_episodes, np.int64)
        self.returns = np.zeros(n_episodes)
        self.active: list[int] = []
        self.env_steps = 0
        self._start(list(range(min(n_slots, n_episodes))))

    def _start(self, slots: list[int]) -> None:
        """Give each slot the next pending episode; slots left without one retire."""
        starting = slots[: len(self.pending)]  # as many slots as there are episodes left
        episodes = [self.pending.popleft() for _ in starting]
        self.active = sorted((set(self.active) - set(slots)) | set(starting))
        if not starting:
            return
        self._store(starting, self.pool.reset(starting, episodes))
        self.episode[starting] = episodes
        for s in starting:
            self.queues[s].clear()

    def _store(self, slots: list[int], obs: np.ndarray | dict[str, np.ndarray]) -> None:
        """Keep the slots' new observations: (S, D) states, or a dict with "state" and image keys."""
        images = obs if isinstance(obs, dict) else {}
        state = images.pop(OBS_STATE) if images else obs
        if self.obs is None:
            self.obs = np.zeros((len(self.episode), state.shape[1]))
            self.images = {k: np.zeros((len(self.episode), *v.shape[1:]), v.dtype) for k, v in images.items()}
        self.obs[slots] = state
        for key, value in images.items():
            self.images[key][slots] = value

    def plan(self, act_fn: ActFn) -> None:
        """Query the policy, batched, for every active slot whose action queue ran dry."""
        need = [s for s in self.active if not self.queues[s]]
        if not need:
            return
        obs = {OBS_STATE: self.obs[need].astype(np.float32), **{k: v[need] for k, v in self.images.items()}}
        actions = np.asarray(act_fn(obs))
        if actions.ndim == 2:
            actions = actions[:, None]
        if actions.ndim != 3 or len(actions) != len(need):
            raise DatamilError(
                f"act_fn returned shape {actions.shape} for {len(need)} observations; "
                "expected (B, A) actions or (B, H, A) action chunks"
            )
        for s, chunk in zip(need, actions[:, : self.execute_steps], strict=True):
            self.queues[s].extend(chunk)

    def advance(self) -> int:
        """One env step for every active slot; returns how many episodes finished."""
        slots = list(self.active)
        actions = np.stack([self.queues[s].popleft() for s in slots])
        obs, reward, success, truncated = self.pool.step(slots, actions)
        self.env_steps += len(slots)
        self._store(slots, obs)
        episodes = self.episode[slots]
        self.returns[episodes] += reward
        self.length[episodes] += 1
        self.success[episodes] |= success
        done = [s for s, ok, cut in zip(slots, success, truncated, strict=True) if ok or cut]
        if done:
            self._start(done)
        return len(done)


def evaluate_policy(
    act_fn: ActFn,
    task: str,
    n_episodes: int = 50,
    seed: int = 0,
    max_steps: int = 500,
    n_envs: int = 10,
    workers: int = 1,
    execute_steps: int = 1,
    stream: int = STREAM_EVAL,
    progress: bool = False,
    cameras: CameraConfig | None = None,
) -> EvalResult:
    """Success rate of `act_fn` on episodes 0..n_episodes-1 of (task, seed).

    act_fn: {"state": (B, D_state) float32} -> (B, A) actions or (B, H, A) chunks, of which the first
    `execute_steps` run before the slot asks again. It must be stateless across calls (B changes as
    episodes end). For a datamil Policy use `functools.partial(policy.act, params)`.
    An episode ends at its first success or after max_steps.
    cameras: render these views into the observations ({"image_primary": (B, H, W, 3) uint8, ...}).
    Default: what the policy behind act_fn asks for through a `camera_config()` method (image
    policies; `functools.partial(policy.act, params)` exposes it), else nothing is rendered.
    While envs run in worker processes, torch in this process uses only the cores they leave free
    (`cores_left_to_workers`).
    """
    n_slots = max(1, min(n_envs, n_episodes))
    cameras = cameras if cameras is not None else policy_cameras(act_fn)
    pool = make_pool(task, seed, stream, max_steps, n_slots, workers, cameras)
    bar = tqdm(total=n_episodes, desc=f"eval {task}", unit="ep", disable=not progress)
    try:
        with cores_left_to_workers(getattr(pool, "workers", 0)):
            start = time.perf_counter()
            run = Lockstep(pool, n_episodes, n_slots, max(1, execute_steps))
            while run.active:
                run.plan(act_fn)
                bar.update(run.advance())
            wall = time.perf_counter() - start
    finally:
        bar.close()
        pool.close()
    settings = dict(
        n_envs=n_slots, workers=workers, execute_steps=execute_steps, max_steps=max_steps, stream=stream
    )
    if cameras is not None:
        settings["cameras"] = cameras.to_dict()
    return EvalResult(task, seed, run.success, run.length, run.returns, run.env_steps, wall, settings)


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


@contextmanager
def cores_left_to_workers(workers: int) -> Iterator[None]:
    """Cap torch's intra-op threads in this process to the cores `workers` env processes leave free.

    The policy and the worker envs take turns, yet torch's OpenMP threads spin-wait after each call
    and fight the workers' software rasterizer (Mesa llvmpipe) and other load for the cores. Measured
    on 2 shared cores with the 84x84 image policy and one render worker (benchmarks/train_eval_speed.py):
    with 2 torch threads a policy call on 10 envs took 149 ms and evaluation ran 42% below raw stepping
    plus rendering; with 1 thread, 5 ms and 16% (within that run's noise; inference alone is 2%).
    A process without torch is left alone.
    """
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None and workers > 0 else 0
    cap = max(1, usable_cores() - workers)
    if before <= cap:
        yield
        return
    torch.set_num_threads(cap)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def policy_cameras(act_fn: ActFn) -> CameraConfig | None:
    """The views the object behind act_fn (a bound method, or a partial of one) needs rendered, if any."""
    func = getattr(act_fn, "func", act_fn)
    owner = getattr(func, "__self__", None)
    config = getattr(owner, "camera_config", None)
    wanted = config() if callable(config) else None  # None: the policy reads no camera
    return CameraConfig.of(**wanted) if wanted else None


def expert_act_fn(task: str) -> ActFn:
    """The task's scripted expert as a batched act_fn: {"state": (B, D)} -> (B, A)."""
    expert = make_expert(task)

    def act(obs: dict[str, np.ndarray]) -> np.ndarray:
        return np.stack([expert(np.asarray(o, np.float64)) for o in obs[OBS_STATE]])

    return act


def measure_env_speed(
    task: str, steps: int = 2000, seed: int = 0, action: Sequence[float] | None = None
) -> float:
    """Raw env steps per second of one env under a constant action (default zeros), resets included:
    the ceiling that evaluation overhead is measured against."""
    env = make_env(task, seed, STREAM_EVAL)
    act = np.zeros(env.action_space.shape) if action is None else np.asarray(action, float)
    env.reset()
    start = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(act)
        if terminated or truncated:
            env.reset()
    rate = steps / (time.perf_counter() - start)
    env.close()
    return rate
