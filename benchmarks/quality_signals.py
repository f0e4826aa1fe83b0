"""Is there an unlabeled signal that tells a selection's failed trajectories from its successful ones?

A DataMIL selection keeps some failed attempts at the target task. The surrogate (target-val action
loss) does not penalise them, so a quality term would have to find them without labels. This script
measures, for each (task, seed) selection of an output directory of benchmarks/selection_quality.py:
- how many same-task trajectories of each action-noise level the selection keeps (the generator's plan
  gives the level; no method reads it);
- how well each unlabeled per-trajectory signal ranks successes above failures (ROC AUC; 0.5 = no
  signal), among the selected same-task trajectories and among the whole selection:
  the datamodel score the selection was made with, the mean absolute action change between steps
  (jitter), and DemInf's quality score over the whole prior.

    python benchmarks/quality_signals.py --preset full_hard 'tasks=${dev_tasks}' \
        --selections outputs/benchmarks/selection_quality/full_hard_dev_refine_p12_r3_cover \
        --out benchmarks/results/quality_signals

Writes signals.csv (one row per selection) and prints it as a table.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
import selection_quality as sq  # noqa: E402

from datamil.data.sources import MetaWorldSource, TaskData  # noqa: E402
from datamil.errors import DatamilError  # noqa: E402
from datamil.report import markdown_table  # noqa: E402
from datamil.selection.methods import SELECTION_METHODS, SelectionConfig, SelectionRequest  # noqa: E402
from datamil.sim_tasks.generate import plan_episodes  # noqa: E402

SIGNALS = ("score", "jitter", "deminf")  # lower = predicted better, for each


def action_jitter(data: TaskData) -> np.ndarray:
    """(E,) mean absolute change of the action between consecutive steps of each prior trajectory."""
    prior = data.prior
    change = np.abs(np.diff(prior.arrays["action"], axis=0)).mean(axis=1)
    within = np.ones(len(change), bool)
    within[prior.offsets[1:-1] - 1] = False  # the change across two trajectories' boundary
    episode = prior.episode_of_step[1:]
    total = np.bincount(episode[within], change[within], prior.n_episodes)
    return total / np.maximum(np.bincount(episode[within], minlength=prior.n_episodes), 1)


def deminf_scores(data: TaskData) -> np.ndarray:
    """(E,) DemInf's quality score of every prior trajectory (lower = better), at seed 0: one ranking per
    task serves all of that task's selections, whichever seed made them."""
    cfg = SelectionConfig(method="deminf", budget=0.1)
    scores, _ = SELECTION_METHODS.get("deminf")(SelectionRequest(data, cfg, 0, None))
    return scores


def noise_levels(data: TaskData, source: MetaWorldSource) -> np.ndarray:
    """(E,) the action-noise level the generator's plan gave each prior trajectory."""
    specs = plan_episodes(
        sorted(source.prior_task_list(data.task)), source.episodes_per_task, source.seed, source.noise_levels
    )
    by_id = {spec.episode_id: spec.noise for spec in specs}
    return np.array([by_id[e] for e in data.prior.episodes.episode_id])


def auc(success: np.ndarray, signal: np.ndarray) -> float:
    """ROC AUC of -signal for success (lower signal = predicted success); NaN with one class only."""
    if success.all() or not success.any():
        return float("nan")
    return float(roc_auc_score(success, -signal))


def selection_row(
    task: str, seed: int, path: Path, data: TaskData, noise: np.ndarray, signals: dict[str, np.ndarray]
) -> dict:
    selection = json.loads(path.read_text())
    ids = list(data.prior.episodes.episode_id)
    chosen = np.zeros(len(ids), bool)
    chosen[data.prior.index_of(selection["selected"])] = True
    success = np.array([bool(s) for s in data.prior.episodes.success])
    same = np.array([t == task for t in data.prior.episodes.task])
    signals = {"score": np.array([selection["scores"][e] for e in ids]), **signals}
    row: dict = {"task": task, "seed": seed, "n_selected": int(chosen.sum())}
    same_chosen = chosen & same
    row["same_task"] = int(same_chosen.sum())
    for level in sorted(set(noise.tolist())):
        row[f"same_task_noise_{level:g}"] = int((same_chosen & (noise == level)).sum())
        row[f"prior_same_task_noise_{level:g}"] = int((same & (noise == level)).sum())
    row["same_task_success"] = round(float(success[same_chosen].mean()), 3) if same_chosen.any() else ""
    for name in SIGNALS:
        row[f"auc_same_task_{name}"] = round(auc(success[same_chosen], signals[name][same_chosen]), 3)
        row[f"auc_selection_{name}"] = round(auc(success[chosen], signals[name][chosen]), 3)
    return row


def main(argv: Sequence[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="full_hard")
    parser.add_argument("--selections", required=True, help="an output directory of selection_quality.py")
    parser.add_argument("--method", default="metagrad_refine")
    parser.add_argument("--out", default="benchmarks/results/quality_signals")
    args, overrides = parser.parse_known_args(argv)
    plan = sq.make_plan(sq.load_config(args.preset, [*overrides, "output_dir=/tmp/quality_signals_unused"]))
    rows = []
    for task in plan.tasks:
        paths = sorted(
            (Path(args.selections) / "selections" / sq.slug(task) / args.method).glob("seed*/selection.json")
        )
        if not paths:
            raise DatamilError(f"no {args.method} selections of {task} under {args.selections}; run it first")
        data = plan.data.load(task)
        noise = noise_levels(data, plan.data)
        signals = {"jitter": action_jitter(data), "deminf": deminf_scores(data)}
        for path in paths:
            seed = int(path.parent.name.removeprefix("seed"))
            rows.append(selection_row(task, seed, path, data, noise, signals))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "signals.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print("\n".join(markdown_table(list(rows[0]), [list(row.values()) for row in rows])))
    return rows


if __name__ == "__main__":
    main()
