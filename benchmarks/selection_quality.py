"""Does datamil's selection beat the alternatives in MuJoCo? The headline benchmark.

For each target task, seed and method: select (same budget) -> co-train on target-train + the selection
(same policy, steps and mixing ratio for every method) -> evaluate seeded episodes. Every stage is a
library call; data, selections and finished runs are cached in the output directory, so a killed run
resumes where it stopped and one selection per (task, method, seed) serves its co-training run.

    python benchmarks/selection_quality.py --preset quick              # <= 20 min on 2 cores
    python benchmarks/selection_quality.py --preset default            # 5 tasks x 9 methods x 3 seeds
    python benchmarks/selection_quality.py --preset default 'tasks=[metaworld/pick-place-wall]' seeds=[0]

Writes into the output directory: runs.csv (one row per run), results.md (success table, the bar check,
surrogate-vs-success correlation, selection composition), success.png (bar plot), config.yaml.
A method that is an estimator name (e.g. `metagrad`) is DataMIL: that estimator + top-k selection.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from datamil.checkpoint import load_policy
from datamil.cli import CONFIG_DIR
from datamil.cotraining import build_mixture, cotrain
from datamil.data.sources import TaskData
from datamil.datamodels import ESTIMATORS
from datamil.datamodels.surrogate import Surrogate
from datamil.errors import DatamilError
from datamil.evaluation import evaluate_checkpoint
from datamil.io import atomic_write_text
from datamil.selecting import run_selection
from datamil.selection import Selection, SelectionConfig, read_selection

CSV_FIELDS = (
    "task", "method", "seed", "success_rate", "ci_low", "ci_high", "n_episodes", "surrogate_loss",
    "n_prior", "n_selected", "selected_success", "selected_target_task", "select_s", "train_s", "eval_s", "cpu_s",
)  # fmt: skip


@dataclass
class Plan:
    """The benchmark, turned from config into objects once."""

    tasks: list[str]
    methods: list[str]
    seeds: list[int]
    budget: float
    options: dict[str, dict]
    data: Any  # a data source (e.g. MetaWorldSource)
    policy: Any  # factory of the co-trained policy
    proxy: Any  # factory of the proxy policy the datamodels are estimated on
    estimator: Any  # estimate function of the datamodel estimator
    estimator_name: str
    cotrain: dict
    optim: Any
    eval: dict
    out: Path
    config: dict


def load_config(preset: str, overrides: Sequence[str] = ()) -> DictConfig:
    """configs/benchmark/<preset>.yaml with Hydra-style overrides (`seeds=[0]`, `data.episodes_per_task=4`)."""
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose(config_name=f"benchmark/{preset}", overrides=list(overrides))


def make_plan(cfg: DictConfig) -> Plan:
    estimator_name = str(cfg.estimator_name)
    plain = OmegaConf.to_container(cfg, resolve=True)
    return Plan(
        tasks=list(cfg.tasks),
        methods=list(cfg.methods),
        seeds=[int(s) for s in cfg.seeds],
        budget=float(cfg.budget),
        options=plain.get("options") or {},
        data=instantiate(cfg.data),
        policy=instantiate(cfg.policy),
        proxy=instantiate(cfg.proxy),
        estimator=instantiate(cfg.estimator),
        estimator_name=estimator_name,
        cotrain={k: plain["cotrain"][k] for k in ("steps", "batch_size", "target_ratio", "prior_ratio")},
        optim=instantiate(cfg.cotrain.optim),
        eval=dict(plain["eval"]),
        out=Path(cfg.output_dir),
        config=plain,
    )


def selection_config(plan: Plan, method: str) -> SelectionConfig:
    """DataMIL (an estimator name) is top-k on its scores; any other name is a registered selection method."""
    if method in ESTIMATORS:
        return SelectionConfig(method="topk", budget=plan.budget, aggregate="sum")
    return SelectionConfig(method=method, budget=plan.budget, options=dict(plan.options.get(method, {})))


def select(plan: Plan, data: TaskData, method: str, seed: int) -> tuple[Selection, float]:
    """The selection of (task, method, seed): read if this output directory already made it."""
    run_dir = plan.out / "selections" / data.task.replace("/", "__") / method / f"seed{seed}"
    if (run_dir / "selection.json").is_file():
        return read_selection(run_dir / "selection.json"), 0.0
    if method in ESTIMATORS and method != plan.estimator_name:
        raise DatamilError(
            f"method {method!r} is an estimator, but the config's estimator is {plan.estimator_name!r}"
        )
    start = time.perf_counter()
    config = {"estimator": plan.config["estimator"], "policy": plan.config["proxy"], "method": method}
    selection = run_selection(
        data, plan.proxy, plan.estimator, method, selection_config(plan, method), [seed], run_dir, config
    )
    return selection, time.perf_counter() - start


def surrogate_loss(policy: Any, params: Any, data: TaskData) -> float:
    """The rollout-free surrogate of a trained policy: mean per-sample loss on target-val."""
    with torch.no_grad():
        return float(Surrogate.from_store(policy, data.target_val)(params))


def composition(selection: Selection, data: TaskData) -> dict[str, int]:
    prior = data.prior
    idx = prior.index_of(selection.selected) if selection.selected else np.zeros(0, np.int64)
    return {
        "n_prior": prior.n_episodes,
        "n_selected": len(idx),
        "selected_success": int(sum(bool(prior.episodes.success[i]) for i in idx)),
        "selected_target_task": int(sum(prior.episodes.task[i] == data.task for i in idx)),
    }


def train_and_evaluate(plan: Plan, data: TaskData, method: str, seed: int, selection: Selection) -> dict:
    """Co-train on target-train + the selection, score the surrogate, roll out; the row of runs.csv."""
    run_dir = plan.out / "runs" / data.task.replace("/", "__") / method / f"seed{seed}"
    c = plan.cotrain
    mixture = build_mixture(
        data.target_train,
        data.prior,
        selection.selected,
        c["target_ratio"],
        c["prior_ratio"],
        c["batch_size"],
        seed,
    )
    start = time.perf_counter()
    path, _ = cotrain(
        plan.policy,
        mixture,
        c["steps"],
        plan.optim,
        seed,
        run_dir,
        data.task,
        plan.config,
        checkpoint_every=10**9,
    )
    train_s = time.perf_counter() - start
    loaded = load_policy(path).policy
    loss = surrogate_loss(loaded, loaded.params(), data)
    start = time.perf_counter()
    ev = plan.eval
    res = evaluate_checkpoint(
        path, data.task, ev["n_episodes"], seed, ev["max_steps"], ev["n_envs"], ev["workers"], progress=False
    )
    low, high = res.interval
    row = {"task": data.task, "method": method, "seed": seed, "success_rate": res.success_rate}
    row |= {"ci_low": low, "ci_high": high, "n_episodes": res.n_episodes, "surrogate_loss": loss}
    return row | composition(selection, data) | {"train_s": train_s, "eval_s": time.perf_counter() - start}


def write_csv(rows: list[dict], path: Path) -> Path:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, buffer.getvalue())


def run_task(plan: Plan, task: str, bar: tqdm, rows: list[dict]) -> None:
    """Every (seed, method) run of one task; finished runs are read back instead of re-run."""
    data = plan.data.load(task)
    for seed in plan.seeds:
        for method in plan.methods:
            bar.set_postfix_str(f"{task.split('/')[-1]} {method} s{seed}")
            done = plan.out / "runs" / task.replace("/", "__") / method / f"seed{seed}" / "row.json"
            if done.is_file():
                rows.append(json.loads(done.read_text()))
            else:
                cpu = time.process_time()  # CPU seconds: a cost estimate that survives a busy machine
                selection, select_s = select(plan, data, method, seed)
                row = train_and_evaluate(plan, data, method, seed, selection)
                rows.append(row | {"select_s": select_s, "cpu_s": time.process_time() - cpu})
                atomic_write_text(done, json.dumps(rows[-1]))
            write_csv(rows, plan.out / "runs.csv")
            bar.update()


# ------------------------------------------------------------------------------------ tables and plot
def interval(successes: np.ndarray, n_episodes: int) -> tuple[float, float, float]:
    """(mean, low, high) of per-seed success rates: a 95% t-interval over seeds (training and evaluation
    noise together); with one seed, the Wilson interval of its episodes."""
    from scipy.stats import t

    from sim_tasks.rollout import wilson_interval

    values = np.asarray(successes, np.float64)
    mean = float(values.mean())
    if len(values) < 2:
        return (mean, *wilson_interval(round(mean * n_episodes), n_episodes))
    half = float(t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))
    return mean, max(0.0, mean - half), min(1.0, mean + half)


def cell(rows: list[dict], method: str, task: str | None = None) -> tuple[float, float, float]:
    """Mean ± interval of a method on one task, or over all tasks (per seed: the mean over tasks)."""
    mine = [r for r in rows if r["method"] == method and (task is None or r["task"] == task)]
    seeds = sorted({r["seed"] for r in mine})
    per_seed = [np.mean([r["success_rate"] for r in mine if r["seed"] == s]) for s in seeds]
    return interval(np.asarray(per_seed), sum(r["n_episodes"] for r in mine) // max(1, len(seeds)))


def success_table(rows: list[dict], methods: list[str]) -> str:
    tasks = sorted({r["task"] for r in rows})
    head = "| method | " + " | ".join(t.split("/")[-1] for t in tasks) + " | **mean** |"
    lines = [head, "|" + "---|" * (len(tasks) + 2)]
    for m in methods:
        cells = [cell(rows, m, t) for t in tasks] + [cell(rows, m)]
        text = [f"{100 * c[0]:.0f} [{100 * c[1]:.0f}, {100 * c[2]:.0f}]" for c in cells]
        text[-1] = f"**{text[-1]}**"
        lines.append(f"| {m} | " + " | ".join(text) + " |")
    return "\n".join(lines)


def paired_difference(rows: list[dict], a: str, b: str) -> tuple[float, float, float]:
    """Mean over (task, seed) of success(a) - success(b), with a 95% t-interval over the pairs."""
    from scipy.stats import t

    rate = {(r["method"], r["task"], r["seed"]): r["success_rate"] for r in rows}
    diffs = np.array(
        [rate[(a, k[1], k[2])] - v for k, v in rate.items() if k[0] == b and (a, k[1], k[2]) in rate]
    )
    if len(diffs) < 2:
        return float(diffs.mean()) if len(diffs) else float("nan"), float("nan"), float("nan")
    half = float(t.ppf(0.975, len(diffs) - 1) * diffs.std(ddof=1) / np.sqrt(len(diffs)))
    return float(diffs.mean()), float(diffs.mean() - half), float(diffs.mean() + half)


def bar_check(rows: list[dict], methods: list[str], datamil: str) -> str:
    """The issue's bar: DataMIL >= best baseline + 10 points and >= all_prior + 15 points."""
    if datamil not in methods:
        return "(DataMIL was not in the method list: no bar check)"
    baselines = [m for m in methods if m != datamil and m not in ESTIMATORS]
    if not baselines:
        return "(no baselines in the method list: no bar check)"
    best = max(baselines, key=lambda m: cell(rows, m)[0])
    lines = [
        f"| {datamil} minus | mean (points) | 95% interval over (task, seed) pairs | needed |",
        "|---|---|---|---|",
    ]
    checks = [(best, 15 if best == "all_prior" else 10)] + [("all_prior", 15)] * (best != "all_prior")
    for other, need in checks:
        if other in methods:
            d, lo, hi = paired_difference(rows, datamil, other)
            ok = "met" if 100 * d >= need else "MISSED"
            lines.append(
                f"| {other}{' (best baseline)' if other == best else ''} | {100 * d:+.1f} | "
                f"[{100 * lo:+.1f}, {100 * hi:+.1f}] | +{need} ({ok}) |"
            )
    return "\n".join(lines)


def surrogate_correlation(rows: list[dict]) -> str:
    """Does the rollout-free surrogate track success? Spearman over all runs, and within each task (the
    pooled number mixes tasks whose losses live on different scales)."""
    from scipy.stats import spearmanr

    loss = np.array([r["surrogate_loss"] for r in rows])
    success = np.array([r["success_rate"] for r in rows])
    pooled = spearmanr(loss, success).statistic if np.ptp(success) > 0 else float("nan")
    lines = [f"- all {len(rows)} trained policies: Spearman(surrogate loss, success) = {pooled:+.2f}"]
    for task in sorted({r["task"] for r in rows}):
        idx = [i for i, r in enumerate(rows) if r["task"] == task]
        rho = spearmanr(loss[idx], success[idx]).statistic if np.ptp(success[idx]) > 0 else float("nan")
        lines.append(f"- {task} ({len(idx)} policies): {rho:+.2f}")
    lines.append("(negative = lower target-val loss goes with higher success, as the premise needs)")
    return "\n".join(lines)


def composition_table(rows: list[dict], methods: list[str]) -> str:
    """What each method picked, summed over runs: how many prior trajectories, how many successful, how
    many of the target task itself; and the mean target-val loss of the policies co-trained on it."""
    lines = [
        "| method | selected / run | successful | from the target task | co-trained surrogate loss |",
        "|---|---|---|---|---|",
    ]
    for m in methods:
        mine = [r for r in rows if r["method"] == m]
        n = sum(r["n_selected"] for r in mine)
        share = lambda k, n=n, mine=mine: f"{100 * sum(r[k] for r in mine) / n:.0f}%" if n else "-"  # noqa: E731
        loss = np.mean([r["surrogate_loss"] for r in mine])
        lines.append(
            f"| {m} | {n / max(1, len(mine)):.1f} | {share('selected_success')} | "
            f"{share('selected_target_task')} | {loss:.4f} |"
        )
    return "\n".join(lines)


def plot_success(rows: list[dict], methods: list[str], path: Path) -> Path:
    """Grouped bars: success per task and overall, one bar per method, 95% intervals as error bars."""
    from datamil.report import pyplot, save_figure

    tasks = sorted({r["task"] for r in rows})
    groups = [*tasks, None]
    width = 0.8 / len(methods)
    fig, ax = pyplot().subplots(figsize=(max(6.0, 1.6 * len(groups)), 3.6))
    for j, m in enumerate(methods):
        stats = np.array([cell(rows, m, g) for g in groups])
        x = np.arange(len(groups)) + (j - (len(methods) - 1) / 2) * width
        err = np.abs(stats[:, 1:] - stats[:, :1]).T
        ax.bar(x, 100 * stats[:, 0], width, yerr=100 * err, label=m, capsize=2)
    ax.set_xticks(np.arange(len(groups)), [g.split("/")[-1] if g else "mean" for g in groups])
    ax.set(ylabel="success (%)", ylim=(0, 105))
    ax.legend(fontsize=7, ncol=3, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return save_figure(fig, path)


def write_outputs(rows: list[dict], out: Path, methods: list[str], datamil: str, config: dict) -> Path:
    """runs.csv, success.png and results.md (all tables) into `out`."""
    write_csv(rows, out / "runs.csv")
    plot_success(rows, methods, out / "success.png")
    n_seeds = len({r["seed"] for r in rows})
    keys = ("select_s", "train_s", "eval_s", "cpu_s")
    timing = {k: np.mean([r[k] for r in rows if r.get(k)] or [float("nan")]) for k in keys}
    n_prior = rows[0].get("n_prior", "?")
    text = [
        "## Success rate (%), mean over seeds [95% interval]",
        f"{len({r['task'] for r in rows})} tasks, {n_seeds} seed(s), {rows[0]['n_episodes']} episodes per run, "
        f"budget {config['budget']:.0%} of a {n_prior}-trajectory prior, "
        f"{config['cotrain']['steps']} co-training steps. Interval: t over seeds (Wilson over episodes for one seed).",
        "", success_table(rows, methods), "", "## The bar", bar_check(rows, methods, datamil), "",
        "## Surrogate loss vs success", surrogate_correlation(rows), "",
        "## What was selected", composition_table(rows, methods), "",
        f"Mean seconds per run (fresh runs only): select {timing['select_s']:.1f}, "
        f"co-train {timing['train_s']:.1f}, evaluate {timing['eval_s']:.1f}; CPU seconds per run "
        f"{timing['cpu_s']:.1f} (wall time on a shared machine overstates the cost).",
    ]  # fmt: skip
    return atomic_write_text(out / "results.md", "\n".join(text) + "\n")


RUN_INDEPENDENT = ("tasks", "methods", "seeds", "output_dir", "threads")  # keys that never change a run


def check_resumable(plan: Plan) -> None:
    """An output directory holds runs of one setting: resuming it with other settings fails loudly
    instead of mixing old runs into a new table."""
    settings = {k: v for k, v in plan.config.items() if k not in RUN_INDEPENDENT}
    path = plan.out / "settings.json"
    text = json.dumps(settings, sort_keys=True, default=str)
    if path.is_file() and path.read_text() != text:
        raise DatamilError(
            f"{plan.out} holds runs made with other settings (see {path}); use another output_dir"
        )
    atomic_write_text(path, text)


def run_benchmark(cfg: DictConfig) -> list[dict]:
    """Run (or resume) every run of the config and write runs.csv, results.md and success.png."""
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    plan = make_plan(cfg)
    plan.out.mkdir(parents=True, exist_ok=True)
    check_resumable(plan)
    atomic_write_text(plan.out / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(plan.config)))
    rows: list[dict] = []
    total = len(plan.tasks) * len(plan.seeds) * len(plan.methods)
    with tqdm(total=total, desc="benchmark runs", unit="run") as bar:
        for task in plan.tasks:
            run_task(plan, task, bar, rows)
    write_outputs(rows, plan.out, plan.methods, plan.estimator_name, plan.config)
    return rows


def main(argv: Sequence[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--preset", default="quick", help="configs/benchmark/<preset>.yaml: quick | default | tiny"
    )
    parser.add_argument(
        "overrides", nargs="*", help="Hydra-style overrides, e.g. seeds=[0] eval.n_episodes=20"
    )
    args = parser.parse_args(argv)
    cfg = load_config(args.preset, args.overrides)
    rows = run_benchmark(cfg)
    print((Path(cfg.output_dir) / "results.md").read_text())
    return rows


if __name__ == "__main__":
    main()
