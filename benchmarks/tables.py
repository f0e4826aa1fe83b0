"""Every results table in the README, from committed CSVs alone.

    python benchmarks/tables.py                         # every CSV under benchmarks/results/
    python benchmarks/tables.py path/to/runs.csv ...    # or these
    python benchmarks/tables.py --pool out/runs.csv a/runs.csv b/runs.csv   # disjoint runs as one table

Writes results.md and success.png next to each runs.csv (and pilot.md next to each pilot.csv) and prints
the tables. The benchmark (selection_quality.py) writes its results.md with the same functions, so a
committed CSV regenerates exactly the tables it produced.

Method names (the benchmark's `methods` list) are specs:
- `<estimator>` (e.g. `metagrad`): DataMIL, that estimator's scores, top-k at the budget;
- `<estimator>_<datamodel method>` (e.g. `metagrad_threshold`): that datamodel selection method
  (topk | threshold | iterative | refine) on that estimator's scores;
- any other registered selection method (`random`, `strap`, `deminf`, ...): a baseline at the budget;
- `<spec>@<reference>` (e.g. `random@metagrad_threshold`): the spec with its budget set to the number of
  trajectories the reference selected for the same (task, seed): a size-matched comparison;
- `<spec>@<share>` (e.g. `action_similarity@0.02`): the spec at that fixed share of the prior instead of
  the budget, e.g. a retrieval baseline at a size DataMIL does not keep;
- `<spec>|<spec>|...` (e.g. `metagrad_refine|metagrad|all_prior`): a choice among candidate selections made
  after co-training. Each candidate is co-trained as it is alone (the same runs), and the policy whose
  surrogate (action loss on target-val) is lowest is kept: DataMIL's surrogate measured on the co-trained
  policy instead of predicted by a datamodel. It is a DataMIL variant when every candidate is a datamodel
  selection or one of the ranking's two ends (all_prior, target_only), and a baseline otherwise.
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from datamil.datamodels import ESTIMATORS
from datamil.errors import DatamilError
from datamil.io import atomic_write_text
from datamil.report import markdown_table
from datamil.scripts import load_script
from datamil.selection import SELECTION_METHODS
from datamil.selection.methods import DATAMODEL_METHODS, UNRANKED_METHODS

RESULTS_DIR = Path(__file__).resolve().parent / "results"
CSV_FIELDS = (
    "task", "method", "seed", "success_rate", "ci_low", "ci_high", "n_episodes", "surrogate_loss",
    "n_prior", "n_selected", "selected_success", "selected_target_task", "select_s", "train_s", "eval_s", "cpu_s",
    "n_target_train", "n_target_val", "budget", "budget_count", "size_from", "cotrain_steps", "chosen",
)  # fmt: skip
PILOT_FIELDS = (*CSV_FIELDS, "qualifies", "test_task", "dev_task")
INT_FIELDS = {"seed", "n_episodes", "n_prior", "n_selected", "selected_success", "selected_target_task"}
INT_FIELDS |= {"n_target_train", "n_target_val", "budget_count", "cotrain_steps"}
TEXT_FIELDS = {"task", "method", "size_from", "qualifies", "test_task", "dev_task", "chosen"}
SELF_SIZED = UNRANKED_METHODS | {"threshold"}  # methods that choose their own size: the budget does not apply
PRIVILEGED = frozenset({"same_task_success"})  # references that read labels no method has: never a baseline
RANKING_ENDS = frozenset({"all_prior", "target_only"})  # every datamodel ranking's largest and smallest cut
CHOICE = "choice"  # MethodSpec.method of a `a|b|...` spec: no selection method of its own runs
DATAMIL_LABELS = {"topk": "DataMIL top-k", "threshold": "DataMIL, size by the datamodel", "iterative": "DataMIL, iterative pruning", "refine": "DataMIL inside a retrieval pool"}  # fmt: skip
BAR = {"best baseline": 10, "all_prior": 15}  # points DataMIL must gain over each


# ------------------------------------------------------------------------------------ method specs
@dataclass(frozen=True)
class MethodSpec:
    """One entry of the benchmark's method list, taken apart."""

    name: str  # as written, e.g. "random@metagrad_threshold"
    method: str  # the SELECTION_METHODS name that runs, e.g. "random" or "threshold"
    estimator: str | None  # datamodel methods: the estimator the spec names (None: the config's)
    size_from: str | None  # size-matched: the spec whose selection count is this run's budget
    candidates: tuple[str, ...] = ()  # a choice (`a|b`): the specs co-trained, the lowest surrogate kept
    share: float | None = None  # `method@0.02`: a fixed share of the prior as this run's budget

    @property
    def datamodel(self) -> bool:
        if self.candidates:
            parts = [parse_method(c) for c in self.candidates]
            return any(p.datamodel for p in parts) and all(
                p.datamodel or p.name in RANKING_ENDS for p in parts
            )
        return self.method in DATAMODEL_METHODS

    @property
    def privileged(self) -> bool:
        return self.method in PRIVILEGED

    @property
    def baseline(self) -> bool:
        """What a DataMIL variant must beat: neither a datamodel method nor a privileged reference."""
        return not self.datamodel and not self.privileged

    @property
    def self_sized(self) -> bool:
        return self.method in SELF_SIZED or bool(self.candidates)


def _parse_base(name: str) -> tuple[str, str | None]:
    """(selection method, estimator) of a spec without `@`."""
    if name in ESTIMATORS:
        return "topk", name
    head, _, tail = name.rpartition("_")
    if head in ESTIMATORS and tail in DATAMODEL_METHODS:
        return tail, head
    if name in SELECTION_METHODS:
        return name, None
    raise DatamilError(
        f"unknown method {name!r}; use an estimator ({', '.join(ESTIMATORS.names())}), "
        f"<estimator>_<{'|'.join(sorted(DATAMODEL_METHODS))}>, or a selection method "
        f"({', '.join(SELECTION_METHODS.names())}), optionally @<method> for a size-matched run or @<share> for a fixed share of the prior"
    )


def parse_method(name: str) -> MethodSpec:
    """A method spec (see the module docstring) as a MethodSpec; a bad spec fails on one line."""
    if "|" in name:
        return _parse_choice(name)
    base, at, ref = name.partition("@")
    method, estimator = _parse_base(base)
    share = _share(ref) if at else None
    if share is not None:
        return _parse_share(name, method, estimator, share)
    if at and (not ref or "@" in ref):
        raise DatamilError(f"method {name!r}: size-match to one plain method, e.g. random@metagrad_threshold")
    if at:
        _parse_base(ref)
        if method in SELF_SIZED:
            raise DatamilError(
                f"method {name!r}: {method} chooses its own size, so it cannot be size-matched"
            )
    return MethodSpec(name, method, estimator, ref or None)


def _share(text: str) -> float | None:
    """The number after `@` when it is one (`random@0.02`), None when it names a method."""
    try:
        return float(text)
    except ValueError:
        return None


def _parse_share(name: str, method: str, estimator: str | None, share: float) -> MethodSpec:
    """`method@0.02`: the method at a fixed share of the prior instead of the preset's budget, e.g. a
    retrieval baseline at another size than the one DataMIL keeps."""
    if not 0.0 < share <= 1.0:
        raise DatamilError(f"method {name!r}: a share of the prior is in (0, 1], e.g. action_similarity@0.02")
    if method in SELF_SIZED:
        raise DatamilError(f"method {name!r}: {method} chooses its own size, so it takes no share")
    return MethodSpec(name, method, estimator, None, share=share)


def _parse_choice(name: str) -> MethodSpec:
    """`a|b|...`: two or more distinct plain or size-matched specs (`@` binds tighter than `|`, so nothing
    is size-matched to a choice: each candidate's own size-matched runs already compare at its size)."""
    candidates = tuple(name.split("|"))
    if len(candidates) < 2 or len(set(candidates)) < len(candidates) or "" in candidates:
        raise DatamilError(
            f"method {name!r}: a choice needs two or more distinct candidates, e.g. metagrad_refine|all_prior"
        )
    for candidate in candidates:
        parse_method(candidate)
    return MethodSpec(name, CHOICE, None, None, candidates)


def trained_runs(rows: Sequence[dict]) -> list[dict]:
    """The rows that trained a policy of their own: a choice's row repeats the candidate it kept (and adds up
    every candidate's cost), so statistics over policies or per-run costs leave it out."""
    return [r for r in rows if not r.get("chosen")]


def choose_by_surrogate(name: str, candidate_rows: Sequence[dict]) -> dict:
    """The row of choice `name` from its candidates' rows of one (task, seed): the candidate whose co-trained
    policy has the lowest surrogate, with its success. The cost columns add up every candidate's, since a
    user of the choice pays for every co-training (and here every evaluation too: an upper bound)."""
    if not candidate_rows:
        raise DatamilError(f"method {name!r}: no candidate runs to choose from")
    chosen = min(candidate_rows, key=lambda r: float(r["surrogate_loss"]))
    costs = {k: sum(float(r.get(k) or 0.0) for r in candidate_rows) for k in ("select_s", "train_s", "cpu_s")}
    return (
        chosen
        | costs
        | {"method": name, "chosen": chosen["method"]}
        | dict.fromkeys(("budget", "budget_count", "size_from"), "")
    )


def label(name: str) -> str:
    """How the tables name a method: DataMIL variants and size-matched runs say what they are."""
    spec = parse_method(name)
    if spec.candidates:
        kind = (
            "DataMIL, size chosen by the co-trained surrogate"
            if spec.datamodel
            else "lowest co-trained surrogate"
        )
        return f"{name} ({kind})"
    if spec.size_from:
        return f"{name.partition('@')[0]}, size-matched to {spec.size_from}"
    if spec.share is not None:
        return f"{name.partition('@')[0]} at {100 * spec.share:g}% of the prior"
    if spec.privileged:
        return f"{name} (privileged reference)"
    return f"{name} ({DATAMIL_LABELS[spec.method]})" if spec.datamodel else name


def datamil_variants(methods: Sequence[str]) -> list[str]:
    """The DataMIL methods of a list: datamodel selections at their own size."""
    return [m for m in methods if parse_method(m).datamodel and not parse_method(m).size_from]


def compared_with(methods: Sequence[str], datamil: str) -> list[str]:
    """What a DataMIL variant is compared with: every plain method, and the runs size-matched to it. A choice
    keeps one of its candidates' selections, so the runs size-matched to any candidate compare with it too."""
    sizes = (None, datamil, *parse_method(datamil).candidates)
    return [m for m in methods if m != datamil and parse_method(m).size_from in sizes]


# ------------------------------------------------------------------------------------ statistics
def reaches(points_over: float, bar: float) -> bool:
    """Whether a difference in points meets a bar; a tie within float rounding (10.0 computed as 9.99..)
    counts, so every table gives the same verdict for the same number."""
    return points_over >= bar - 1e-9


def mean_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high): a 95% t-interval of the mean (NaN bounds below two values)."""
    values = np.asarray(values, np.float64)
    mean = float(values.mean()) if len(values) else float("nan")
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    sem = float(stats.sem(values))
    if sem == 0.0:  # every value equal: scipy would return NaN for a zero scale
        return mean, mean, mean
    low, high = stats.t.interval(0.95, len(values) - 1, loc=mean, scale=sem)
    return mean, float(low), float(high)


def interval(successes: Sequence[float], n_episodes: int) -> tuple[float, float, float]:
    """(mean, low, high) of per-seed success rates: a 95% t-interval over seeds (training and evaluation
    noise together); with one seed, the Wilson interval of its episodes."""
    values = np.asarray(successes, np.float64)
    if len(values) >= 2:
        mean, low, high = mean_interval(values)
        return mean, max(0.0, low), min(1.0, high)
    mean = float(values.mean()) if len(values) else float("nan")
    if len(values) == 0 or n_episodes < 1:
        return mean, 0.0, 1.0
    ci = stats.binomtest(round(mean * n_episodes), n_episodes).proportion_ci(method="wilson")
    return mean, float(ci.low), float(ci.high)


def cell(rows: list[dict], method: str, task: str | None = None) -> tuple[float, float, float]:
    """Mean and interval of a method on one task, or over all tasks (per seed: the mean over tasks)."""
    mine = [r for r in rows if r["method"] == method and (task is None or r["task"] == task)]
    seeds = sorted({r["seed"] for r in mine})
    per_seed = [np.mean([r["success_rate"] for r in mine if r["seed"] == s]) for s in seeds]
    return interval(per_seed, sum(r["n_episodes"] for r in mine) // max(1, len(seeds)))


def paired_differences(rows: list[dict], a: str, b: str) -> list[float]:
    """success(a) - success(b) on every (task, seed) pair where both ran."""
    rate = {(r["method"], r["task"], r["seed"]): r["success_rate"] for r in rows}
    return [rate[(a, t, s)] - v for (m, t, s), v in rate.items() if m == b and (a, t, s) in rate]


def paired_difference(rows: list[dict], a: str, b: str) -> tuple[float, float, float]:
    """Mean over (task, seed) of success(a) - success(b), with a 95% t-interval over the pairs."""
    return mean_interval(paired_differences(rows, a, b))


def points(value: float | str, sign: bool = False) -> str:
    """A rate in percentage points ("-" for a blank or NaN)."""
    return (
        "-" if value == "" or np.isnan(value) else f"{100 * value:{'+' if sign else ''}.{1 if sign else 0}f}"
    )


def difference_text(diff: tuple[float, float, float]) -> str:
    """A paired difference in signed points with its interval, e.g. "+4.8 [-1.2, +10.8]"."""
    return f"{points(diff[0], True)} [{points(diff[1], True)}, {points(diff[2], True)}]"


# ------------------------------------------------------------------------------------ tables
def finished_everywhere(rows: list[dict], methods: Sequence[str]) -> list[dict]:
    """The rows of the (task, seed) pairs that every method has finished: means over tasks compare like
    with like while a run is still filling in."""
    done = {(r["task"], r["seed"], r["method"]) for r in rows}
    pairs = {(r["task"], r["seed"]) for r in rows if all((r["task"], r["seed"], m) in done for m in methods)}
    return [r for r in rows if (r["task"], r["seed"]) in pairs]


def success_table(rows: list[dict], methods: Sequence[str]) -> str:
    """Success per method and task, and the mean over tasks (its interval over per-seed task means), taken
    over the (task, seed) pairs every method has finished; a partial run says how many tasks that is."""
    tasks = sorted({r["task"] for r in rows})
    complete = finished_everywhere(rows, methods)
    n_complete = len({r["task"] for r in complete})
    mean = "**mean**" if n_complete == len(tasks) else f"**mean of the {n_complete} finished tasks**"
    header = ["method", *(t.split("/")[-1] for t in tasks), mean]
    body = []
    for m in methods:
        cells = [cell(rows, m, t) for t in tasks] + [cell(complete, m)]
        text = [f"{points(c[0])} [{points(c[1])}, {points(c[2])}]" for c in cells]
        body.append([label(m), *text[:-1], f"**{text[-1]}**"])
    return "\n".join(markdown_table(header, body))


def paired_table(rows: list[dict], methods: Sequence[str]) -> str:
    """DataMIL variant (columns) minus each method it is compared with (rows), in points, with a 95%
    t-interval over (task, seed) pairs: seeds share start states, so pairing removes their difficulty."""
    variants = datamil_variants(methods)
    body = [
        [label(other)]
        + [difference_text(paired_difference(rows, d, other)) if other in compared_with(methods, d) else "" for d in variants]
        for other in methods
        if any(other in compared_with(methods, d) for d in variants)
    ]  # fmt: skip
    return "\n".join(markdown_table(["minus", *variants], body))


def bar_check(rows: list[dict], methods: Sequence[str]) -> str:
    """The issue's bar, per DataMIL variant: >= its best baseline + 10 points and >= all_prior + 15 (mean
    paired difference). Baselines are the non-datamodel methods it is compared with, size-matched included."""
    variants = datamil_variants(methods)
    if not variants:
        return "(no DataMIL method in the method list: no bar check)"
    rows = finished_everywhere(rows, methods)  # a partial run: only the pairs every method has finished
    header = ["DataMIL", "best baseline", "minus best (needs +10)", "minus all_prior (needs +15)", "bar"]
    body = []
    for d in variants:
        best = best_baseline(rows, methods, d)
        if best is None:
            body.append([d, "(no baselines)", "", "", ""])
            continue
        checks = {"best baseline": paired_difference(rows, d, best)}
        if "all_prior" in methods:
            checks["all_prior"] = paired_difference(rows, d, "all_prior")
        text = {k: difference_text(v) for k, v in checks.items()}
        met = all(reaches(100 * v[0], BAR[k]) for k, v in checks.items())
        body.append(
            [d, label(best), text["best baseline"], text.get("all_prior", "-"), "met" if met else "MISSED"]
        )
    lines = markdown_table(header, body)
    if "all_prior" in methods:
        lines += ["", headroom_line(rows)]
    return "\n".join([*lines, "", reached_line(rows, methods)])


def best_baseline(rows: list[dict], methods: Sequence[str], datamil: str) -> str | None:
    """The baseline `datamil` is compared with (size-matched runs included) with the highest mean success
    over `rows`; None when it is compared with none."""
    baselines = [m for m in compared_with(methods, datamil) if parse_method(m).baseline]
    return max(baselines, key=lambda m: cell(rows, m)[0]) if baselines else None


def envelope(rows: list[dict], methods: Sequence[str]) -> tuple[dict[str, str], float]:
    """The method with the best mean on each task (privileged reference included) and the mean over tasks
    of those bests, in [0, 1]: what the table reached on each task, whichever method reached it."""
    tasks = sorted({r["task"] for r in rows})
    best_per_task = {t: max(methods, key=lambda m: cell(rows, m, t)[0]) for t in tasks}
    return best_per_task, float(np.mean([cell(rows, best_per_task[t], t)[0] for t in tasks]))


def reached_line(rows: list[dict], methods: Sequence[str]) -> str:
    """What any method in the table reached: the best mean per task, whichever method (privileged reference
    included) it came from, averaged over tasks, against the best baseline. Picking the best of noisy means
    per task overstates what one method reaches, so this is optimistic; when even it falls short of the
    bar over the best baseline, no method here came near that bar."""
    baselines = [m for m in methods if parse_method(m).baseline]
    if not baselines:
        return "Reached: no baseline in the table."
    best_per_task, reached = envelope(rows, methods)
    envelope_mean = 100 * reached
    best = max(baselines, key=lambda m: cell(rows, m)[0])
    best_mean = 100 * cell(rows, best)[0]
    gap = envelope_mean - best_mean
    per_task = ", ".join(
        f"{t.split('/')[-1]} {100 * cell(rows, m, t)[0]:.0f} ({m})" for t, m in best_per_task.items()
    )
    verdict = "within" if reaches(gap, BAR["best baseline"]) else "short of"
    references = [
        f" The privileged reference {m} is {difference_text(paired_difference(rows, m, best))} points over "
        "that baseline (paired)."
        for m in methods
        if parse_method(m).privileged
    ]
    return (
        f"Reached: the best method per task ({per_task}) averages {envelope_mean:.1f}, {gap:+.1f} points over the "
        f"best baseline ({label(best)}, {best_mean:.1f}); this optimistic envelope is "
        f"{verdict} the +{BAR['best baseline']} bar over the best baseline.{''.join(references)}"
    )


def headroom_line(rows: list[dict]) -> str:
    """The most any selection can gain over all_prior on these pairs: the mean of 100 - all_prior's success.
    A bar above it cannot be met by any method, however good its selection; saying so keeps a missed bar
    from reading as a failure of the estimator alone."""
    room_by_task: dict[str, list[float]] = {}
    for r in rows:
        if r["method"] == "all_prior":
            room_by_task.setdefault(r["task"], []).append(100 * (1.0 - r["success_rate"]))
    if not room_by_task:
        return "Headroom over all_prior: no all_prior run."
    room = float(np.mean([v for values in room_by_task.values() for v in values]))
    per_task = ", ".join(f"{t.split('/')[-1]} {np.mean(room_by_task[t]):.0f}" for t in sorted(room_by_task))
    reach = "reachable" if room >= BAR["all_prior"] else "out of reach for any method"
    return (
        f"Headroom: a perfect policy would gain {room:+.1f} points over all_prior on these pairs "
        f"(100 - all_prior per task: {per_task}), so the +{BAR['all_prior']} bar over all_prior is {reach}."
    )


def surrogate_correlation(rows: list[dict]) -> str:
    """Does the rollout-free surrogate track success? Spearman over all runs, and within each task (the
    pooled number mixes tasks whose losses live on different scales). A choice's row repeats the policy of
    the candidate it kept, so it is left out rather than counted twice."""
    rows = trained_runs(rows)
    loss = np.array([r["surrogate_loss"] for r in rows])
    success = np.array([r["success_rate"] for r in rows])

    def rho(idx: np.ndarray) -> float:
        varies = np.ptp(success[idx]) > 0 and np.ptp(loss[idx]) > 0
        return stats.spearmanr(loss[idx], success[idx]).statistic if varies else float("nan")

    lines = [
        f"- all {len(rows)} trained policies: Spearman(surrogate loss, success) = {rho(np.arange(len(rows))):+.2f}"
    ]
    for task in sorted({r["task"] for r in rows}):
        idx = np.array([i for i, r in enumerate(rows) if r["task"] == task])
        lines.append(f"- {task} ({len(idx)} policies): {rho(idx):+.2f}")
    lines.append("(negative = lower target-val loss goes with higher success, as the premise needs)")
    return "\n".join(lines)


def composition_table(rows: list[dict], methods: Sequence[str]) -> str:
    """What each method picked, summed over runs: how many prior trajectories, how many successful, how
    many of the target task itself; and the mean target-val loss of the policies co-trained on it."""
    cells = []
    for m in methods:
        mine = [r for r in rows if r["method"] == m]
        n = sum(r["n_selected"] for r in mine)
        share = {k: f"{100 * sum(r[k] for r in mine) / n:.0f}%" if n else "-" for k in ("selected_success", "selected_target_task")}  # fmt: skip
        loss = np.mean([r["surrogate_loss"] for r in mine])
        cells.append((label(m), f"{n / max(1, len(mine)):.1f}", share["selected_success"],
                      share["selected_target_task"], f"{loss:.4f}"))  # fmt: skip
    header = ("method", "selected / run", "successful", "from the target task", "co-trained surrogate loss")
    return "\n".join(markdown_table(header, cells))


def _common(rows: list[dict], key: str) -> str:
    """The value of `key` shared by the rows ("?" when the CSV predates the column, "a/b" when it varies)."""
    values = sorted({str(r[key]) for r in rows if r.get(key) not in (None, "")})
    return "/".join(values) if values else "?"


def results_markdown(rows: list[dict]) -> str:
    """results.md: success, paired differences, the bar, surrogate vs success, composition, timing."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    budget_rows = [r for r in rows if not r.get("size_from")]
    budget = _common(budget_rows, "budget")
    budget = f"{float(budget):.0%}" if budget.replace(".", "", 1).isdigit() else budget
    keys = ("select_s", "train_s", "eval_s", "cpu_s")
    timing = {k: np.mean([r[k] for r in trained_runs(rows) if r.get(k)] or [float("nan")]) for k in keys}
    text = [
        "## Success rate (%), mean over seeds [95% interval]",
        f"{len({r['task'] for r in rows})} tasks, {len({r['seed'] for r in rows})} seed(s), "
        f"{_common(rows, 'n_episodes')} episodes per run, budget {budget} of a {_common(rows, 'n_prior')}-trajectory "
        f"prior, {_common(rows, 'n_target_train')} target-train / {_common(rows, 'n_target_val')} target-val demos, "
        f"{_common(rows, 'cotrain_steps')} co-training steps. Interval: t over seeds (Wilson over episodes for one seed).",
        "", success_table(rows, methods), "",
        "## Paired differences (points): DataMIL minus each method, 95% t-interval over (task, seed) pairs",
        paired_table(rows, methods), "", "## The bar", bar_check(rows, methods), "",
        "## Surrogate loss vs success", surrogate_correlation(rows), "",
        "## What was selected", composition_table(rows, methods), "", *choices_lines(rows),
        f"Mean seconds per run (fresh runs only): select {timing['select_s']:.1f}, "
        f"co-train {timing['train_s']:.1f}, evaluate {timing['eval_s']:.1f}; CPU seconds per run "
        f"{timing['cpu_s']:.1f} (wall time on a shared machine overstates the cost).",
    ]  # fmt: skip
    return "\n".join(text) + "\n"


def choices_lines(rows: list[dict]) -> list[str]:
    """What each choice (`a|b`) kept, per candidate over the (task, seed) pairs, and the success of each pick:
    whether the co-trained surrogate picks well is the question a choice stands on."""
    lines = []
    for method in dict.fromkeys(r["method"] for r in rows if r.get("chosen")):
        picks: dict[str, list[float]] = {}
        for r in rows:
            if r["method"] == method:
                picks.setdefault(r["chosen"], []).append(100 * r["success_rate"])
        kept = ", ".join(f"{c} {len(v)} (mean success {np.mean(v):.0f})" for c, v in sorted(picks.items()))
        lines.append(f"- {method} kept: {kept}")
    return ["## What each choice kept (lowest co-trained surrogate)", *lines, ""] if lines else []


# ------------------------------------------------------------------------------------ the pilot
def pilot_pick(rows: list[dict], max_success: float, n_test: int, n_dev: int = 0) -> list[dict]:
    """The pilot's rule, applied to the pilot method's rows in candidate order: a candidate qualifies when
    that method succeeds on fewer than `max_success` of its episodes (room for selection to show). Qualifying
    candidates become test tasks, or alternately (test first) dev tasks while fewer than `n_dev` are dev
    tasks, until `n_test` are test tasks: hard dev tasks to tune on, and hard test tasks never tuned on."""
    out, n_chosen, n_dev_chosen = [], 0, 0
    for row in rows:
        qualifies = row["success_rate"] < max_success
        dev = qualifies and n_dev_chosen < n_dev and (n_chosen > n_dev_chosen or n_chosen >= n_test)
        test = qualifies and not dev and n_chosen < n_test
        n_chosen, n_dev_chosen = n_chosen + test, n_dev_chosen + dev
        out.append(
            row
            | {"qualifies": "yes" if qualifies else "no", "test_task": "yes" if test else "no"}
            | ({"dev_task": "yes" if dev else "no"} if n_dev else {})
        )
    return out


def pilot_markdown(rows: list[dict]) -> str:
    """pilot.md: the pilot method's success per candidate, and the test_tasks (and dev_tasks) lines the
    rule picks."""
    method = (rows[0].get("method") or "target_only") if rows else "target_only"
    with_dev = any(r.get("dev_task") for r in rows)
    header = ("candidate", f"{method} success (%) [95% Wilson]", "qualifies", "test task")
    header += ("dev task",) if with_dev else ()
    cells = [
        (r["task"], f"{points(r['success_rate'])} [{points(r['ci_low'])}, {points(r['ci_high'])}]",
         r["qualifies"], r["test_task"], *((r["dev_task"],) if with_dev else ()))
        for r in rows
    ]  # fmt: skip
    lines = markdown_table(header, cells)
    chosen = [r["task"] for r in rows if r["test_task"] == "yes"]
    if rows:  # how much room the pilot method leaves on the candidates as a whole
        mean = float(np.mean([r["success_rate"] for r in rows]))
        n_qualify = sum(r["qualifies"] == "yes" for r in rows)
        lines += [
            "",
            f"{n_qualify} of {len(rows)} candidates qualify. {method} averages {100 * mean:.1f}% over the candidates:"
            f" a policy at 100% on every one would be {100 * (1 - mean):+.1f} points above it.",
        ]
    lines += ["", f"test_tasks: [{', '.join(chosen)}]"]
    if with_dev:
        lines.append(f"dev_tasks: [{', '.join(r['task'] for r in rows if r['dev_task'] == 'yes')}]")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------ CSV in and out
def write_csv(rows: list[dict], path: Path, fields: Sequence[str] = CSV_FIELDS) -> Path:
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fields), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, buffer.getvalue())


def _value(key: str, text: str) -> object:
    if key in TEXT_FIELDS or text == "":
        return text
    return int(float(text)) if key in INT_FIELDS else float(text)


def read_rows(path: Path) -> list[dict]:
    """runs.csv (or pilot.csv) rows with the types the benchmark wrote them with."""
    with open(path, newline="") as f:
        rows = [{k: _value(k, v) for k, v in row.items()} for row in csv.DictReader(f)]
    if not rows:
        raise DatamilError(f"{path} has no runs")
    return rows


def plain_markdown(path: Path) -> str:
    """Any other results CSV (e.g. the estimator fidelity tables) as one markdown table, row for row."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if len(rows) < 2:
        raise DatamilError(f"{path} has no rows")
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows[1:]]) + "\n"


# CSVs whose benchmark lays out its own results.md: {CSV name: benchmarks/<script>.py with write_results_md}
OWN_LAYOUT = {"cross_embodiment.csv": "cross_embodiment", "choice.csv": "surrogate_alignment"}


def plot_success(rows: list[dict], methods: list[str], path: Path) -> Path:
    """Grouped bars: success per task and overall, one bar per method, 95% intervals as error bars.

    Up to 20 methods get 20 distinct colours (the default cycle repeats after 10, which made two methods
    look alike), and size-matched runs are hatched."""
    from datamil.report import pyplot, save_figure  # matplotlib only when a figure is drawn

    plt = pyplot()
    tasks = sorted({r["task"] for r in rows})
    groups = [*tasks, None]
    width = 0.8 / len(methods)
    colors = plt.get_cmap("tab20" if len(methods) > 10 else "tab10")
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(groups)), 3.6))
    for j, m in enumerate(methods):
        stats = np.array([cell(rows, m, g) for g in groups])
        x = np.arange(len(groups)) + (j - (len(methods) - 1) / 2) * width
        err = np.abs(stats[:, 1:] - stats[:, :1]).T
        ax.bar(x, 100 * stats[:, 0], width, yerr=100 * err, label=m, capsize=2,
               color=colors(j % colors.N), hatch="//" if "@" in m else None)  # fmt: skip
    ax.set_xticks(np.arange(len(groups)), [g.split("/")[-1] if g else "mean" for g in groups])
    ax.set(ylabel="success (%)", ylim=(0, 105))
    ax.legend(fontsize=7, ncol=3, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return save_figure(fig, path)


# ------------------------------------------------------------------------------------ every test set at once
TEST_SET_FIELDS = ("test_set", "runs", "datamil")  # test_sets.csv: a label, a runs.csv (relative), a method


def is_set_listing(csv_path: Path) -> bool:
    """A listing of test sets is any `*test_sets.csv` (test_sets.csv: the issue's setting, the target inside
    the prior; new_task_test_sets.csv: the target out of it), so each setting is summarized and pooled alone."""
    return csv_path.name.endswith("test_sets.csv")


@dataclass(frozen=True)
class TestSetSummary:
    """One DataMIL method on one test set, against that set's best baseline, all_prior and reference."""

    test_set: str
    datamil: str
    pairs: int
    success: float  # DataMIL's mean success over the pairs every method finished, in [0, 1]
    best: str
    best_success: float
    # DataMIL minus the best baseline on each (task, seed), in [0, 1] units
    over_best_pairs: tuple[float, ...]
    over_all_prior_pairs: tuple[float, ...]
    reference_over_best_pairs: tuple[float, ...]  # the privileged reference minus the best; () without one
    # the best mean per task of every method run, privileged reference included, averaged over tasks, minus
    # the best baseline's mean: an optimistic ceiling (the best of noisy means) on what any one method reached
    envelope_over_best: float = float("nan")

    @property
    def over_best(self) -> tuple[float, float, float]:
        """Paired (mean, low, high) of DataMIL minus the best baseline."""
        return mean_interval(self.over_best_pairs)

    @property
    def over_all_prior(self) -> tuple[float, float, float]:
        """Paired (mean, low, high) of DataMIL minus all_prior."""
        return mean_interval(self.over_all_prior_pairs)

    @property
    def reference_over_best(self) -> tuple[float, float, float]:
        """Paired (mean, low, high) of the privileged reference minus the best baseline (NaN without one)."""
        return mean_interval(self.reference_over_best_pairs)


def summarize_test_set(rows: list[dict], test_set: str, datamil: str) -> TestSetSummary:
    """What the bar asks of `datamil` on one runs.csv: the same pairs and best baseline as its bar check."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    if datamil not in methods:
        raise DatamilError(
            f"test set {test_set!r} has no runs of {datamil!r}; add them or name another method"
        )
    rows = finished_everywhere(rows, methods)
    best = best_baseline(rows, methods, datamil)
    if best is None or "all_prior" not in methods:
        raise DatamilError(
            f"test set {test_set!r} needs all_prior and at least one baseline beside {datamil}"
        )
    reference = next((m for m in methods if parse_method(m).privileged), None)
    return TestSetSummary(
        test_set, datamil, len({(r["task"], r["seed"]) for r in rows}), cell(rows, datamil)[0], best,
        cell(rows, best)[0], tuple(paired_differences(rows, datamil, best)),
        tuple(paired_differences(rows, datamil, "all_prior")),
        tuple(paired_differences(rows, reference, best)) if reference else (),
        envelope(rows, methods)[1] - cell(rows, best)[0],
    )  # fmt: skip


def pooled(summaries: Sequence[TestSetSummary]) -> TestSetSummary:
    """Every set's (task, seed) pairs in one t-interval: a tighter answer than any one set gives. Each set
    keeps its own best baseline (the strongest by that set's mean), which if anything favours the baselines."""
    pairs = np.array([s.pairs for s in summaries], np.float64)
    return TestSetSummary(
        f"{len(summaries)} sets pooled", ", ".join(sorted({s.datamil for s in summaries})), int(pairs.sum()),
        float(np.average([s.success for s in summaries], weights=pairs)), "each set's own",
        float(np.average([s.best_success for s in summaries], weights=pairs)),
        *(tuple(d for s in summaries for d in getattr(s, f"{name}_pairs"))
          for name in ("over_best", "over_all_prior", "reference_over_best")),
        float(np.average([s.envelope_over_best for s in summaries], weights=pairs)),
    )  # fmt: skip


def read_test_sets(csv_path: Path) -> list[TestSetSummary]:
    """Every row of a test_sets.csv, summarized from the runs.csv it names (relative to the CSV)."""
    with open(csv_path, newline="") as f:
        entries = list(csv.DictReader(f))
    if not entries or set(entries[0]) != set(TEST_SET_FIELDS):
        raise DatamilError(
            f"{csv_path} needs the columns {', '.join(TEST_SET_FIELDS)} and one row per test set"
        )
    summaries = []
    for entry in entries:
        runs = csv_path.parent / entry["runs"]
        if not runs.is_file():
            raise DatamilError(f"{csv_path}: {runs} does not exist; commit that run or drop its row")
        summaries.append(summarize_test_set(read_rows(runs), entry["test_set"], entry["datamil"]))
    return summaries


def test_sets_markdown(summaries: Sequence[TestSetSummary]) -> str:
    """One line per test set: DataMIL against both bars, and the privileged reference against the first."""
    header = [
        "test set", "(task, seed) pairs", "DataMIL", "best baseline", "minus the best baseline (bar +10)",
        "minus all_prior (bar +15)", "privileged reference minus the best baseline",
        "best of every method per task minus the best baseline (optimistic)",
    ]  # fmt: skip
    body = [
        [s.test_set, s.pairs, f"{s.datamil}: {points(s.success)}", f"{s.best}: {points(s.best_success)}",
         difference_text(s.over_best), difference_text(s.over_all_prior),
         difference_text(s.reference_over_best) if np.isfinite(s.reference_over_best[0]) else "-",
         points(s.envelope_over_best, True)]
        for s in summaries
    ]  # fmt: skip
    met = [s.test_set for s in summaries if reaches(100 * s.over_best[0], BAR["best baseline"])]
    met_prior = [s.test_set for s in summaries if reaches(100 * s.over_all_prior[0], BAR["all_prior"])]
    return "\n".join([
        *markdown_table(header, body), "",
        f"+{BAR['best baseline']} over the best baseline: met on {len(met)} of {len(summaries)} test sets"
        f"{': ' + ', '.join(met) if met else ''}. +{BAR['all_prior']} over all_prior: met on {len(met_prior)} of "
        f"{len(summaries)}{': ' + ', '.join(met_prior) if met_prior else ''}.", "", pooled_line(summaries),
    ]) + "\n"  # fmt: skip


def pooled_line(summaries: Sequence[TestSetSummary]) -> str:
    """The pooled answer in one sentence (see `pooled`)."""
    both = pooled(summaries)
    return (
        f"Pooled over the {len(summaries)} test sets ({both.pairs} (task, seed) pairs, each against its own "
        f"set's best baseline): {difference_text(both.over_best)} over the best baseline, "
        f"{difference_text(both.over_all_prior)} over all_prior."
        + (f" The privileged reference, where it ran ({len(both.reference_over_best_pairs)} pairs): "
           f"{difference_text(both.reference_over_best)} over the best baseline." if both.reference_over_best_pairs else "")
        + f" The best of every method per task, an optimistic ceiling on any one method, is "
        f"{points(both.envelope_over_best, True)} over the best baseline (pair-weighted), and reaches the "
        f"+{BAR['best baseline']} bar on {sum(reaches(100 * s.envelope_over_best, BAR['best baseline']) for s in summaries)} "
        f"of {len(summaries)} sets."
    )  # fmt: skip


def plot_test_sets(summaries: Sequence[TestSetSummary], path: Path) -> Path:
    """Paired differences with their 95% intervals, one column per test set and one for them all pooled,
    and each bar as a line."""
    from datamil.report import pyplot, save_figure

    plt = pyplot()
    summaries = [*summaries, pooled(summaries)] if len(summaries) > 1 else list(summaries)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(summaries)), 3.6))
    x = np.arange(len(summaries))
    series = {
        "DataMIL minus the best baseline": ("over_best", "C0", BAR["best baseline"]),
        "DataMIL minus all_prior": ("over_all_prior", "C1", BAR["all_prior"]),
        "privileged reference minus the best baseline": ("reference_over_best", "C7", None),
    }
    for j, (name, (field, color, bar)) in enumerate(series.items()):
        diff = 100 * np.array([getattr(s, field) for s in summaries])
        if np.isnan(diff[:, 0]).all():  # no set ran a privileged reference (a new task has no same-task data)
            continue
        err = np.abs(diff[:, 1:] - diff[:, :1]).T
        ax.errorbar(x + (j - 1) * 0.2, diff[:, 0], yerr=err, fmt="o", color=color, capsize=3, label=name)
        if bar is not None:
            ax.axhline(bar, color=color, linestyle="--", linewidth=1, label=f"bar: +{bar}")
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_xticks(x, [s.test_set for s in summaries], rotation=20, ha="right", fontsize=8)
    ax.set(ylabel="paired difference (points)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return save_figure(fig, path)


def regenerate(csv_path: Path) -> Path:
    """Write results.md and success.png (runs.csv), results.md (a CSV of OWN_LAYOUT), pilot.md (pilot.csv),
    <name>.md and <name>.png (a `*test_sets.csv` listing) or <name>.md (any other CSV) next to the CSV."""
    if csv_path.name in OWN_LAYOUT:
        return load_script(Path(__file__).with_name(f"{OWN_LAYOUT[csv_path.name]}.py")).write_results_md(
            csv_path
        )
    if is_set_listing(csv_path):
        summaries = read_test_sets(csv_path)
        plot_test_sets(summaries, csv_path.with_suffix(".png"))
        return atomic_write_text(csv_path.with_suffix(".md"), test_sets_markdown(summaries))
    if csv_path.name not in ("runs.csv", "pilot.csv"):
        return atomic_write_text(csv_path.with_suffix(".md"), plain_markdown(csv_path))
    rows = read_rows(csv_path)
    if csv_path.name == "pilot.csv":
        return atomic_write_text(csv_path.with_name("pilot.md"), pilot_markdown(rows))
    plot_success(rows, list(dict.fromkeys(r["method"] for r in rows)), csv_path.with_name("success.png"))
    return atomic_write_text(csv_path.with_name("results.md"), results_markdown(rows))


def results_csvs() -> list[Path]:
    """Every committed results CSV: runs.csv, pilot.csv and the fidelity tables (not composition.csv,
    which is data for the reader rather than a table)."""
    return sorted(p for p in RESULTS_DIR.rglob("*.csv") if p.name != "composition.csv")


def disjoint_rows(parts: Sequence[str | Path], method: str | None = None) -> list[list[dict]]:
    """The rows of several runs.csv (only `method`'s, if given), part by part. A (task, seed) pair may come
    from one part only: two parts with the same pair hold different draws of the data, or the same runs
    twice, so either would count a pair twice."""
    out: list[list[dict]] = []
    owner: dict[tuple[str, int], int] = {}
    for i, part in enumerate(map(Path, parts)):
        if not part.is_file():
            raise DatamilError(f"{part} does not exist; run or commit that part first")
        rows = [r for r in read_rows(part) if method is None or r["method"] == method]
        for r in rows:
            if owner.setdefault((r["task"], r["seed"]), i) != i:
                raise DatamilError(
                    f"{r['task']} seed {r['seed']} is in both {parts[owner[(r['task'], r['seed'])]]} and {part}: "
                    "one repeats (task, seed) pairs of the other; give files with disjoint pairs"
                )
        out.append(rows)
    return out


def paired_across(a: str, b: str) -> str:
    """`CSV:METHOD` minus `CSV:METHOD`, paired over their common (task, seed) pairs: a difference between two
    output directories whose runs share data, demos and start states (one took runs over from the other,
    e.g. a round's refine against the size-matched row of the round before). A side may list several CSVs,
    `A.csv,B.csv:METHOD`, to pool a development round spread over directories of different tasks; two of
    them with the same (task, seed) are refused, since those would be different draws of the data."""
    rows = []
    for side, spec in (("a", a), ("b", b)):
        paths, _, method = spec.rpartition(":")
        if not paths or not method:
            raise DatamilError(f"--paired takes CSV:METHOD or CSV,CSV,...:METHOD, got {spec!r}")
        for path, found in zip(paths.split(","), disjoint_rows(paths.split(","), method), strict=True):
            if not found:
                raise DatamilError(f"{path} has no runs of {method!r}")
            rows += [r | {"method": side} for r in found]
    diff = paired_difference(rows, "a", "b")
    if np.isnan(diff[0]):
        raise DatamilError(f"{a} and {b} share no (task, seed) pair")
    both = {(r["task"], r["seed"]) for r in rows if r["method"] == "a"} & {
        (r["task"], r["seed"]) for r in rows if r["method"] == "b"
    }
    means = [100 * np.mean([r["success_rate"] for r in rows if r["method"] == s and (r["task"], r["seed"]) in both])
             for s in ("a", "b")]  # fmt: skip
    return (
        f"{a} minus {b}: {difference_text(diff)} over {len(both)} (task, seed) pairs "
        f"(means {means[0]:.1f} and {means[1]:.1f})"
    )


def pool_runs(parts: Sequence[Path], out: Path) -> Path:
    """One runs.csv (and composition.csv) from several, then its results.md: a development round spread over
    output directories that cannot share one (other data draws or refine options), read as one table. A
    (task, seed) pair may come from one part only, so no pair is counted twice; the output is derived, and the
    same command rebuilds it from the committed parts."""
    rows = [r for part_rows in disjoint_rows(parts) for r in part_rows]
    compositions = []
    for part in parts:
        if part.with_name("composition.csv").is_file():
            with open(part.with_name("composition.csv"), newline="") as f:
                compositions += list(csv.DictReader(f))
    out.parent.mkdir(parents=True, exist_ok=True)
    if compositions:
        write_csv(compositions, out.with_name("composition.csv"), list(compositions[0]))
    write_csv(rows, out)
    return regenerate(out)


def main(argv: Sequence[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("csvs", nargs="*", type=Path, help="runs.csv / pilot.csv files (default: all under benchmarks/results)")  # fmt: skip
    parser.add_argument("--paired", nargs=2, metavar="CSV[,CSV...]:METHOD", help="print one paired difference across runs.csv files instead")  # fmt: skip
    parser.add_argument("--pool", type=Path, metavar="OUT", help="write the runs of the given runs.csv files into OUT (a runs.csv) and its tables")  # fmt: skip
    args = parser.parse_args(argv)
    if args.pool:
        if len(args.csvs) < 2:
            raise DatamilError("--pool OUT needs two or more runs.csv files to pool")
        written = pool_runs(args.csvs, args.pool)
        print(f"# {written}\n\n{written.read_text()}")
        return [written]
    if args.paired:
        print(paired_across(*args.paired))
        return []
    paths = args.csvs or results_csvs()
    if not paths:
        raise DatamilError(f"no runs.csv or pilot.csv under {RESULTS_DIR}; pass CSV paths")
    written = []
    for path in paths:
        if not path.is_file():
            raise DatamilError(f"{path} does not exist")
        written.append(regenerate(path))
        print(f"# {written[-1]}\n\n{written[-1].read_text()}")
    return written


if __name__ == "__main__":
    from datamil.cli import one_line_errors

    one_line_errors(main)(None)
