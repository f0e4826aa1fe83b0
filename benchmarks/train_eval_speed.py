"""Speed of datamil's training loop and of its evaluation, each against the bare minimum.

Training bar: `datamil.training.train` reaches at least 80% of the steps/s of a plain `torch.optim.AdamW`
loop on the same model, batch size and pre-loaded tensors.
Evaluation bar: `datamil.sim_tasks.rollout.evaluate_policy` (a small MLP policy acting on 10 envs in lockstep)
loses at most 25% of the env-steps/s of raw MetaWorld stepping with a constant action (one env, no policy).
Image evaluation bar: the same with the default image policy (`policy=bc_image`, 84x84 `corner` camera,
fast rendering, as `data=metaworld_image` configures it) against raw stepping plus rendering of the same
frames by the same env worker processes, constant action, no policy.
Everything is warmed up, then timed in alternating rounds; the machine is shared, so per-round ratios
and medians over rounds are reported.

    python benchmarks/train_eval_speed.py [--part all|train|eval|eval-state|eval-image] [--quick]
        [--steps 150] [--rounds 9] [--threads 1]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datamil.cli import CONFIG_DIR
from datamil.data.schema import Episode, EpisodeMeta
from datamil.data.store import TrajectoryStore
from datamil.policies import POLICIES, Policy
from datamil.sim_tasks.envpool import make_pool
from datamil.sim_tasks.render import CameraConfig
from datamil.sim_tasks.rollout import (
    cores_left_to_workers,
    evaluate_policy,
    measure_env_speed,
    policy_cameras,
)
from datamil.sim_tasks.suites import STREAM_EVAL, make_env
from datamil.training import BatchSource, OptimConfig, lr_at, train

OBS_DIM, ACTION_DIM, BATCH = 39, 4, 256  # MetaWorld-sized state and action
CONFIG = Path(CONFIG_DIR)


def synthetic_store(n_episodes: int = 60, length: int = 180, seed: int = 0) -> TrajectoryStore:
    """About 11k steps of smooth random trajectories: the prior size in docs/notes.md, "MetaWorld prior size"."""
    rng = np.random.default_rng(seed)
    episodes = []
    for i in range(n_episodes):
        state = np.cumsum(rng.normal(0, 0.1, (length, OBS_DIM)), axis=0).astype(np.float32)
        action = np.tanh(state[:, :ACTION_DIM] + rng.normal(0, 0.1, (length, ACTION_DIM))).astype(np.float32)
        episodes.append(Episode({"state": state}, action, EpisodeMeta(f"ep{i}", "synthetic")))
    return TrajectoryStore.from_episodes(episodes)


def make_policy(name: str, store: TrajectoryStore) -> Policy:
    return POLICIES.get(name)(OBS_DIM, ACTION_DIM, state_stats=store.stats["synthetic"]["obs/state"])


def bare_loop(
    policy: Policy, source: BatchSource, steps: int, cfg: OptimConfig, clip_and_schedule: bool
) -> float:
    """Seconds for `steps` steps of a plain torch loop: module call, backward, (clip, schedule,) AdamW."""
    opt = torch.optim.AdamW(
        policy.parameters(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay
    )
    gen = torch.Generator().manual_seed(0)
    n = len(source.ids)
    start = time.perf_counter()
    for step in range(steps):
        rows = torch.randint(0, n, (BATCH,), generator=gen)
        batch = {k: v.index_select(0, rows) for k, v in source.tensors.items()}
        opt.zero_grad(set_to_none=True)
        loss = policy.loss_fn(batch).mean()
        loss.backward()
        if clip_and_schedule:
            torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
        opt.step()
        loss.item()
    return time.perf_counter() - start


def datamil_loop(policy: Policy, store: TrajectoryStore, steps: int, cfg: OptimConfig) -> float:
    """Seconds for a whole `train` call of `steps` steps (data gathering and setup included)."""
    start = time.perf_counter()
    train(policy, store, np.arange(store.n_steps), steps, BATCH, cfg, seed=0, progress=False)
    return time.perf_counter() - start


def measure(name: str, store: TrajectoryStore, steps: int, rounds: int) -> dict[str, float]:
    """Median steps/s of each loop and median per-round ratio, after one warm-up round of each.

    Loops run back to back within a round, in an order that rotates every round, and the ratio is
    taken within the round: load from other processes on a shared machine cancels out.
    """
    cfg = OptimConfig(total_steps=steps)
    policy = make_policy(name, store)
    source = BatchSource(policy, store, np.arange(store.n_steps))
    runs = {
        "datamil.train": lambda: datamil_loop(policy, store, steps, cfg),
        "bare AdamW": lambda: bare_loop(policy, source, steps, cfg, clip_and_schedule=False),
        "bare AdamW+clip+sched": lambda: bare_loop(policy, source, steps, cfg, clip_and_schedule=True),
    }
    for run in runs.values():
        run()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in runs}
    keys = list(runs)
    for r in range(rounds):
        for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
            times[key].append(runs[key]())
    out = {key: steps / statistics.median(ts) for key, ts in times.items()}
    for key in keys[1:]:
        out[f"ratio vs {key}"] = statistics.median(
            b / a for a, b in zip(times["datamil.train"], times[key], strict=True)
        )
    return out


def print_training_table(results: dict[str, dict[str, float]]) -> bool:
    """Markdown table of steps/s and paired ratios; returns whether every policy meets the 80% bar."""
    print(
        "| policy | datamil.train steps/s | bare AdamW steps/s | ratio | bare +clip+sched steps/s | ratio |"
    )
    print("|---|---|---|---|---|---|")
    ok = True
    for name, r in results.items():
        ratio, ratio_full = r["ratio vs bare AdamW"], r["ratio vs bare AdamW+clip+sched"]
        ok &= ratio >= 0.8
        print(
            f"| {name} | {r['datamil.train']:.0f} | {r['bare AdamW']:.0f} | {ratio:.2f} "
            f"| {r['bare AdamW+clip+sched']:.0f} | {ratio_full:.2f} |"
        )
    print("\nratio = median over rounds of (bare time / datamil time) within the round")
    print(f"bar (datamil.train >= 0.80 x bare AdamW): {'PASS' if ok else 'FAIL'}")
    return ok


def raw_lockstep_speed(task: str, n_envs: int, steps: int, max_steps: int) -> float:
    """Env-steps/s of n_envs envs stepped in turn under a zero action, reset at max_steps like evaluation:
    evaluate_policy's stepping pattern without the policy and the bookkeeping, to split the overhead."""
    envs = [make_env(task, 0, STREAM_EVAL, max_steps) for _ in range(n_envs)]
    for k, env in enumerate(envs):
        env.reset(seed=0, options={"episode": k})
    zero = np.zeros(envs[0].action_space.shape)
    start = time.perf_counter()
    for i in range(steps // n_envs):
        for k, env in enumerate(envs):
            if env.step(zero)[3]:
                env.reset(seed=0, options={"episode": n_envs * i + k})
    rate = n_envs * (steps // n_envs) / (time.perf_counter() - start)
    for env in envs:
        env.close()
    return rate


def measure_eval(task: str, episodes: int, max_steps: int, n_envs: int, rounds: int) -> dict[str, float]:
    """Median env-steps/s of evaluate_policy, raw stepping and raw lockstep, and median per-round ratios.

    The untrained MLP rarely succeeds, so episodes run to max_steps and every side steps the same count.
    """
    policy = POLICIES.get("bc_mlp")(OBS_DIM, ACTION_DIM)
    act = functools.partial(policy.act, None)
    steps = episodes * max_steps
    runs = {
        "eval": lambda: evaluate_policy(act, task, episodes, 0, max_steps, n_envs=n_envs).steps_per_s,
        "raw": lambda: measure_env_speed(task, steps),
        "lockstep": lambda: raw_lockstep_speed(task, n_envs, steps, max_steps),
    }
    for run in runs.values():
        run()  # warm-up: imports, MuJoCo model compilation, torch kernels
    rates: dict[str, list[float]] = {k: [] for k in runs}
    keys = list(runs)
    for r in range(rounds):
        for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
            rates[key].append(runs[key]())
    out = {key: statistics.median(v) for key, v in rates.items()}
    for a, b in (("eval", "raw"), ("lockstep", "raw"), ("eval", "lockstep")):
        out[f"{a}/{b}"] = statistics.median(x / y for x, y in zip(rates[a], rates[b], strict=True))
    return {**out, "steps": steps}


def print_eval_table(task: str, n_envs: int, r: dict[str, float]) -> bool:
    """Markdown row of env-steps/s and the overhead; returns whether it meets the 25% bar."""
    overhead = 1.0 - r["eval/raw"]
    ok = overhead <= 0.25
    print(
        "| task | n_envs | evaluate_policy env-steps/s | raw 1-env env-steps/s | ratio | overhead "
        "| bar <= 25% | raw lockstep env-steps/s | lockstep/raw | eval/lockstep |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {task} | {n_envs} | {r['eval']:.0f} | {r['raw']:.0f} | {r['eval/raw']:.2f} | {overhead:.0%} "
        f"| {'PASS' if ok else 'FAIL'} | {r['lockstep']:.0f} | {r['lockstep/raw']:.2f} "
        f"| {r['eval/lockstep']:.2f} |"
    )
    print(
        f"\n{r['steps']:.0f} env steps per side per round; ratios are medians over rounds of within-round "
        "ratios.\nraw = measure_env_speed (one env, zero action); lockstep = n_envs envs stepped in turn, zero "
        "action, no policy:\nlockstep/raw is the cost of the stepping pattern, eval/lockstep that of the policy "
        "and the bookkeeping."
    )
    return ok


# ------------------------------------------------------------------------------------ image evaluation
def default_image_policy() -> Policy:
    """Untrained `policy=bc_image` built as `data=metaworld_image` configures it (cameras, frame size)."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(str(CONFIG), version_base="1.3"):
        cfg = compose("cotrain", overrides=["data=metaworld_image", "policy=bc_image"])
    shapes = {key: (*cfg.data.image_size, 3) for key in cfg.policy.image_keys}
    policy = instantiate(cfg.policy)(OBS_DIM, ACTION_DIM, image_shapes=shapes)
    cameras = policy_cameras(functools.partial(policy.act, None))
    if cameras is None or cameras.fast != bool(cfg.data.render_fast):
        raise RuntimeError(f"evaluation would render {cameras}, not what data=metaworld_image renders")
    return policy.eval()


def raw_render_lockstep(
    task: str, episodes: int, max_steps: int, n_envs: int, workers: int, cameras: CameraConfig
) -> tuple[float, int]:
    """(env-steps/s, env steps) of evaluate_policy's own env pool under a zero action, no policy.

    Same worker processes, cameras, size and scene flags; every step renders the frames and sends them
    to this process, episodes restart as in evaluation. Timed like `EvalResult.wall_s`: from the first
    reset (renders included) to the last step; building the pool (spawning workers) is excluded.
    """
    n = max(1, min(n_envs, episodes))
    pool = make_pool(task, 0, STREAM_EVAL, max_steps, n, workers, cameras)
    zero = np.zeros((n, ACTION_DIM))
    try:
        start = time.perf_counter()
        pending = deque(range(episodes))
        active = list(range(n))
        pool.reset(active, [pending.popleft() for _ in active])
        steps = 0
        while active:
            _, _, _, truncated = pool.step(active, zero[: len(active)])
            steps += len(active)
            done = [s for s, cut in zip(active, truncated, strict=True) if cut]
            starting = done[: len(pending)]
            if starting:
                pool.reset(starting, [pending.popleft() for _ in starting])
            active = sorted((set(active) - set(done)) | set(starting))
        rate = steps / (time.perf_counter() - start)
    finally:
        pool.close()
    return rate, steps


def policy_call_ms(policy: Policy, n: int, cameras: CameraConfig, workers: int, calls: int = 20) -> float:
    """Milliseconds of one policy call on n observations, under the thread cap evaluate_policy applies."""
    rng = np.random.default_rng(0)
    obs = {"state": rng.normal(size=(n, OBS_DIM)).astype(np.float32)}
    for key in cameras.keys:
        obs[key] = rng.integers(0, 256, (n, *cameras.size, 3), dtype=np.uint8)
    with cores_left_to_workers(workers):
        policy.act(None, obs)
        start = time.perf_counter()
        for _ in range(calls):
            policy.act(None, obs)
        return (time.perf_counter() - start) / calls * 1000


def measure_image_eval(
    task: str, episodes: int, max_steps: int, n_envs: int, workers: int, rounds: int
) -> dict[str, Any]:
    """Median env-steps/s of image evaluation and of its raw baseline, and the median per-round ratio.

    Each round runs both sides once, in alternating order; the untrained policy does not succeed, so
    episodes run to max_steps and both sides step (and render) the same count, checked below.
    """
    policy = default_image_policy()
    act = functools.partial(policy.act, None)
    cameras = policy_cameras(act)
    evaluate_policy(act, task, 1, 0, 3, n_envs=1, workers=workers)  # warm-up: torch kernels, imports
    env_steps: dict[str, int] = {}

    def run_eval() -> float:
        result = evaluate_policy(act, task, episodes, 0, max_steps, n_envs=n_envs, workers=workers)
        env_steps["eval"] = result.env_steps
        return result.steps_per_s

    def run_raw() -> float:
        rate, env_steps["raw"] = raw_render_lockstep(task, episodes, max_steps, n_envs, workers, cameras)
        return rate

    runs = {"eval": run_eval, "raw": run_raw}
    rates: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(rounds):
        for key in list(runs)[:: 1 if r % 2 == 0 else -1]:
            rates[key].append(runs[key]())
    if env_steps["eval"] != env_steps["raw"]:
        print(f"note: evaluation stepped {env_steps['eval']} env steps, the baseline {env_steps['raw']}")
    out = {key: statistics.median(v) for key, v in rates.items()}
    out["eval/raw"] = statistics.median(e / r for e, r in zip(rates["eval"], rates["raw"], strict=True))
    out["rounds eval/raw"] = [e / r for e, r in zip(rates["eval"], rates["raw"], strict=True)]
    n = max(1, min(n_envs, episodes))
    pool_workers = max(1, min(workers, n))  # make_pool: rendering always runs in worker processes
    out["policy ms"] = policy_call_ms(policy, n, cameras, pool_workers)
    return {**out, "steps": env_steps["eval"], "cameras": cameras, "workers": pool_workers}


def print_image_eval_table(task: str, n_envs: int, r: dict[str, Any]) -> bool:
    """Markdown row of env-steps/s and the overhead; returns whether it meets the 25% bar."""
    overhead = 1.0 - r["eval/raw"]
    ok = overhead <= 0.25
    cams: CameraConfig = r["cameras"]
    views = ", ".join(f"{k}={c}" for k, c in cams.cameras)
    size = f"{cams.size[0]}x{cams.size[1]}{' fast' if cams.fast else ''}"
    share = r["policy ms"] / 1000 * r["raw"] / n_envs  # policy seconds per env step x raw env-steps/s
    print(
        "| task | cameras | n_envs | render workers | evaluate_policy env-steps/s "
        "| raw step+render env-steps/s | ratio | overhead | bar <= 25% | policy ms/call | policy share |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {task} | {views} {size} | {n_envs} | {r['workers']} | {r['eval']:.1f} | {r['raw']:.1f} "
        f"| {r['eval/raw']:.2f} | {overhead:.0%} | {'PASS' if ok else 'FAIL'} | {r['policy ms']:.1f} "
        f"| {share:.0%} |"
    )
    rounds = ", ".join(f"{x:.2f}" for x in r["rounds eval/raw"])
    print(
        f"\n{r['steps']:.0f} env steps (and as many rendered observations) per side per round; per-round "
        f"ratios {rounds}.\nraw = the same env pool (worker processes, cameras, size, scene flags) "
        "stepped with a zero action, every frame rendered\nand sent to this process, no policy; the "
        "overhead is policy inference on the batch (policy ms/call, once\nper step for all n_envs; policy "
        "share = its time relative to raw stepping, measured apart, free of the\nround-to-round noise) plus "
        "the evaluation's bookkeeping."
    )
    return ok


# --quick: fewer rounds and shorter episodes (training steps stay: short loops are all setup)
QUICK = dict(rounds=3, eval_episodes=10, eval_max_steps=200, eval_rounds=3, image_max_steps=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["all", "train", "eval", "eval-state", "eval-image"], default="all")
    parser.add_argument(
        "--quick", action="store_true", help=f"a smoke run (a few minutes, noisier; quote full runs): {QUICK}"
    )
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (the machine is shared)"
    )
    parser.add_argument("--policies", nargs="+", default=POLICIES.names())
    parser.add_argument("--eval-task", default="metaworld/reach")
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument(
        "--eval-max-steps", type=int, default=500
    )  # datamil.evaluate's default (datamil/configs/eval)
    parser.add_argument("--eval-envs", type=int, default=10)
    parser.add_argument("--eval-rounds", type=int, default=5)
    parser.add_argument("--image-task", default=None, help="default: --eval-task")
    parser.add_argument("--image-episodes", type=int, default=10)
    parser.add_argument("--image-max-steps", type=int, default=50)  # rendering makes long episodes slow
    # datamil.evaluate's n_envs and workers (datamil/configs/eval)
    parser.add_argument("--image-envs", type=int, default=10)
    parser.add_argument("--image-workers", type=int, default=1)
    parser.add_argument("--image-rounds", type=int, default=3)
    parser.add_argument(
        "--image-threads",
        type=int,
        default=torch.get_num_threads(),
        help="torch threads for the image rows (default: torch's own default, what datamil.evaluate runs with)",
    )
    args = parser.parse_args()
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, min(getattr(args, key), value))
    torch.set_num_threads(args.threads)
    if args.part in ("all", "train"):
        store = synthetic_store()
        print(
            f"training speed: {store.n_steps} steps of data, batch {BATCH}, {args.steps} steps x "
            f"{args.rounds} rounds, {torch.get_num_threads()} thread(s), torch {torch.__version__}\n"
        )
        print_training_table({name: measure(name, store, args.steps, args.rounds) for name in args.policies})
    if args.part in ("all", "eval", "eval-state"):
        print(
            f"\nevaluation speed: bc_mlp policy, {args.eval_episodes} episodes x {args.eval_max_steps} steps, "
            f"{args.eval_rounds} rounds, {torch.get_num_threads()} thread(s)\n"
        )
        result = measure_eval(
            args.eval_task, args.eval_episodes, args.eval_max_steps, args.eval_envs, args.eval_rounds
        )
        print_eval_table(args.eval_task, args.eval_envs, result)
    if args.part in ("all", "eval", "eval-image"):
        task = args.image_task or args.eval_task
        torch.set_num_threads(args.image_threads)
        print(
            f"\nimage evaluation speed: bc_image policy (data=metaworld_image defaults), {args.image_episodes} "
            f"episodes x {args.image_max_steps} steps, {args.image_rounds} rounds, torch threads "
            f"{torch.get_num_threads()} (evaluate_policy caps them to the cores its env workers leave)\n"
        )
        result = measure_image_eval(
            task,
            args.image_episodes,
            args.image_max_steps,
            args.image_envs,
            args.image_workers,
            args.image_rounds,
        )
        print_image_eval_table(task, args.image_envs, result)


if __name__ == "__main__":
    main()
