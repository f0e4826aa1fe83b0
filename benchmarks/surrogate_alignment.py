"""Would a different surrogate track success better than the mean target-val action loss?

DataMIL picks the prior data that lowers a surrogate, the co-trained policy's action loss on the held-out
target demos, and trusts that lower means more successful. At full scale that holds only weakly (README,
"Surrogate loss vs success"). Before estimating against another surrogate, this asks whether any simple
reshaping of the same per-step losses would rank policies by success better. It reads co-trained policies
that benchmarks/selection_quality.py left in its output directories (runs/<task>/<method>/seed<k>/
policy.pt with its row.json), scores each on its task's target-val demos under every variant below, and
reports the within-task Spearman correlation with rolled-out success (negative = lower loss, more success).

    python benchmarks/selection_quality.py ...   # first: the development runs (README, rounds 2d-2j)
    python benchmarks/surrogate_alignment.py --preset full_hard 'tasks=${dev_tasks}' \
        --runs DIR [DIR ...] --out benchmarks/results/surrogate_alignment   # the 11 directories the README names

Writes policies.csv (one row per policy) and alignment.csv (one row per task), and prints the latter.
Only run directories made from the plan's data (the same data.seed) are read; any other is refused, and
so is a policy that does not reproduce the surrogate_loss its row.json recorded.

With --choose a|b and --versus BASELINE it also asks, per (task, seed), which candidate each variant would
keep (its lowest value, as a choice keeps the lowest mean) and how that policy did against the baseline:
choice.csv and choice.md (README, round 7). --pool-choices pools several parts' choice.csv:

    python benchmarks/surrogate_alignment.py --preset full_hard_4_new_task \
        --runs outputs/benchmarks/selection_quality/full_hard_4_new_task --out benchmarks/results/size_signals/dev_r4 \
        --choose 'metagrad_refine|all_prior' --versus 'action_similarity@metagrad_refine'
    python benchmarks/surrogate_alignment.py --out benchmarks/results/size_signals/dev \
        --pool-choices benchmarks/results/size_signals/dev_*/choice.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import stats
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import selection_quality as sq  # noqa: E402
import tables  # noqa: E402

from datamil.checkpoint import load_policy  # noqa: E402
from datamil.data.sources import TaskData  # noqa: E402
from datamil.data.store import TrajectoryStore  # noqa: E402
from datamil.datamodels.surrogate import Surrogate  # noqa: E402
from datamil.errors import DatamilError  # noqa: E402
from datamil.io import atomic_write_text  # noqa: E402
from datamil.policies.base import ACTION  # noqa: E402
from datamil.report import markdown_table  # noqa: E402


@dataclass(frozen=True)
class StepLosses:
    """One co-trained policy's losses on the target demos, step by step: everything a variant reads."""

    val: np.ndarray  # (S,) per-step loss on target-val: the terms the surrogate averages
    val_dims: np.ndarray  # (S, A) per-step squared error of each action dimension on target-val
    when: np.ndarray  # (S,) each target-val step's fraction of the way through its demo
    demo: np.ndarray  # (S,) each target-val step's demo
    train: np.ndarray  # (T,) per-step loss on target-train, the demos the policy was co-trained on


# variant -> one value of a policy's step losses (lower should mean more successful)
Variant = Callable[[StepLosses], float]
VARIANTS: dict[str, Variant] = {
    "mean (the surrogate)": lambda s: float(s.val.mean()),
    "first half of each demo": lambda s: float(s.val[s.when < 0.5].mean()),
    "second half of each demo": lambda s: float(s.val[s.when >= 0.5].mean()),
    "median step": lambda s: float(np.median(s.val)),
    "90th-percentile step": lambda s: float(np.quantile(s.val, 0.9)),
    "worst demo": lambda s: worst_demos(s.val, s.demo, 0.0),
    "worst 30% of demos": lambda s: worst_demos(s.val, s.demo, 0.3),
    # round 7: signals a larger co-training set need not lower
    "gripper (last action dimension)": lambda s: float(s.val_dims[:, -1].mean()),
    "arm motion (other action dimensions)": lambda s: float(s.val_dims[:, :-1].mean()),
    "fit gap (target-val minus target-train)": lambda s: float(s.val.mean() - s.train.mean()),
}


def worst_demos(loss: np.ndarray, demo: np.ndarray, share: float) -> float:
    """The mean loss over the steps of the worst `share` of the demos (at least one), worst by their mean."""
    ids = np.unique(demo)
    per_demo = np.array([loss[demo == d].mean() for d in ids])
    worst = ids[np.argsort(per_demo)[::-1][: max(1, round(share * len(ids)))]]
    return float(loss[np.isin(demo, worst)].mean())


def step_positions(store: TrajectoryStore) -> tuple[np.ndarray, np.ndarray]:
    """Each step's fraction of the way through its demo (0 at the first step) and its demo index."""
    demo = np.asarray(store.episode_of_step)
    lengths = np.asarray(store.episode_lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return (np.arange(store.n_steps) - starts[demo]) / lengths[demo], demo


def step_losses(policy_path: Path, target_val: TrajectoryStore, target_train: TrajectoryStore) -> StepLosses:
    """A co-trained policy's per-step (and per-action-dimension) losses on its task's target demos."""
    policy = load_policy(policy_path).policy
    val = Surrogate.from_store(policy, target_val).val
    train = Surrogate.from_store(policy, target_train).val
    with torch.no_grad():
        predicted = policy.predict(val)
        if predicted.shape != val[ACTION].shape:
            raise DatamilError(
                f"{policy_path}: the policy predicts {tuple(predicted.shape)} for actions of "
                f"{tuple(val[ACTION].shape)}; the per-dimension variants need a policy that regresses actions"
            )
        when, demo = step_positions(target_val)
        return StepLosses(
            val=policy.per_sample_loss(policy.params(), val).double().numpy(),
            val_dims=(predicted - val[ACTION].float()).pow(2).double().numpy(),
            when=when,
            demo=demo,
            train=policy.per_sample_loss(policy.params(), train).double().numpy(),
        )


def policy_paths(run_dirs: Sequence[Path], task: str, data_seed: int) -> list[Path]:
    """Every co-trained policy of `task` under the run directories, refusing directories of other data."""
    found = []
    for run_dir in run_dirs:
        settings = run_dir / "settings.json"
        if not settings.is_file():
            raise DatamilError(
                f"{run_dir} has no settings.json; pass output directories of selection_quality.py"
            )
        seed = json.loads(settings.read_text())["data"]["seed"]
        if seed != data_seed:
            raise DatamilError(
                f"{run_dir} was made with data.seed {seed}, not {data_seed}; pass data.seed={seed}"
            )
        found += sorted((run_dir / "runs" / sq.slug(task)).glob("*/seed*/policy.pt"))
    return found


def policy_rows(task: str, paths: Sequence[Path], data: TaskData) -> list[dict]:
    """One row per policy: where it came from, its success, and its value under every variant. A policy
    whose mean target-val loss differs from the surrogate_loss its row.json recorded is refused: it is
    not the policy that row's success was rolled out from."""
    rows = []
    for path in paths:
        row = json.loads((path.parent / "row.json").read_text())
        losses = step_losses(path, data.target_val, data.target_train)
        if not np.isclose(losses.val.mean(), row["surrogate_loss"], rtol=1e-4, atol=0.0):
            raise DatamilError(
                f"{path} scores {losses.val.mean():.6g} on target-val, but its row.json recorded "
                f"{row['surrogate_loss']:.6g}; pass the data options (data.seed, tasks) it was run with"
            )
        variants = {name: fn(losses) for name, fn in VARIANTS.items()}
        where = {"task": task, "method": row["method"], "seed": row["seed"], "run": str(path.parent)}
        rows.append(where | {"success": row["success_rate"], **variants})
    return rows


def alignment_rows(rows: Sequence[dict]) -> list[dict]:
    """Per task: how many policies, their success range, and Spearman(variant, success) for each variant;
    then the mean of each column over tasks."""
    out = []
    for task in dict.fromkeys(r["task"] for r in rows):
        mine = [r for r in rows if r["task"] == task]
        success = [r["success"] for r in mine]
        rho = {name: stats.spearmanr([r[name] for r in mine], success).statistic for name in VARIANTS}
        out.append({"task": task, "policies": len(mine), "success range": f"{min(success):.2f}-{max(success):.2f}"}
                   | {name: round(float(value), 2) for name, value in rho.items()})  # fmt: skip
    mean = {name: round(float(np.mean([r[name] for r in out])), 2) for name in VARIANTS}
    return [*out, {"task": "mean over tasks", "policies": len(rows), "success range": ""} | mean]


# ------------------------------------------------------------------------------------ a choice by each variant
HINDSIGHT = "hindsight: the more successful candidate (a ceiling, not a method)"
CHOICE_FIELDS = ["part", "task", "seed", "signal", "kept", "success", "versus", "versus_success"]


def latest_by_run(rows: Sequence[dict]) -> dict[tuple[str, str, int], dict]:
    """(task, method, seed) -> its policy row; where run directories share a key the later one wins, as
    with resume_from."""
    return {(r["task"], r["method"], r["seed"]): r for r in rows}


def method_success(run_dirs: Sequence[Path], task: str, method: str) -> dict[int, float]:
    """seed -> success of `method` on `task`, read from the finished rows under the run directories (the
    later directory wins); no policy file needed, so a baseline of another directory can be read."""
    found: dict[int, float] = {}
    for run_dir in run_dirs:
        for path in sorted((run_dir / "runs" / sq.slug(task) / method).glob("seed*/row.json")):
            row = json.loads(path.read_text())
            found[row["seed"]] = row["success_rate"]
    return found


def choice_rows(
    part: str, rows: Sequence[dict], candidates: Sequence[str], versus: str, versus_success: dict
) -> list[dict]:
    """For every (task, seed) where all candidates were co-trained: the candidate each variant keeps (its
    lowest value, as round 6 kept the lowest mean) and that policy's success, beside `versus`'s success;
    then each candidate kept always, and the more successful one in hindsight, as references."""
    runs = latest_by_run(rows)
    out = []
    for task, seed in sorted({(t, s) for t, _, s in runs}):
        policies = [runs.get((task, c, seed)) for c in candidates]
        if any(p is None for p in policies) or (task, seed) not in versus_success:
            continue
        kept = {name: min(policies, key=lambda p: p[name]) for name in VARIANTS}  # ties: the earlier
        kept |= {f"always {p['method']}": p for p in policies}  # references: no signal, and hindsight
        kept[HINDSIGHT] = max(policies, key=lambda p: p["success"])
        for name, policy in kept.items():
            out.append({"part": part, "task": task, "seed": seed, "signal": name, "kept": policy["method"]}
                       | {"success": policy["success"], "versus": versus,
                          "versus_success": versus_success[(task, seed)]})  # fmt: skip
    return out


def choice_summary(rows: Sequence[dict]) -> str:
    """Per signal: the pairs, its choice's mean success, the paired difference from each pair's `versus`
    (95% t-interval over pairs) and how often it kept each candidate, best first."""
    lines = []
    for name in dict.fromkeys(r["signal"] for r in rows):
        mine = [r for r in rows if r["signal"] == name]
        diff = tables.mean_interval([r["success"] - r["versus_success"] for r in mine])
        kept = ", ".join(
            f"{m} {sum(r['kept'] == m for r in mine)}" for m in dict.fromkeys(r["kept"] for r in rows)
        )
        lines.append([name, len(mine), f"{100 * np.mean([r['success'] for r in mine]):.1f}",
                      tables.difference_text(diff), kept])  # fmt: skip
    lines.sort(key=lambda line: -float(line[2]))
    versus = ", ".join(dict.fromkeys(r["versus"] for r in rows))
    header = ["signal", "pairs", "mean success of its choice", f"minus {versus}", "kept"]
    return "\n".join(markdown_table(header, lines))


def write_choices(rows: Sequence[dict], out: Path) -> str:
    """choice.csv and its choice.md in `out`; returns the table."""
    if not rows:
        raise DatamilError(
            f"no (task, seed) pair under --runs has every candidate and --versus; nothing written to {out}"
        )
    return write_results_md(tables.write_csv(list(rows), out / "choice.csv", CHOICE_FIELDS)).read_text()


def write_results_md(csv_path: Path) -> Path:
    """choice.md beside a choice.csv: `python benchmarks/tables.py` rebuilds it from the committed CSV."""
    return atomic_write_text(
        csv_path.with_suffix(".md"), choice_summary([typed_choice(r) for r in read_csv(csv_path)]) + "\n"
    )


def read_csv(path: Path) -> list[dict]:
    """The rows of one CSV as strings; a missing file fails on one line."""
    if not Path(path).is_file():
        raise DatamilError(f"{path} does not exist; run this script with --choose first")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def typed_choice(row: dict) -> dict:
    """A choice.csv row read back with the types it was written with."""
    return row | {"seed": int(row["seed"]), "success": float(row["success"]),
                  "versus_success": float(row["versus_success"])}  # fmt: skip


def pool_choices(parts: Sequence[Path], out: Path) -> str:
    """One choice table from several parts' choice.csv (each part's pairs are its own: the part column
    keeps a task of two draws apart)."""
    rows = [typed_choice(r) for part in parts for r in read_csv(part)]
    keys = [(r["part"], r["task"], r["seed"], r["signal"]) for r in rows]
    if len(set(keys)) != len(keys):
        raise DatamilError("the choice.csv files share (part, task, seed) pairs; pool each part once")
    return write_choices(rows, out)


def main(argv: Sequence[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="full_hard")
    parser.add_argument("--runs", nargs="+", help="output directories of selection_quality.py (later wins)")
    parser.add_argument("--out", default="benchmarks/results/surrogate_alignment")
    parser.add_argument(
        "--choose", help="a choice such as metagrad_refine|all_prior: what each variant keeps"
    )
    parser.add_argument("--versus", help="with --choose: the baseline each pair's choice is compared with")
    parser.add_argument("--pool-choices", nargs="+", type=Path, help="choice.csv files to pool into --out")
    args, overrides = parser.parse_known_args(argv)
    out = Path(args.out)
    if args.pool_choices:
        print(pool_choices(args.pool_choices, out))
        return []
    if not args.runs:
        parser.error("--runs is required (or --pool-choices)")
    if bool(args.choose) != bool(args.versus):
        parser.error("--choose and --versus go together")
    plan = sq.make_plan(
        sq.load_config(args.preset, [*overrides, "output_dir=/tmp/surrogate_alignment_unused"])
    )
    run_dirs = [Path(d) for d in args.runs]
    candidates = tables.parse_method(args.choose).candidates if args.choose else []
    if args.choose and not candidates:
        raise DatamilError(f"--choose {args.choose!r} is not a choice; write candidates as a|b")
    rows, choices = [], []
    for task in tqdm(plan.tasks, desc="scoring co-trained policies", unit="task"):
        paths = policy_paths(run_dirs, task, plan.data.seed)
        if len(paths) < 3:
            raise DatamilError(
                f"{len(paths)} co-trained policies of {task} under --runs; a correlation needs >= 3"
            )
        mine = policy_rows(task, paths, plan.data.load(task))
        rows += mine
        if candidates:
            versus = {(task, s): v for s, v in method_success(run_dirs, task, args.versus).items()}
            choices += choice_rows(out.name, mine, candidates, args.versus, versus)
    tables.write_csv(rows, out / "policies.csv", list(rows[0]))
    summary = alignment_rows(rows)
    tables.write_csv(summary, out / "alignment.csv", list(summary[0]))
    print("\n".join(markdown_table(list(summary[0]), [list(r.values()) for r in summary])))
    if candidates:
        print(write_choices(choices, out))
    return summary


if __name__ == "__main__":
    from datamil.cli import one_line_errors

    one_line_errors(main)(None)
