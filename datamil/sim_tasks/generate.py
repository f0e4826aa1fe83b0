"""Scripted-expert data: a prior mixing successes and failures, and clean target demonstrations.

Prior episodes imitate messy real data: Gaussian action noise at a few levels, "perturbed" experts
that now and then hold a random action for a burst of steps, and episodes cut short. Every episode is
a pure function of (task, seed, episode index, settings), so the result does not depend on the
number of worker processes or on the order in which they finish.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from multiprocessing import get_context
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from datamil.data.schema import OBS_STATE, Episode, EpisodeMeta
from datamil.errors import DatamilError
from datamil.sim_tasks.render import CameraConfig, EnvFrames
from datamil.sim_tasks.suites import (
    STREAM_PRIOR,
    STREAM_TARGET,
    episode_rng,
    make_env,
    make_expert,
    split_task,
)

NOISE_PURPOSE = 1  # episode_rng purpose for everything random in an episode except its start state
BURST_RATE = 0.02  # per-step chance that a perturbed expert starts a random-action burst
BURST_STEPS = (5, 20)  # burst length range, inclusive


@dataclass(frozen=True)
class EpisodeSpec:
    """Everything that decides one generated episode."""

    task: str
    seed: int
    index: int
    stream: int
    noise: float  # std of the Gaussian added to every action dimension
    perturb_prob: float  # chance that the episode's expert makes random-action bursts
    truncate_prob: float  # chance that the episode is cut at 20-80% of its length
    max_steps: int
    post_success_steps: int  # steps kept after the first success
    cameras: CameraConfig | None = None  # rendered image observations; None = state only

    @property
    def episode_id(self) -> str:
        tag = {STREAM_PRIOR: "", STREAM_TARGET: "/target"}.get(self.stream, f"/stream{self.stream}")
        return f"{self.task}{tag}/s{self.seed}/{self.index}"


def instruction(task: str) -> str:
    """Language instruction from the task name: "metaworld/pick-place-wall" -> "pick place wall"."""
    return split_task(task)[1].replace("-", " ")


# ------------------------------------------------------------------------------------------ one episode
_ENVS: dict[tuple, tuple] = {}  # per process: (task, stream, max_steps, cameras) -> (env, expert, frames)
_MAX_CACHED_ENVS = 8


def _env_and_expert(spec: EpisodeSpec) -> tuple:
    """Envs are slow to build (~0.2 s) and reset to any episode exactly, so each process keeps a few.

    Returns (env, expert, EnvFrames or None); renderers are closed with their env.
    """
    key = (spec.task, spec.stream, spec.max_steps, spec.cameras)
    if key not in _ENVS:
        if len(_ENVS) >= _MAX_CACHED_ENVS:
            _close(_ENVS.pop(next(iter(_ENVS))))
        env = make_env(spec.task, spec.seed, spec.stream, spec.max_steps)
        frames = EnvFrames(env, spec.cameras) if spec.cameras is not None else None
        _ENVS[key] = (env, make_expert(spec.task), frames)
    return _ENVS[key]


def _close(entry: tuple) -> None:
    if entry[2] is not None:
        entry[2].close()
    entry[0].close()


def close_cached_envs() -> None:
    """Close this process's cached envs and renderers (an open EGL context complains at exit)."""
    while _ENVS:
        _close(_ENVS.popitem()[1])


def _burst_step(
    rng: np.random.Generator, burst: tuple[int, np.ndarray | None], dim: int
) -> tuple[int, np.ndarray | None]:
    """Advance the perturbed expert's burst state: (steps left, held random action)."""
    left, held = burst
    if left > 0:
        return left - 1, held
    if rng.random() < BURST_RATE:
        return int(rng.integers(BURST_STEPS[0], BURST_STEPS[1] + 1)) - 1, rng.uniform(-1, 1, dim)
    return 0, None


def _rollout(spec: EpisodeSpec) -> dict[str, np.ndarray]:
    """Step the noisy expert; arrays over T steps: state (T, 39), action/expert (T, 4), reward, success,
    and one (T, H, W, 3) uint8 array per camera key (the frame of each step's state) when cameras are set."""
    env, expert, camera = _env_and_expert(spec)
    rng = episode_rng(spec.task, spec.seed, spec.stream, spec.index, NOISE_PURPOSE)
    # Draw every per-episode choice up front and unconditionally, so that changing one probability
    # leaves the other draws (and hence the kept prefix of a cut episode) unchanged.
    perturbed = rng.random() < spec.perturb_prob
    cut_at, cut = rng.uniform(0.2, 0.8), rng.random() < spec.truncate_prob
    obs, _ = env.reset(seed=spec.seed, options={"episode": spec.index})
    frames = camera.frames() if camera is not None else {}
    rows: dict[str, list] = {k: [] for k in ("state", "action", "expert", "reward", "success", "perturbed")}
    images: dict[str, list] = {key: [] for key in (spec.cameras.keys if spec.cameras else [])}
    burst: tuple[int, np.ndarray | None] = (0, None)
    first_success = None
    for t in range(spec.max_steps):
        clean = expert(obs)
        noise = rng.normal(0.0, 1.0, clean.shape) * spec.noise
        burst = _burst_step(rng, burst, len(clean)) if perturbed else burst
        action = np.clip((clean if burst[1] is None else burst[1]) + noise, -1.0, 1.0)
        next_obs, reward, _, truncated, info = env.step(action)
        values = (obs, action, clean, reward, bool(info["success"]), burst[1] is not None)
        for key, value in zip(rows, values, strict=True):
            rows[key].append(value)
        for key, frame in frames.items():
            images[key].append(frame)
        obs = next_obs
        frames = camera.frames() if camera is not None else {}
        if first_success is None and info["success"]:
            first_success = t
        if truncated or (first_success is not None and t >= first_success + spec.post_success_steps):
            break
    arrays = {k: np.asarray(v) for k, v in rows.items()}
    arrays.update({key: np.stack(value) for key, value in images.items()})
    if cut:
        arrays = {k: v[: max(1, int(cut_at * len(v)))] for k, v in arrays.items()}
    arrays["cut"] = np.full(len(arrays["action"]), cut)
    return arrays


def run_episode(spec: EpisodeSpec) -> Episode:
    """Generate the episode `spec` describes; a pure function of `spec`."""
    arrays = _rollout(spec)
    n = len(arrays["action"])
    success = bool(arrays["success"].any())
    terminal = np.zeros(n, bool)
    terminal[-1] = success and bool(arrays["success"][-1])  # ended in a success state, not by a cut
    observations = {OBS_STATE: arrays["state"].astype(np.float32)}
    observations.update({key: arrays[key] for key in (spec.cameras.keys if spec.cameras else [])})
    return Episode(
        observations=observations,
        actions=arrays["action"].astype(np.float32),
        meta=EpisodeMeta(spec.episode_id, spec.task.partition("/")[0], spec.task, success),
        rewards=arrays["reward"].astype(np.float32),
        is_terminal=terminal,
        language_instruction=instruction(spec.task),
        extras={
            "success": arrays["success"],
            "expert_action": arrays["expert"].astype(np.float32),
            "noise_level": np.full(n, spec.noise, np.float32),
            "perturbed": arrays["perturbed"],  # steps where a random burst replaced the expert
            "cut": arrays["cut"],  # the whole episode was cut short
        },
    )


def _run_chunk(specs: Sequence[EpisodeSpec]) -> list[Episode]:
    episodes = [run_episode(spec) for spec in specs]
    if any(spec.cameras is not None for spec in specs):
        close_cached_envs()  # no GL context outlives the chunk (workers exit without running __del__ cleanly)
    return episodes


# ------------------------------------------------------------------------------------------ many episodes
def _chunks(specs: Sequence[EpisodeSpec], size: int) -> list[list[EpisodeSpec]]:
    """Consecutive runs of at most `size` specs that never mix tasks (one env build per chunk)."""
    parts: list[list[EpisodeSpec]] = []
    for spec in specs:
        if not parts or len(parts[-1]) >= size or parts[-1][-1].task != spec.task:
            parts.append([])
        parts[-1].append(spec)
    return parts


def run_specs(specs: Sequence[EpisodeSpec], workers: int = 2, progress: bool = True) -> list[Episode]:
    """Episodes for `specs`, in order. Chunks of one task's consecutive specs go to a process pool
    started with "spawn" (call it under `if __name__ == "__main__":` in scripts); workers=1 runs here,
    except with cameras: rendering always runs in worker processes, because Mesa's EGL and TensorFlow
    (which writes the RLDS files) crash when they share a process (measured: a segfault either way round)."""
    bar = tqdm(total=len(specs), desc="episodes", unit="ep", disable=not progress)
    parts = _chunks(specs, max(1, math.ceil(len(specs) / (max(workers, 1) * 4))))
    results: list[list[Episode]] = []
    renders = any(spec.cameras is not None for spec in specs)
    workers = max(workers, 1) if renders else workers
    if workers <= 1 and not renders:
        for part in parts:
            results.append(_run_chunk(part))
            bar.update(len(part))
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            for done in pool.map(_run_chunk, parts):
                results.append(done)
                bar.update(len(done))
    bar.close()
    return [episode for part in results for episode in part]


def plan_episodes(
    tasks: Sequence[str],
    episodes_per_task: int,
    seed: int,
    noise_levels: Sequence[float] = (0.1, 0.5, 1.0),
    max_steps: int = 200,
    truncate_prob: float = 0.1,
    perturb_prob: float = 0.25,
    post_success_steps: int = 5,
    cameras: CameraConfig | None = None,
) -> list[EpisodeSpec]:
    """Task-major specs; episode i of a task gets noise level noise_levels[i % len(noise_levels)]."""
    for task in tasks:
        split_task(task)  # fail early, with the valid names, on a typo
    return [
        EpisodeSpec(
            task=task,
            seed=seed,
            index=i,
            stream=STREAM_PRIOR,
            noise=float(noise_levels[i % len(noise_levels)]),
            perturb_prob=perturb_prob,
            truncate_prob=truncate_prob,
            max_steps=max_steps,
            post_success_steps=post_success_steps,
            cameras=cameras,
        )
        for task in tasks
        for i in range(episodes_per_task)
    ]


def generate_episodes(
    tasks: Sequence[str],
    episodes_per_task: int,
    seed: int,
    workers: int = 2,
    progress: bool = True,
    **plan: Any,
) -> list[Episode]:
    """Prior data: noisy, perturbed and truncated scripted-expert episodes, successes and failures.

    Returns len(tasks) * episodes_per_task episodes, task-major; ids "<task>/s<seed>/<i>".
    meta.success says whether the kept steps reach the task's success. extras, all (T,) or (T, 4):
    "success", the clean "expert_action", "noise_level", "perturbed" (a random burst acted) and "cut".
    plan: the settings of `plan_episodes` (noise_levels, max_steps, truncate_prob, perturb_prob,
    post_success_steps, and cameras: also render these into image observations (T, H, W, 3) uint8).
    """
    return run_specs(plan_episodes(tasks, episodes_per_task, seed, **plan), workers, progress)


def generate_target_demos(
    task: str,
    n_demos: int,
    seed: int,
    noise: float = 0.05,
    max_steps: int = 500,
    max_attempts: int | None = None,
    workers: int = 1,
    progress: bool = False,
    cameras: CameraConfig | None = None,
) -> list[Episode]:
    """`n_demos` successful low-noise expert demos of `task`, from their own stream of start states.

    Candidates 0, 1, 2, ... are tried in order and the first n_demos successes kept, so the result
    does not depend on batching; at most `max_attempts` (default 2 * n_demos + 10) are tried.
    """
    cap = max_attempts if max_attempts is not None else 2 * n_demos + 10
    base = EpisodeSpec(task, seed, 0, STREAM_TARGET, noise, 0.0, 0.0, max_steps, 0, cameras)
    split_task(task)
    kept: list[Episode] = []
    tried = 0
    while len(kept) < n_demos and tried < cap:
        batch = min(cap - tried, max(workers * 2, math.ceil((n_demos - len(kept)) * 1.2)))
        specs = [replace(base, index=i) for i in range(tried, tried + batch)]
        kept += [ep for ep in run_specs(specs, workers, progress) if ep.meta.success]
        tried += batch
    if len(kept) < n_demos:
        raise DatamilError(
            f"only {len(kept)} of {n_demos} target demos of {task!r} succeeded in {tried} attempts "
            f"(noise {noise}, max_steps {max_steps}); raise max_attempts or max_steps, or lower the noise"
        )
    return kept[:n_demos]


def split_target(episodes: Sequence[Episode], n_val: int, seed: int) -> tuple[list[Episode], list[Episode]]:
    """Seeded disjoint (train, val) split of target demos; each part keeps the input order."""
    if not 0 <= n_val <= len(episodes):
        raise DatamilError(
            f"n_val={n_val} but there are {len(episodes)} target demos; use 0 <= n_val <= that"
        )
    val_idx = set(np.random.default_rng(seed).permutation(len(episodes))[:n_val].tolist())
    train = [ep for i, ep in enumerate(episodes) if i not in val_idx]
    val = [ep for i, ep in enumerate(episodes) if i in val_idx]
    return train, val
