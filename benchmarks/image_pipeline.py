"""Image observations end to end: rendering, decoding, training and estimator costs, and image-BC success.

    python benchmarks/image_pipeline.py table     # one table: render fps, decode+augment rate, train
                                                  # step rate vs bare, estimator modes (cost, memory, LDS)
    python benchmarks/image_pipeline.py success   # image BC co-trained on target + whole prior, 2 targets
    python benchmarks/image_pipeline.py success --selection frozen end_to_end   # ... + each mode's selection

Data is the `data=metaworld_image` config (generated and cached under $DATAMIL_CACHE on first use).
Numbers depend on the machine's load: run on an otherwise idle machine for timings you quote.
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

from datamil.cli import CONFIG_DIR
from datamil.data.sources import MetaWorldSource, TaskData
from datamil.policies.build import build_policy
from datamil.training import OptimConfig, train
from datamil.training.cotraining import build_mixture

TARGETS = ("metaworld/drawer-close", "metaworld/button-press-topdown")
CONFIG = Path(CONFIG_DIR)


def load_data(task: str) -> TaskData:
    """The metaworld_image data config, as Hydra composes it."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(str(CONFIG), version_base="1.3"):
        cfg = compose("cotrain", overrides=["data=metaworld_image"])
    source: MetaWorldSource = instantiate(cfg.data)
    return source.load(task)


def image_policy_factory(**overrides):
    """The bc_image policy config (cameras from the data config) as a factory, like hydra instantiate."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(str(CONFIG), version_base="1.3"):
        cfg = compose("cotrain", overrides=["data=metaworld_image", "policy=bc_image"])
    return functools.partial(instantiate(cfg.policy), **overrides)


# ------------------------------------------------------------------------------------------- success
def select_prior(data: TaskData, mode: str, args: argparse.Namespace) -> tuple[list[str], float]:
    """(episode ids, seconds): the top `budget` of prior trajectories by the image estimator in `mode`."""
    from datamil.datamodels.proxy import ProxyConfig, smooth_optim
    from datamil.selection.aggregate import per_trajectory
    from datamil.selection.strategies import top_k

    proxy = ProxyConfig(optim=smooth_optim(), batch_size=args.proxy_batch).with_steps(args.proxy_steps)
    cache = str(Path(args.cache or "/tmp") / f"image_features_success_{time.time_ns()}")
    out = _estimate(mode, data.prior, data.target_val, data.target_train, proxy, args.fit_steps, cache)
    keep = top_k(per_trajectory(out["scores"], data.prior), args.budget)
    return [data.prior.episodes.episode_id[i] for i in keep], out["wall_s"]


def cotrain_and_evaluate(
    task: str,
    steps: int,
    batch: int,
    seed: int,
    episodes: int,
    max_steps: int,
    image_size: int,
    selection: str = "all",
    args: argparse.Namespace | None = None,
) -> dict:
    """Image BC on target-train + the prior (all of it, or one estimator mode's selection; 1:1 batches),
    then seeded rollouts rendered alike."""
    from datamil.sim_tasks.rollout import evaluate_policy

    data = load_data(task)
    chosen, select_s = list(data.prior.episodes.episode_id), 0.0
    if selection != "all":
        chosen, select_s = select_prior(data, selection, args)
    mixture = build_mixture(data.target_train, data.prior, chosen, 1.0, 1.0, batch, seed)
    policy = build_policy(image_policy_factory(image_size=(image_size, image_size)), mixture.store)
    optim = OptimConfig(lr=1e-3, total_steps=steps, warmup_steps=min(200, steps // 10))
    start = time.perf_counter()
    result = train(policy, mixture.store, mixture.sampler, steps, batch, optim, seed, progress=False)
    train_s = time.perf_counter() - start
    policy.eval()
    act = functools.partial(policy.act, None)
    evaluation = evaluate_policy(act, task, episodes, seed, max_steps, n_envs=10, workers=2)
    low, high = evaluation.interval
    return {
        "task": task,
        "selection": selection,
        "n_selected": len(chosen),
        "select_s": select_s,
        "success": evaluation.success_rate,
        "ci95": [low, high],
        "episodes": episodes,
        "eval_seed": seed,
        "train_seed": seed,
        "steps": steps,
        "batch": batch,
        "image_size": image_size,
        "final_loss": float(np.mean(result.losses[-50:])),
        "train_s": train_s,
        "eval_s": evaluation.wall_s,
        "data": data.summary(),
    }


def success(args: argparse.Namespace) -> None:
    rows = [
        cotrain_and_evaluate(
            t, args.steps, args.batch, args.seed, args.episodes, args.max_steps, args.image_size, sel, args
        )
        for t in args.tasks
        for sel in args.selection
    ]
    print(
        "| target | prior data | success | 95% CI | episodes | train steps x batch | final loss | select s | train s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['task']} | {r['selection']} ({r['n_selected']}) | {r['success']:.0%} | "
            f"[{r['ci95'][0]:.0%}, {r['ci95'][1]:.0%}] | {r['episodes']} (seed {r['eval_seed']}) | "
            f"{r['steps']} x {r['batch']} | {r['final_loss']:.3f} | {r['select_s']:.0f} | {r['train_s']:.0f} |"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


# ------------------------------------------------------------------------------------------- table
def _render_rates(frames: int) -> tuple[float, float, float]:
    """Frames/s of MuJoCo's default scene (4x multisampling), fast flags alone, fast + no multisampling."""
    from datamil.sim_tasks.render import measure_render_fps

    task = TARGETS[0]
    return (
        measure_render_fps(task, False, frames, samples=4),
        measure_render_fps(task, True, frames, samples=4),
        measure_render_fps(task, True, frames, samples=0),
    )


def _spawned(fn, *args):
    """fn(*args) in a fresh spawn process: (result, that process's peak RSS in MiB)."""
    with get_context("spawn").Pool(1) as pool:
        return pool.apply(_with_peak, (fn, *args))


def _with_peak(fn, *args):
    torch.set_num_threads(2)
    result = fn(*args)
    return result, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def decode_and_augment_rates(data: TaskData, batch: int, n: int) -> tuple[float, float]:
    """(frames/s decoded from the PNG RLDS files, frames/s gathered from the store and randomly shifted)."""
    from datamil.data.rlds import read_rlds
    from datamil.policies.vision import random_shift

    rlds_dirs = sorted(Path(data.prior.arrays["action"].filename).parents[1].glob("rlds/*/*"))
    start, frames = time.perf_counter(), 0
    for episode in read_rlds(rlds_dirs[0], progress=False, max_episodes=20):
        frames += len(episode)
    decode = frames / (time.perf_counter() - start)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(n):
        ids = np.sort(rng.integers(0, data.prior.n_steps, batch))
        images = torch.from_numpy(data.prior.batch(ids, ["obs/image_primary"])["obs/image_primary"])
        x = images.permute(0, 3, 1, 2).float() * (2 / 255) - 1
        random_shift(x, torch.from_numpy(ids), 4, 0)
    return decode, n * batch / (time.perf_counter() - start)


def train_rates(data: TaskData, batch: int, steps: int) -> tuple[float, float]:
    """(steps/s of `train` from the store, steps/s of bare train_step on one in-memory batch)."""
    from datamil.training import gather_batch, init_opt_state, init_params, train_step

    store = data.prior
    policy = build_policy(image_policy_factory(), store)
    optim = OptimConfig(total_steps=steps)
    train(policy, store, np.arange(store.n_steps), 5, batch, optim, 0, progress=False)  # warm-up
    start = time.perf_counter()
    train(policy, store, np.arange(store.n_steps), steps, batch, optim, 0, progress=False)
    full = steps / (time.perf_counter() - start)
    tensors = gather_batch(policy, store, np.arange(batch))
    params = init_params(policy, 0)
    state, weights = init_opt_state(params), torch.ones(batch)
    start = time.perf_counter()
    for t in range(steps):
        params, state, _ = train_step(policy, params, state, tensors, weights, t, optim)
    return full, steps / (time.perf_counter() - start)


def _estimate(mode: str, prior, target_val, target_train, proxy, fit_steps: int, cache: str) -> dict:
    from datamil.datamodels.features import FitConfig, run_image

    policy = build_policy(image_policy_factory(shift_pad=0), prior)
    kwargs = {"checkpoint_every": 50} if mode == "end_to_end" else {}
    start = time.perf_counter()
    result = run_image(
        policy,
        prior,
        target_val,
        0,
        proxy,
        mode=mode,
        estimator_kwargs=kwargs,
        fit=FitConfig(steps=fit_steps, batch_size=proxy.batch_size),
        cache_dir=cache,
        target_train_store=target_train,
    )
    return {"scores": result.scores, "wall_s": time.perf_counter() - start, "timings": result.timings}


def _proxy_seconds(prior, target_val, proxy) -> float:
    from datamil.datamodels.lds import proxy_training_seconds

    policy = build_policy(image_policy_factory(shift_pad=0), prior)
    return proxy_training_seconds(policy, prior, target_val, proxy, 0, repeats=1)


def _true_surrogates(prior, target_val, masks, proxy) -> np.ndarray:
    from datamil.datamodels.lds import true_surrogates

    policy = build_policy(image_policy_factory(shift_pad=0), prior)
    return true_surrogates(policy, prior, target_val, masks, proxy, 0, chunk=len(masks))


def estimator_rows(data: TaskData, args: argparse.Namespace) -> list[dict]:
    """Cost ÷ one proxy run, peak RSS and LDS against conv proxies retrained on subsets, per mode."""
    from datamil.datamodels.lds import predicted_surrogates, spearman_interval
    from datamil.datamodels.proxy import ProxyConfig, random_masks, smooth_optim

    prior = data.prior.subset(np.arange(args.prior_episodes))
    proxy = ProxyConfig(optim=smooth_optim(), batch_size=args.proxy_batch).with_steps(args.proxy_steps)
    base, _ = _spawned(_proxy_seconds, prior, data.target_val, proxy)
    cache = str(Path(args.cache or "/tmp") / f"image_features_bench_{time.time_ns()}")
    masks = random_masks(prior.n_episodes, args.lds_models, 0.5, np.random.default_rng([10_001, 0]))
    true, _ = _spawned(_true_surrogates, prior, data.target_val, masks, proxy)
    rows = []
    for mode in ("frozen", "end_to_end"):
        out, peak = _spawned(
            _estimate, mode, prior, data.target_val, data.target_train, proxy, args.fit_steps, cache
        )
        rho, low, high = spearman_interval(predicted_surrogates(out["scores"], prior, masks), true)
        rows.append(
            {
                "mode": mode,
                "wall_s": out["wall_s"],
                "ratio": out["wall_s"] / base,
                "peak_mib": peak,
                "lds": rho,
                "ci": (low, high),
                "timings": out["timings"],
            }
        )
    return rows


def table(args: argparse.Namespace) -> None:
    data = load_data(args.task)
    slow, fast, fastest = _spawned(_render_rates, args.frames)[0]
    decode, augment = decode_and_augment_rates(data, args.batch, 50)
    full, bare = train_rates(data, args.batch, args.train_steps)
    lines = [
        "| measure | value |",
        "|---|---|",
        f"| render 84x84 corner, default scene (frames/s, 1 core) | {slow:.1f} |",
        f"| render 84x84 corner, shadows/reflections/skybox off (frames/s) | {fast:.1f} |",
        f"| same, and no multisampling (render_samples: 0, the default) (frames/s) | {fastest:.1f} |",
        f"| PNG frames decoded from RLDS (frames/s) | {decode:.0f} |",
        f"| frames gathered from the store + random shift (frames/s) | {augment:.0f} |",
        f"| image BC train steps/s from the store (batch {args.batch}) | {full:.2f} |",
        f"| image BC bare train steps/s on an in-memory batch | {bare:.2f} |",
        f"| data overhead | {bare / full - 1:.1%} |",
    ]
    if args.lds_models:
        for r in estimator_rows(data, args):
            lines.append(
                f"| estimator {r['mode']}: cost ÷ one proxy run / peak RSS MiB / LDS [95% CI] | "
                f"{r['ratio']:.2f} / {r['peak_mib']:.0f} / {r['lds']:.2f} [{r['ci'][0]:.2f}, {r['ci'][1]:.2f}] |"
            )
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("success", help="image BC success on MetaWorld targets")
    s.add_argument("--tasks", nargs="+", default=list(TARGETS))
    s.add_argument("--steps", type=int, default=1500)
    s.add_argument("--batch", type=int, default=64)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--episodes", type=int, default=20)
    s.add_argument("--max-steps", type=int, default=200)
    s.add_argument("--image-size", type=int, default=84, help="policy input size (frames are resized)")
    s.add_argument("--out", default=None)
    s.add_argument("--selection", nargs="+", default=["all"], choices=["all", "frozen", "end_to_end"],
                   help="prior data: all of it, or the top --budget by the image estimator in that mode")  # fmt: skip
    s.add_argument("--budget", type=float, default=0.1, help="fraction of prior trajectories selected")
    s.add_argument("--proxy-steps", type=int, default=100)
    s.add_argument("--proxy-batch", type=int, default=32)
    s.add_argument("--fit-steps", type=int, default=1000, help="frozen mode: encoder BC steps")
    s.add_argument("--cache", default=None)
    t = sub.add_parser("table", help="the speed / memory / LDS table")
    t.add_argument("--task", default=TARGETS[0])
    t.add_argument("--frames", type=int, default=100)
    t.add_argument("--batch", type=int, default=64)
    t.add_argument("--train-steps", type=int, default=20)
    t.add_argument("--prior-episodes", type=int, default=24, help="estimators: first N prior episodes")
    t.add_argument("--proxy-steps", type=int, default=100)
    t.add_argument("--proxy-batch", type=int, default=32)
    t.add_argument("--fit-steps", type=int, default=300)
    t.add_argument("--lds-models", type=int, default=16, help="LDS subsets (0 skips the estimator rows)")
    t.add_argument("--cache", default=None)
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    {"success": success, "table": table}[args.command](args)


if __name__ == "__main__":
    main()
