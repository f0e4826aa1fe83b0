"""`python -m datamil.sweep_table <sweep dir>`: every results.json under a sweep directory → one table.

Rows are grouped by (task, checkpoint) with seeds pooled: the success rate over all their episodes,
its Wilson 95% interval, and the spread across seeds. Writes sweep.csv and sweep.md into the directory.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from datamil.errors import DatamilError
from datamil.io import atomic_write_text
from datamil.report import markdown_table
from datamil.sim_tasks.rollout import wilson_interval

COLUMNS = ("task", "checkpoint", "seeds", "episodes", "success", "ci_low", "ci_high", "seed_std")


def collect(sweep_dir: Path) -> list[dict]:
    files = sorted(sweep_dir.rglob("results.json"))
    if not files:
        raise DatamilError(
            f"no results.json under {sweep_dir}; point at a `python -m datamil.evaluate -m` sweep"
        )
    return [json.loads(f.read_text()) for f in files]


def summarize(results: list[dict]) -> list[dict]:
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in results:
        groups[(r["task"], r.get("checkpoint", ""))].append(r)
    rows = []
    for (task, checkpoint), runs in sorted(groups.items()):
        successes = sum(int(np.sum(r["success"])) for r in runs)
        episodes = sum(r["n_episodes"] for r in runs)
        low, high = wilson_interval(successes, episodes)
        rates = [r["success_rate"] for r in runs]
        rows.append(
            dict(
                task=task,
                checkpoint=checkpoint,
                seeds=len(runs),
                episodes=episodes,
                success=successes / episodes,
                ci_low=low,
                ci_high=high,
                seed_std=float(np.std(rates)),
            )
        )
    return rows


def to_markdown(rows: list[dict]) -> str:
    header = ("task", "checkpoint", "seeds", "episodes", "success [95% CI]", "std over seeds")
    cells = [
        (r["task"], r["checkpoint"], r["seeds"], r["episodes"],
         f"{r['success']:.1%} [{r['ci_low']:.1%}, {r['ci_high']:.1%}]", f"{r['seed_std']:.1%}")
        for r in rows
    ]  # fmt: skip
    return "\n".join(markdown_table(header, cells)) + "\n"


def write_tables(sweep_dir: Path) -> str:
    rows = summarize(collect(sweep_dir))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(sweep_dir / "sweep.csv", buffer.getvalue())
    table = to_markdown(rows)
    atomic_write_text(sweep_dir / "sweep.md", table)
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m datamil.sweep_table", description=__doc__.splitlines()[0]
    )
    parser.add_argument("sweep_dir", type=Path, help="a multirun directory of datamil.evaluate runs")
    print(write_tables(parser.parse_args(argv).sweep_dir), end="")


if __name__ == "__main__":
    try:
        main()
    except DatamilError as err:
        raise SystemExit(f"error: {err}") from None
