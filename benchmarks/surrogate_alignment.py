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
        --runs outputs/benchmarks/selection_quality/full_hard_dev_* --out benchmarks/results/surrogate_alignment

Writes policies.csv (one row per policy) and alignment.csv (one row per task), and prints the latter.
Only run directories made from the plan's data (the same data.seed) are read; any other is refused.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
import selection_quality as sq  # noqa: E402
import tables  # noqa: E402

from datamil.checkpoint import load_policy  # noqa: E402
from datamil.data.store import TrajectoryStore  # noqa: E402
from datamil.datamodels.surrogate import Surrogate  # noqa: E402
from datamil.errors import DatamilError  # noqa: E402
from datamil.report import markdown_table  # noqa: E402

# variant -> (per-step losses, each step's fraction of its demo, each step's demo) -> one value
Variant = Callable[[np.ndarray, np.ndarray, np.ndarray], float]
VARIANTS: dict[str, Variant] = {
    "mean (the surrogate)": lambda loss, when, demo: float(loss.mean()),
    "first half of each demo": lambda loss, when, demo: float(loss[when < 0.5].mean()),
    "second half of each demo": lambda loss, when, demo: float(loss[when >= 0.5].mean()),
    "median step": lambda loss, when, demo: float(np.median(loss)),
    "90th-percentile step": lambda loss, when, demo: float(np.quantile(loss, 0.9)),
    "worst demo": lambda loss, when, demo: worst_demos(loss, demo, 0.0),
    "worst 30% of demos": lambda loss, when, demo: worst_demos(loss, demo, 0.3),
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


def per_step_loss(policy_path: Path, target_val: TrajectoryStore) -> np.ndarray:
    """The co-trained policy's loss on every target-val step: what the surrogate averages."""
    policy = load_policy(policy_path).policy
    surrogate = Surrogate.from_store(policy, target_val)
    with torch.no_grad():
        return policy.per_sample_loss(policy.params(), surrogate.val).double().numpy()


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


def policy_rows(task: str, paths: Sequence[Path], target_val: TrajectoryStore) -> list[dict]:
    """One row per policy: where it came from, its success, and its value under every variant."""
    when, demo = step_positions(target_val)
    rows = []
    for path in paths:
        row = json.loads((path.parent / "row.json").read_text())
        loss = per_step_loss(path, target_val)
        variants = {name: fn(loss, when, demo) for name, fn in VARIANTS.items()}
        rows.append({"task": task, "run": str(path.parent), "success": row["success_rate"], **variants})
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


def main(argv: Sequence[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="full_hard")
    parser.add_argument("--runs", nargs="+", required=True, help="output directories of selection_quality.py")
    parser.add_argument("--out", default="benchmarks/results/surrogate_alignment")
    args, overrides = parser.parse_known_args(argv)
    plan = sq.make_plan(
        sq.load_config(args.preset, [*overrides, "output_dir=/tmp/surrogate_alignment_unused"])
    )
    run_dirs = [Path(d) for d in args.runs]
    rows = []
    for task in plan.tasks:
        paths = policy_paths(run_dirs, task, plan.data.seed)
        if len(paths) < 3:
            raise DatamilError(
                f"{len(paths)} co-trained policies of {task} under --runs; a correlation needs >= 3"
            )
        rows += policy_rows(task, paths, plan.data.load(task).target_val)
    out = Path(args.out)
    tables.write_csv(rows, out / "policies.csv", list(rows[0]))
    summary = alignment_rows(rows)
    tables.write_csv(summary, out / "alignment.csv", list(summary[0]))
    print("\n".join(markdown_table(list(summary[0]), [list(r.values()) for r in summary])))
    return summary


if __name__ == "__main__":
    main()
