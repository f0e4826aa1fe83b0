"""GPU check: the stages on a CUDA GPU, their speed and memory, and how closely GPU scores match the CPU's.

    python benchmarks/gpu_check.py [--full] [--work DIR]

Needs a GPU torch sees (`torch.cuda.is_available()`); without one it prints one line and exits with 2.
Not run yet: it was written on a machine without a GPU (docs/scale_out.md).

Rows of the table it prints:
- `select → cotrain → evaluate`: the three apps as a user runs them (`device=cuda`) on tiny MetaWorld data
  generated into `--work` (wall seconds per app, start-up and data generation included).
- `scores cpu vs cuda`: the same `datamil.select` run with `device=cpu` and `device=cuda`; max abs difference
  and Spearman correlation of the per-trajectory scores, and whether the selections are equal.
- `train, state BC` / `train, image BC`: `datamil.training.train` steps/s on the GPU (synthetic stores, an
  84 x 84 camera for image BC, a few hundred steps) and peak GPU memory (`torch.cuda.max_memory_allocated`).
- `metagrad` / `influence`: wall time ÷ one proxy training run of the same settings, and peak GPU memory,
  on the tiny data; with `--full` also on the full-size prior (`data=metaworld_full`, generated on first use).
- `policy server, diffusion`: a `python -m datamil.real_robot.serve` child (`device=auto`, so the GPU) and a
  `PolicyClient` on 127.0.0.1; infer round trips per second and the p50 latency.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch

from datamil.cli import CONFIG_DIR

NO_GPU = 2  # exit code without a CUDA GPU
TASK = "metaworld/reach"
TINY_DATA = [
    "data.prior_tasks=[metaworld/reach,metaworld/push,metaworld/button-press]",
    "data.episodes_per_task=4",
    "data.max_steps=60",
    "data.n_target_demos=5",
    "data.n_target_val=2",
    "data.target_max_steps=150",
]
TINY_SELECT = [*TINY_DATA, "estimator.proxy.optim.total_steps=40", "estimator.proxy.batch_size=64"]
CONFIGS = Path(CONFIG_DIR)


def require_cuda() -> None:
    if not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA GPU is present (torch.cuda.is_available() is False); nothing was run",
            file=sys.stderr,
        )
        raise SystemExit(NO_GPU)


def timed(fn: Callable[[], object], device: torch.device) -> tuple[object, float, float]:
    """(result, seconds, peak MiB allocated on the GPU during fn); synchronized before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    return out, seconds, peak


# ------------------------------------------------------------------------------------------- the apps
def app(module: str, *overrides: str, run_dir: Path, env: dict) -> float:
    """Wall seconds of `python -m <module> <overrides>`; a failure stops the check with its stderr tail."""
    command = [sys.executable, "-m", module, *overrides, f"hydra.run.dir={run_dir}"]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"gpu_check: {module} failed: {done.stderr[-3000:]}")
    return time.perf_counter() - start


def pipeline_rows(work: Path, env: dict, device: str = "cuda") -> list[dict]:
    """select → cotrain → evaluate on the GPU, and the same selection's scores on the CPU."""
    run = partial(app, env=env)
    seconds = {
        "select": run(
            "datamil.select", f"+task={TASK}", *TINY_SELECT, f"device={device}", run_dir=work / "select"
        ),
        "cpu select": run(
            "datamil.select", f"+task={TASK}", *TINY_SELECT, "device=cpu", run_dir=work / "cpu"
        ),
    }
    seconds["cotrain"] = run(
        "datamil.cotrain", f"+task={TASK}", *TINY_DATA, f"selection={work}/select/selection.json",
        "training.steps=200", "training.batch_size=64", "training.optim.warmup_steps=5", "logger=none",
        f"device={device}", run_dir=work / "cotrain",
    )  # fmt: skip
    seconds["evaluate"] = run(
        "datamil.evaluate", f"checkpoint={work}/cotrain/policy.pt", "eval.n_episodes=3", f"device={device}",
        run_dir=work / "evaluate",
    )  # fmt: skip
    apps = ", ".join(f"{k} {seconds[k]:.0f} s" for k in ("select", "cotrain", "evaluate"))
    return [{"check": "select → cotrain → evaluate (tiny, apps)", "note": apps}, score_agreement(work)]


def score_agreement(work: Path) -> dict:
    from scipy.stats import spearmanr

    gpu, cpu = (json.loads((work / d / "selection.json").read_text()) for d in ("select", "cpu"))
    ids = sorted(cpu["scores"])
    a, b = np.array([cpu["scores"][i] for i in ids]), np.array([gpu["scores"][i] for i in ids])
    same = "same selection" if sorted(cpu["selected"]) == sorted(gpu["selected"]) else "selections DIFFER"
    agreement = f"max abs diff {np.max(np.abs(a - b)):.2e}, Spearman {spearmanr(a, b).statistic:.4f}"
    return {"check": "scores cpu vs cuda (same select run)", "agreement": agreement, "note": same}


# -------------------------------------------------------------------------------------------- training
def synthetic_store(n: int, length: int, images: bool, seed: int = 0):
    from datamil.data.schema import Episode, EpisodeMeta
    from datamil.data.store import TrajectoryStore

    rng = np.random.default_rng(seed)
    episodes = []
    for i in range(n):
        state = np.cumsum(rng.normal(0, 0.1, (length, 39)), axis=0).astype(np.float32)
        obs = {"state": state}
        if images:
            obs["image_primary"] = rng.integers(0, 255, (length, 84, 84, 3), dtype=np.uint8)
        action = np.tanh(state[:, :4] + rng.normal(0, 0.1, (length, 4))).astype(np.float32)
        episodes.append(Episode(obs, action, EpisodeMeta(f"ep{i}", "synthetic")))
    return TrajectoryStore.from_episodes(episodes)


def training_row(name: str, factory, store, steps: int, device: torch.device) -> dict:
    """steps/s of `datamil.training.train` (after a 10-step warm-up) and its peak GPU memory."""
    from datamil.policies.build import build_policy
    from datamil.training import OptimConfig, train

    policy = build_policy(factory, store)
    rows = np.arange(store.n_steps)
    cfg = OptimConfig(total_steps=steps)
    train(policy, store, rows, 10, 64, cfg, seed=0, progress=False, device=device)
    _, seconds, peak = timed(
        lambda: train(policy, store, rows, steps, 64, cfg, seed=0, progress=False, device=device), device
    )
    return {"check": f"train, {name} ({steps} steps, batch 64)", "rate": steps / seconds, "peak_mib": peak}


def training_rows(device: torch.device, image_steps: int = 300) -> list[dict]:
    from datamil.policies.mlp import MLPPolicy
    from datamil.policies.vision import VisionPolicy

    state = training_row("state BC", MLPPolicy, synthetic_store(60, 180, False), 1000, device)
    image = partial(VisionPolicy, image_keys=["image_primary"], image_size=(84, 84))
    return [state, training_row("image BC 84x84", image, synthetic_store(8, 60, True), image_steps, device)]


# ------------------------------------------------------------------------------------------ estimators
def task_data(overrides: list[str]):
    """(TaskData, select config) as `python -m datamil.select +task=TASK <overrides>` composes them."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = compose("select", overrides=[f"+task={TASK}", *overrides])
    return instantiate(cfg.data).load(TASK), cfg


def estimator_row(label: str, overrides: list[str], device: torch.device) -> dict:
    """An estimator's wall time ÷ one proxy training run of its settings, and its peak GPU memory."""
    from hydra.utils import instantiate

    from datamil.datamodels.base import prepare
    from datamil.datamodels.proxy import train_proxy
    from datamil.policies.build import build_policy

    data, cfg = task_data(overrides)
    estimate = instantiate(cfg.estimator)
    policy = build_policy(instantiate(cfg.policy), data.prior).to(device)
    pool, _ = prepare(policy, data.prior, data.target_val)
    proxy = estimate.keywords["proxy"]
    train_proxy(policy, pool, proxy.with_steps(min(10, proxy.steps)), 0)  # warm-up
    _, proxy_s, _ = timed(lambda: train_proxy(policy, pool, proxy, 0), device)
    call = partial(
        estimate, policy, data.prior, data.target_val, rng_seed=0, target_train_store=data.target_train
    )
    _, seconds, peak = timed(call, device)
    size = f"{data.prior.n_episodes} episodes, {data.prior.n_steps} steps"
    return {
        "check": f"{label} ({size})",
        "cost": seconds / proxy_s,
        "peak_mib": peak,
        "note": f"{seconds:.1f} s",
    }


def estimator_rows(device: torch.device, full: bool) -> list[dict]:
    rows = [estimator_row("metagrad, tiny prior", TINY_SELECT, device)]
    if full:
        for name in ("metagrad", "influence"):
            rows.append(
                estimator_row(f"{name}, full prior", ["data=metaworld_full", f"estimator={name}"], device)
            )
    return rows


# -------------------------------------------------------------------------------------- policy server
def server_row(work: Path, calls: int = 200) -> dict:
    """A diffusion policy served on the GPU: infer round trips over loopback."""
    from datamil.checkpoint import save_policy
    from datamil.policies import POLICIES
    from datamil.real_robot.client import PolicyClient
    from datamil.real_robot.localhost import ServerProcess

    path = save_policy(work / "diffusion.pt", POLICIES.get("diffusion")(39, 4), task=TASK)
    obs = {"state": np.zeros(39, np.float32)}
    with ServerProcess(path) as server:
        client = PolicyClient(server.url)
        if not client.connect(wait_s=10):
            raise SystemExit(f"gpu_check: no policy server at {server.url}")
        for _ in range(5):
            client.infer(obs, timeout=30)  # warm-up
        latencies = []
        start = time.perf_counter()
        for _ in range(calls):
            t = time.perf_counter()
            if client.infer(obs, timeout=30) is None:
                raise SystemExit("gpu_check: the policy server did not answer")
            latencies.append((time.perf_counter() - t) * 1e3)
        rate = calls / (time.perf_counter() - start)
        client.close()
        on = "cuda" if any("(cuda" in line for line in server.output) else "NOT cuda"
    note = f"served on {on}, p50 {np.percentile(latencies, 50):.1f} ms"
    return {"check": "policy server, diffusion (loopback)", "rate": rate, "note": note}


# ----------------------------------------------------------------------------------------------- table
def table(rows: list[dict]) -> str:
    def cell(row: dict, key: str, fmt: str) -> str:
        return format(row[key], fmt) if key in row and np.isfinite(row[key]) else ""

    lines = [
        "| check | steps/s | cost ÷ proxy run | peak GPU MiB | cpu vs cuda | note |",
        "|---|---:|---:|---:|---|---|",
    ]
    for r in rows:
        cells = [r["check"], cell(r, "rate", ".1f"), cell(r, "cost", ".2f"), cell(r, "peak_mib", ".0f")]
        lines.append("| " + " | ".join([*cells, r.get("agreement", ""), r.get("note", "")]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--full", action="store_true", help="also metagrad and influence on data=metaworld_full"
    )
    parser.add_argument("--work", help="data cache and runs (default: a fresh temporary directory)")
    args = parser.parse_args()
    require_cuda()
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu_check-")).resolve()
    os.environ.setdefault("DATAMIL_CACHE", str(work / "cache"))  # the tiny data, generated on first use
    env = {**os.environ, "WANDB_MODE": "disabled"}
    device = torch.device("cuda")
    print(f"gpu_check on {torch.cuda.get_device_name(device)}, torch {torch.__version__}; work dir {work}")
    rows = pipeline_rows(work, env)
    rows += training_rows(device)
    rows += estimator_rows(device, args.full)
    rows.append(server_row(work))
    print(table(rows))


if __name__ == "__main__":
    main()
