"""Plots and the short Markdown report of a selection run: things a person would rather see than read."""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from datamil.io import atomic_write_bytes, atomic_write_text


def table_cell(value: object) -> str:
    """A value as a Markdown table cell: a `|` inside it (a method choice such as `a|b`) is escaped, so it
    does not split the cell."""
    return str(value).replace("|", r"\|")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """A Markdown table's lines: the header, its `|---|` rule, then one line per row of cells (as str)."""
    lines = ["| " + " | ".join(map(table_cell, header)) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(table_cell(cell) for cell in row) + " |" for row in rows]


def pyplot():
    """matplotlib.pyplot on the headless Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """Write `fig` as a PNG atomically and close it."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    pyplot().close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def _outcome(success: bool | None) -> str:
    return {True: "success", False: "failure", None: "unknown"}[success]


def success_count(successes: list[bool | None]) -> str:
    """Successful episodes as "k of n"; those without a success flag are counted apart, never as failures."""
    n, unknown = len(successes), sum(s is None for s in successes)
    if n and unknown == n:
        return "unknown (no success flags)"
    counted = f"{sum(bool(s) for s in successes)} of {n}"
    return f"{counted} ({unknown} unknown)" if unknown else counted


def composition(tasks: list[str], successes: list[bool | None], mask: np.ndarray) -> dict[str, Counter]:
    """Counts of (task, outcome) over the whole prior and over the selected episodes."""
    pairs = [(t, _outcome(s)) for t, s in zip(tasks, successes, strict=True)]
    return {
        "prior": Counter(pairs),
        "selected": Counter(p for p, keep in zip(pairs, mask, strict=True) if keep),
    }


def plot_score_histogram(scores: np.ndarray, mask: np.ndarray, path: Path) -> Path:
    """Scores of every prior trajectory; selected ones highlighted. Negative = helpful."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.histogram_bin_edges(scores, bins=40)
    ax.hist(scores[~mask], bins=bins, color="0.7", label="not selected")
    ax.hist(scores[mask], bins=bins, color="tab:blue", label="selected")
    ax.axvline(0, color="k", lw=0.8)
    ax.set(xlabel="trajectory score (negative = lowers target loss)", ylabel="trajectories")
    ax.legend()
    return save_figure(fig, path)


def plot_composition(tasks: list[str], successes: list[bool | None], mask: np.ndarray, path: Path) -> Path:
    """Share of each source task (split by success/failure) in the prior and in the selection, side by side."""
    plt = pyplot()
    counts = composition(tasks, successes, mask)
    keys = sorted(counts["prior"], key=lambda k: (-counts["selected"][k], k))
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(keys) + 1.5))
    y = np.arange(len(keys))
    for offset, name, color in ((-0.2, "prior", "0.65"), (0.2, "selected", "tab:blue")):
        total = max(sum(counts[name].values()), 1)
        ax.barh(y + offset, [counts[name][k] / total for k in keys], height=0.4, color=color, label=name)
    ax.set_yticks(y, [f"{task} ({outcome})" for task, outcome in keys], fontsize=7)
    ax.invert_yaxis()
    ax.set(xlabel="fraction of trajectories")
    ax.legend()
    return save_figure(fig, path)


def plot_score_vs_length(scores: np.ndarray, lengths: np.ndarray, mask: np.ndarray, path: Path) -> Path:
    """Does the estimator just prefer long (or short) trajectories?"""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.scatter(lengths[~mask], scores[~mask], s=8, color="0.6", label="not selected")
    ax.scatter(lengths[mask], scores[mask], s=10, color="tab:blue", label="selected")
    ax.set(xlabel="trajectory length (steps)", ylabel="score")
    ax.legend()
    return save_figure(fig, path)


def markdown_report(
    title: str,
    facts: dict[str, object],
    tasks: list[str],
    successes: list[bool | None],
    mask: np.ndarray,
    plots: list[Path],
) -> str:
    """A short report: the run's facts, then the selection's composition next to the prior's."""
    counts = composition(tasks, successes, mask)
    lines = [f"# {title}", ""] + [f"- **{k}**: {v}" for k, v in facts.items()] + ["", "## Composition", ""]
    lines += ["| source task | outcome | prior | selected |", "|---|---|---|---|"]
    for task, outcome in sorted(counts["prior"], key=lambda k: (-counts["selected"][k], k)):
        lines.append(
            f"| {task} | {outcome} | {counts['prior'][(task, outcome)]} | {counts['selected'][(task, outcome)]} |"
        )
    lines += [""] + [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def write_selection_report(
    run_dir: Path,
    title: str,
    facts: dict[str, object],
    scores: np.ndarray,
    lengths: np.ndarray,
    tasks: list[str],
    successes: list[bool | None],
    mask: np.ndarray,
    sources: tuple[list[str], dict[str, str]] | None = None,
) -> Path:
    """All three plots plus report.md into `run_dir`; returns the report path.

    sources: a mixture prior's (per-episode dataset labels, {dataset: robot}); adds sources.csv and the
    composition by dataset and by robot to the report."""
    run_dir = Path(run_dir)
    mask = np.asarray(mask, bool)
    plots = [
        plot_score_histogram(scores, mask, run_dir / "score_histogram.png"),
        plot_composition(tasks, successes, mask, run_dir / "composition.png"),
        plot_score_vs_length(scores, lengths, mask, run_dir / "score_vs_length.png"),
    ]
    text = markdown_report(title, facts, tasks, successes, mask, plots)
    if sources is not None:  # a mixture prior: where the selection comes from, by dataset and robot
        datasets, robots = sources
        text += write_source_composition(run_dir, source_composition(datasets, robots, lengths, mask))[1]
    return atomic_write_text(run_dir / "report.md", text)


SOURCE_FIELDS = ("by", "name", "prior_episodes", "selected_episodes", "prior_steps", "selected_steps")


def source_composition(
    datasets: list[str], robots: dict[str, str], lengths: np.ndarray, mask: np.ndarray
) -> list[dict]:
    """Rows of a mixture prior's composition, by dataset and by robot: episodes and steps in the prior and
    in the selection (a robot missing from `robots` counts as "unknown")."""
    rows = []
    for by, names in (("dataset", datasets), ("robot", [robots.get(d, "unknown") for d in datasets])):
        names = np.asarray(names)
        for name in sorted(set(names.tolist())):
            mine = names == name
            rows.append(
                {
                    "by": by,
                    "name": name,
                    "prior_episodes": int(mine.sum()),
                    "selected_episodes": int((mine & mask).sum()),
                    "prior_steps": int(lengths[mine].sum()),
                    "selected_steps": int(lengths[mine & mask].sum()),
                }
            )
    return rows


def write_source_composition(run_dir: Path, rows: list[dict]) -> tuple[Path, str]:
    """sources.csv in `run_dir`, and the same rows as Markdown tables for report.md."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SOURCE_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    path = atomic_write_text(Path(run_dir) / "sources.csv", buffer.getvalue())
    lines = []
    for by in ("dataset", "robot"):
        lines += [
            "",
            f"## Composition by {by}",
            "",
            f"| {by} | prior episodes | selected episodes | prior steps | selected steps |",
        ]
        lines += ["|---|---|---|---|---|"]
        lines += [
            f"| {r['name']} | {r['prior_episodes']} | {r['selected_episodes']} | {r['prior_steps']} | {r['selected_steps']} |"
            for r in rows
            if r["by"] == by
        ]
    return path, "\n".join(lines) + "\n"
