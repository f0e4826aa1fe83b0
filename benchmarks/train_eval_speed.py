"""Speed of datamil's functional training loop against a bare torch loop (training half).

Bar: `datamil.training.train` reaches at least 80% of the steps/s of a plain `torch.optim.AdamW` loop on the
same model, batch size and pre-loaded tensors. Both loops are warmed up, then timed in alternating rounds
(the machine is shared, so the median over rounds is reported).

    python benchmarks/train_eval_speed.py [--steps 300] [--rounds 5] [--threads 1] [--policies bc_mlp ...]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from datamil.data.schema import Episode, EpisodeMeta
from datamil.data.store import TrajectoryStore
from datamil.policies import POLICIES, Policy
from datamil.training import BatchSource, OptimConfig, lr_at, train

OBS_DIM, ACTION_DIM, BATCH = 39, 4, 256  # MetaWorld-sized state and action


def synthetic_store(n_episodes: int = 60, length: int = 180, seed: int = 0) -> TrajectoryStore:
    """About 11k steps of smooth random trajectories: the size of the MetaWorld prior in NOTES.md."""
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (the machine is shared)"
    )
    parser.add_argument("--policies", nargs="+", default=POLICIES.names())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    store = synthetic_store()
    print(
        f"training speed: {store.n_steps} steps of data, batch {BATCH}, {args.steps} steps x {args.rounds} "
        f"rounds, {torch.get_num_threads()} thread(s), torch {torch.__version__}\n"
    )
    print_training_table({name: measure(name, store, args.steps, args.rounds) for name in args.policies})


if __name__ == "__main__":
    main()
