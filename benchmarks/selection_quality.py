"""Does datamil's selection beat the alternatives in MuJoCo? The headline benchmark.

For each target task, seed and method: select (same budget) -> co-train on target-train + the selection
(same policy, steps and mixing ratio for every method) -> evaluate seeded episodes. Every stage is a
library call; data, selections and finished runs are cached in the output directory, so a killed run
resumes where it stopped and one selection per (task, method, seed) serves its co-training run.

    python benchmarks/selection_quality.py --preset quick              # <= 20 min on 2 cores
    python benchmarks/selection_quality.py --preset default            # 5 tasks x 9 methods x 3 seeds
    python benchmarks/selection_quality.py --preset default 'tasks=[metaworld/pick-place-wall]' seeds=[0]
    python benchmarks/selection_quality.py --preset full --pilot       # picks the full preset's test tasks
    python benchmarks/selection_quality.py --preset full 'tasks=${dev_tasks}' output_dir=outputs/full_dev
    python benchmarks/selection_quality.py --preset default output_dir=/shared/sq --gather  # after a fan-out

One (task, method, seed) run per launcher job: benchmarks/selection_quality_job.py (docs/scale_out.md); the
jobs share the output directory and `--gather` writes the tables from their finished runs, training nothing.

Writes into the output directory: runs.csv (one row per run), composition.csv (per run: selected
trajectories and successes per source task), results.md (tables: success, paired differences, the bar,
surrogate vs success, composition; `python benchmarks/tables.py` rebuilds them from runs.csv), success.png
and config.yaml. `--pilot` runs `pilot.method` (target_only unless set) at `pilot.seed` on the preset's
`test_candidates` (at `pilot.budget` and on the data draw `pilot.data_seed` where set) and writes pilot.csv
and pilot.md (which candidates the `pilot` rule makes test tasks, and dev tasks when it asks for them),
resumable the same way.

Methods are specs (benchmarks/tables.py): `metagrad` = DataMIL top-k, `metagrad_threshold` = DataMIL with
the datamodel choosing the size, `random@metagrad_threshold` = random at that size for the same (task,
seed), `metagrad_refine|all_prior` = whichever of those two co-trained policies has the lower surrogate.
Every datamodel method of one (task, seed) and estimator reads the same estimator scores.

Several estimators in one run: the preset's `estimator` (named `estimator_name`) plus any config-group
estimator added under `estimators`, e.g.

    python benchmarks/selection_quality.py --preset quick +estimator@estimators.trak=trak \
        'methods=[metagrad,trak,trak_threshold,random]'

Each datamodel method spec names its estimator (`trak_threshold`); the same co-training follows.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from datamil.checkpoint import load_policy
from datamil.cli import CONFIG_DIR, one_line_errors
from datamil.data.sources import TaskData
from datamil.datamodels import ESTIMATORS
from datamil.datamodels.surrogate import Surrogate
from datamil.errors import DatamilError
from datamil.io import atomic_write_text, file_lock
from datamil.registry import configured
from datamil.scripts import load_script
from datamil.selection import Selection, SelectionConfig, read_selection
from datamil.selection.methods import DATAMODEL_METHODS
from datamil.selection.pipeline import run_selection
from datamil.sim_tasks.evaluation import evaluate_checkpoint
from datamil.training.cotraining import cotrain_on_selection

tables = load_script(Path(__file__).with_name("tables.py"))  # the one home of the table functions
MethodSpec, parse_method = tables.MethodSpec, tables.parse_method
COMPOSITION_FIELDS = ("task", "method", "seed", "source_task", "n_selected", "n_success")
RUN_INDEPENDENT = ("tasks", "methods", "seeds", "output_dir", "threads", "dev_tasks", "test_tasks")
RUN_INDEPENDENT += ("test_candidates", "pilot", "primary", "resume_from")  # keys that never change a run
RUN_INDEPENDENT += ("rerun",)  # which committed runs are taken over, not how any run is made
RUN_INDEPENDENT += ("estimators",)  # more estimators add runs; each score store checks its own settings


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
    estimator: Any  # estimate function of the preset's datamodel estimator
    estimator_name: str
    cotrain: dict
    optim: Any
    eval: dict
    out: Path
    config: dict
    committed: dict = field(default_factory=dict)  # (task, method, seed) -> a finished run's committed row
    estimators: dict[str, tuple[Any, dict]] = field(default_factory=dict)  # name -> (estimate, config), all

    def __post_init__(self) -> None:
        self.estimators = self.estimators or {self.estimator_name: (self.estimator, self.config["estimator"])}


def committed_rows(paths: str | Sequence[str] | None) -> dict[tuple[str, str, int], dict]:
    """Finished runs committed to the repository (a runs.csv and the composition.csv beside it), keyed by
    (task, method, seed): a fresh checkout resumes a long benchmark where the last commit left it, instead
    of re-running what an earlier session finished. Several paths add up (a later one wins a shared key), so a
    development round can take over runs committed by two earlier directories. A relative path is taken from
    the repository root."""
    if not paths:
        return {}
    if not isinstance(paths, str):
        return {key: row for path in paths for key, row in committed_rows(path).items()}
    csv_path = Path(paths) if Path(paths).is_absolute() else Path(__file__).resolve().parents[1] / paths
    if not csv_path.is_file():
        return {}
    parts: dict[tuple, dict] = {}
    composition_csv = csv_path.with_name("composition.csv")
    if composition_csv.is_file():
        with open(composition_csv, newline="") as f:
            for c in csv.DictReader(f):
                key = (c["task"], c["method"], int(c["seed"]))
                parts.setdefault(key, {})[c["source_task"]] = [int(c["n_selected"]), int(c["n_success"])]
    rows = {(r["task"], r["method"], int(r["seed"])): r for r in tables.read_rows(csv_path)}
    return {
        key: {k: v for k, v in r.items() if v != ""} | {"composition": parts.get(key, {})}
        for key, r in rows.items()
    }


def load_config(preset: str, overrides: Sequence[str] = ()) -> DictConfig:
    """datamil/configs/benchmark/<preset>.yaml with Hydra-style overrides (`seeds=[0]`, `data.episodes_per_task=4`)."""
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose(config_name=f"benchmark/{preset}", overrides=list(overrides))


def check_methods(methods: Sequence[str], estimator_names: str | Sequence[str]) -> None:
    """Every spec parses, and every datamodel method uses a configured estimator: fail before any run.

    estimator_names: the preset's estimator first, then those under `estimators`."""
    if isinstance(estimator_names, str):
        estimator_names = [estimator_names]
    for name in methods:
        spec = parse_method(name)
        missing = [c for c in spec.candidates if c not in methods]
        if missing:
            raise DatamilError(
                f"method {name!r} chooses among runs the method list lacks ({', '.join(missing)}); list them "
                "too, so the table shows every candidate the choice co-trained"
            )
        for part in (spec, parse_method(spec.size_from)) if spec.size_from else (spec,):
            if part.datamodel and (part.estimator or estimator_names[0]) not in estimator_names:
                raise DatamilError(
                    f"method {name!r} needs estimator {part.estimator!r}, but the config has "
                    f"{', '.join(estimator_names)}; add it with '+estimators=[{part.estimator}]'"
                )


def configured_estimators(cfg: DictConfig, plain: dict) -> dict[str, tuple[Any, dict]]:
    """name -> (estimate function, its resolved config): the preset's estimator, then each name under
    `estimators`, built from datamil/configs/estimator/<name>.yaml with the preset estimator's proxy run, so that
    every estimator scores the same proxy and their selections compare."""
    found = {str(cfg.estimator_name): (instantiate(cfg.estimator), plain["estimator"])}
    for name in cfg.get("estimators") or []:
        if name in found:
            continue
        node = ESTIMATORS.config(str(name))
        if "proxy" in cfg.estimator:
            node = OmegaConf.merge(node, {"proxy": cfg.estimator.proxy})
        found[str(name)] = (instantiate(node), OmegaConf.to_container(node, resolve=True))
    return found


def make_plan(cfg: DictConfig) -> Plan:
    estimator_name = str(cfg.estimator_name)
    plain = OmegaConf.to_container(cfg, resolve=True)
    if not plain["tasks"]:
        raise DatamilError(
            "no target tasks; for the full preset run --pilot and fill in test_tasks, or pass 'tasks=${dev_tasks}'"
        )
    estimators = configured_estimators(cfg, plain)
    check_methods(plain["methods"], list(estimators))
    return Plan(
        tasks=list(plain["tasks"]),
        methods=list(plain["methods"]),
        seeds=[int(s) for s in plain["seeds"]],
        budget=float(cfg.budget),
        options=plain.get("options") or {},
        data=instantiate(cfg.data),
        policy=instantiate(cfg.policy),
        proxy=instantiate(cfg.proxy),
        estimator=estimators[estimator_name][0],
        estimator_name=estimator_name,
        estimators=estimators,
        cotrain={k: plain["cotrain"][k] for k in ("steps", "batch_size", "target_ratio", "prior_ratio")},
        optim=instantiate(cfg.cotrain.optim),
        eval=dict(plain["eval"]),
        out=Path(cfg.output_dir),
        config=plain,
        committed={
            key: row
            for key, row in committed_rows(cfg.get("resume_from")).items()
            if key[1] not in (cfg.get("rerun") or ())  # a method whose preset changed runs afresh
        },
    )


def slug(task: str) -> str:
    return task.replace("/", "__")


@contextmanager
def task_lock(plan: Plan, task: str) -> Iterator[None]:
    """Held while a task's data is loaded: jobs of one task that start together (a fan-out of its methods
    and seeds) generate its data once; the others wait, then read the cache the first one wrote."""
    with file_lock(plan.out / "locks" / f"data-{slug(task)}.lock"):
        yield


def load_task(plan: Plan, task: str) -> TaskData:
    with task_lock(plan, task):
        return plan.data.load(task)


# ------------------------------------------------------------------------------------ selection
def selection_config(plan: Plan, spec: MethodSpec, budget: float) -> SelectionConfig:
    """`options[<method>]` are SelectionConfig fields for datamodel methods (e.g. {iterative: {rounds: 2}}),
    over the method's preset (datamil/configs/method/<method>.yaml), and method options for baselines
    (e.g. {strap: {segment_length: 30}})."""
    options = dict(plan.options.get(spec.method, {}))
    if not spec.datamodel:
        return SelectionConfig(method=spec.method, budget=budget, options=options)
    preset = dict(configured("method", spec.method))
    try:
        return SelectionConfig(**{**preset, "budget": budget, "aggregate": "sum", **options})
    except TypeError as err:
        raise DatamilError(f"options.{spec.method} has a key SelectionConfig lacks: {err}") from None


def run_budget(plan: Plan, data: TaskData, spec: MethodSpec, seed: int) -> float:
    """The budget as a fraction of the prior; a size-matched spec takes the count its reference selected
    for this (task, seed), selecting the reference first if this output directory has not yet."""
    if spec.share is not None:
        return spec.share
    if spec.size_from is None:
        return plan.budget
    reference, _ = select(plan, data, spec.size_from, seed)
    return len(reference.selected) / data.prior.n_episodes


def share_scores(plan: Plan, task: str, estimator: str, run_dir: Path) -> None:
    """Point run_dir/scores at the one score store of (task, estimator) in this output directory.

    run_selection caches each seed's scores in its run directory (with a fingerprint of the settings), so
    linking every datamodel method's scores/ to one place makes top-k, threshold, size-matched top-k and
    iterative's first round of a (task, seed) read one estimate instead of re-estimating it each."""
    link = run_dir / "scores"
    if link.exists() or link.is_symlink():  # an older run's own scores, or linked already
        return
    shared = plan.out / "scores" / slug(task) / estimator
    shared.mkdir(parents=True, exist_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(shared, run_dir), target_is_directory=True)


def select(plan: Plan, data: TaskData, method: str, seed: int) -> tuple[Selection, float]:
    """The selection of (task, method, seed): read if this output directory already made it."""
    run_dir = plan.out / "selections" / slug(data.task) / method / f"seed{seed}"
    if (run_dir / "selection.json").is_file():
        return read_selection(run_dir / "selection.json"), 0.0
    spec = parse_method(method)
    budget = run_budget(plan, data, spec, seed)
    start = time.perf_counter()
    name = spec.estimator or plan.estimator_name  # baselines record the preset's estimator, as before
    estimate, estimator_config = plan.estimators[name]
    if spec.datamodel:
        share_scores(plan, data.task, name, run_dir)
    config = {"estimator": estimator_config, "policy": plan.config["proxy"], "method": method}
    cfg = selection_config(plan, spec, budget)
    seeds = proxy_seeds(seed, int(plan.config["proxy_seeds"]))
    selection = run_selection(data, plan.proxy, estimate, name, cfg, seeds, run_dir, config)
    return selection, time.perf_counter() - start


def proxy_seeds(seed: int, n: int) -> list[int]:
    """The proxy seeds a DataMIL selection of benchmark seed `seed` averages: the seed itself, then
    seed + 1000, seed + 2000, ... (never another benchmark seed's), `n` in all."""
    if n < 1:
        raise DatamilError(f"proxy_seeds={n}: a selection needs at least one proxy seed")
    return [seed + 1000 * j for j in range(n)]


def composition(selection: Selection, data: TaskData) -> dict[str, Any]:
    """What a selection holds: counts for runs.csv, and per source task [selected, successful]."""
    prior = data.prior
    idx = prior.index_of(selection.selected) if selection.selected else np.zeros(0, np.int64)
    by_task: dict[str, list[int]] = {}
    for i in idx:
        counts = by_task.setdefault(prior.episodes.task[i], [0, 0])
        counts[0] += 1
        counts[1] += int(bool(prior.episodes.success[i]))
    return {
        "n_prior": prior.n_episodes,
        "n_selected": len(idx),
        "selected_success": sum(c[1] for c in by_task.values()),
        "selected_target_task": by_task.get(data.task, [0])[0],
        "composition": by_task,
    }


def budget_columns(spec: MethodSpec, selection: Selection, n_prior: int) -> dict[str, Any]:
    """The budget a run was held to, as a fraction and a count (blank for methods that size themselves)."""
    if spec.self_sized or selection.budget is None:
        return {"budget": "", "budget_count": "", "size_from": spec.size_from or ""}
    count = max(1, round(selection.budget * n_prior))
    return {"budget": selection.budget, "budget_count": count, "size_from": spec.size_from or ""}


# ------------------------------------------------------------------------------------ co-train and evaluate
def surrogate_loss(policy: Any, params: Any, data: TaskData) -> float:
    """The rollout-free surrogate of a trained policy: mean per-sample loss on target-val."""
    with torch.no_grad():
        return float(Surrogate.from_store(policy, data.target_val)(params))


def train_and_evaluate(plan: Plan, data: TaskData, method: str, seed: int, selection: Selection) -> dict:
    """Co-train on target-train + the selection, score the surrogate, roll out; the row of runs.csv."""
    run_dir = plan.out / "runs" / slug(data.task) / method / f"seed{seed}"
    c = plan.cotrain
    start = time.perf_counter()
    path, _, _ = cotrain_on_selection(
        plan.policy,
        data,
        selection.selected,
        c["target_ratio"],
        c["prior_ratio"],
        c["batch_size"],
        c["steps"],
        plan.optim,
        seed,
        run_dir,
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
    row |= {"n_target_train": data.target_train.n_episodes, "n_target_val": data.target_val.n_episodes}
    row |= {"cotrain_steps": c["steps"], "train_s": train_s, "eval_s": time.perf_counter() - start}
    return row | composition(selection, data)


def row_path(out: Path, task: str, method: str, seed: int) -> Path:
    """Where the run of (task, method, seed) writes its row when it finishes: the mark of a finished run."""
    return Path(out) / "runs" / slug(task) / method / f"seed{seed}" / "row.json"


def finished_row(plan: Plan, task: str, method: str, seed: int) -> dict | None:
    """The row of (task, method, seed) if this output directory finished it (or an earlier session
    committed it, which is then written as finished); None if it still has to run."""
    done = row_path(plan.out, task, method, seed)
    if done.is_file():
        return json.loads(done.read_text())
    if (task, method, seed) in plan.committed:  # finished in an earlier session and committed
        atomic_write_text(done, json.dumps(plan.committed[(task, method, seed)]))
        return plan.committed[(task, method, seed)]
    return None


def run_one(plan: Plan, data: TaskData, method: str, seed: int) -> dict:
    """One (task, method, seed) run, or its row read back if this output directory finished it."""
    row = finished_row(plan, data.task, method, seed)
    if row is not None:
        return row
    done = row_path(plan.out, data.task, method, seed)
    candidates = parse_method(method).candidates
    if candidates:  # a choice trains nothing itself: it compares its candidates' co-trainings
        row = tables.choose_by_surrogate(method, [run_one(plan, data, c, seed) for c in candidates])
        atomic_write_text(done, json.dumps(row))
        return row
    cpu = time.process_time()  # CPU seconds: a cost estimate that survives a busy machine
    selection, select_s = select(plan, data, method, seed)
    row = train_and_evaluate(plan, data, method, seed, selection)
    row |= budget_columns(parse_method(method), selection, data.prior.n_episodes)
    row |= {"select_s": select_s, "cpu_s": time.process_time() - cpu}
    atomic_write_text(done, json.dumps(row))
    return row


def run_all(
    plan: Plan,
    write: Callable[[list[dict]], Any],
    desc: str,
    done: Callable[[list[dict]], bool] | None = None,
) -> list[dict]:
    """Every (task, seed, method) run in order; `write` gets all rows so far after each one. `done(rows)`,
    asked after each task, ends the loop early (the pilot stops once its rule has picked every test task)."""
    rows: list[dict] = []
    total = len(plan.tasks) * len(plan.seeds) * len(plan.methods)
    with tqdm(total=total, desc=desc, unit="run") as bar:
        for task in plan.tasks:
            data = load_task(plan, task)
            for seed in plan.seeds:
                for method in plan.methods:
                    bar.set_postfix_str(f"{task.split('/')[-1]} {method} s{seed}")
                    rows.append(run_one(plan, data, method, seed))
                    write(rows)
                    bar.update()
            if done is not None and done(rows):
                break
    return rows


# ------------------------------------------------------------------------------------ outputs
def composition_rows(rows: list[dict]) -> list[dict]:
    """composition.csv: one row per (task, method, seed, source task) of a run's selection."""
    out = []
    for r in rows:
        for source, (n, successes) in sorted(r.get("composition", {}).items()):
            out.append({"task": r["task"], "method": r["method"], "seed": r["seed"], "source_task": source}
                       | {"n_selected": n, "n_success": successes})  # fmt: skip
    return out


def write_outputs(rows: list[dict], out: Path, methods: list[str]) -> Path:
    """runs.csv, composition.csv, success.png and results.md (every table) into `out`."""
    tables.write_csv(rows, out / "runs.csv")
    tables.write_csv(composition_rows(rows), out / "composition.csv", COMPOSITION_FIELDS)
    tables.plot_success(rows, methods, out / "success.png")
    return atomic_write_text(out / "results.md", tables.results_markdown(rows))


# Settings added after output directories existed, at the value that makes the runs made before them:
# left out of settings.json at that value, so those directories still resume.
NEUTRAL_SETTINGS: dict[tuple[str, ...], Any] = {
    ("proxy_seeds",): 1,  # one proxy seed per selection
    ("data", "normalization"): "none",  # the identity
    ("estimator", "proxy", "target_share"): 0.0,  # target-train at its natural share of the proxy's pool
}


def resumable_settings(config: dict) -> dict:
    """The settings an output directory's runs depend on: config less run-independent keys and less
    the NEUTRAL_SETTINGS at their neutral value."""
    settings = copy.deepcopy({k: v for k, v in config.items() if k not in RUN_INDEPENDENT})
    for (*parents, key), neutral in NEUTRAL_SETTINGS.items():
        node = settings
        for name in parents:
            node = node.get(name) if isinstance(node, dict) else None
        if isinstance(node, dict) and key in node and node[key] == neutral:
            del node[key]
    return settings


def method_presets() -> dict[str, dict]:
    """The presets of the datamodel methods (datamil/configs/method/<name>.yaml). A run's selection follows
    them, yet they live outside the benchmark config, so a preset that changed (refine's pool_share did,
    twice) would otherwise resume an output directory with runs made under the old one."""
    return {name: dict(configured("method", name)) for name in sorted(DATAMODEL_METHODS)}


def check_resumable(plan: Plan) -> None:
    """An output directory holds runs of one setting: resuming it with other settings fails loudly
    instead of mixing old runs into a new table. The method presets are part of the setting; a directory
    whose settings.json predates them is compared without them (and records them from then on)."""
    settings = resumable_settings(plan.config)
    as_text = lambda value: json.dumps(value, sort_keys=True, default=str)  # noqa: E731
    text = as_text(settings | {"method_presets": method_presets()})
    path = plan.out / "settings.json"
    if path.is_file():
        saved = path.read_text()
        expected = text if "method_presets" in json.loads(saved) else as_text(settings)
        if saved != expected:
            raise DatamilError(
                f"{plan.out} holds runs made with other settings (see {path}); use another output_dir"
            )
    atomic_write_text(path, text)


def prepare(cfg: DictConfig, save_config: bool = True) -> Plan:
    """The plan of cfg, with its output directory checked and (unless a job of a fan-out, whose config
    lists only its own run) its config saved."""
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    plan = make_plan(cfg)
    plan.out.mkdir(parents=True, exist_ok=True)
    check_resumable(plan)
    if save_config:
        atomic_write_text(plan.out / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(plan.config)))
    return plan


def finished_rows(out: Path) -> list[dict]:
    """Every finished run of an output directory, whichever process ran it: processes (or launcher jobs)
    that run disjoint tasks or seeds into one directory all add to one table, and a killed run is redone
    alone by running the same command again."""
    return [json.loads(path.read_text()) for path in sorted((out / "runs").glob("*/*/seed*/row.json"))]


def write_tables(plan: Plan) -> list[dict]:
    """runs.csv, results.md and success.png over every finished run of the output directory."""
    rows = finished_rows(plan.out)
    methods = list(dict.fromkeys([*plan.methods, *(r["method"] for r in rows)]))
    write_outputs(rows, plan.out, methods)
    return rows


def run_benchmark(cfg: DictConfig) -> list[dict]:
    """Run (or resume) every run of the config; write runs.csv, results.md and success.png over every
    finished run of the output directory."""
    plan = prepare(cfg)
    run_all(
        plan, lambda _: tables.write_csv(finished_rows(plan.out), plan.out / "runs.csv"), "benchmark runs"
    )
    return write_tables(plan)


def run_job(cfg: DictConfig, task: str, method: str, seed: int) -> dict:
    """One (task, method, seed) run of the benchmark of cfg, as one launcher job of a fan-out: its row,
    read back without loading any data if the output directory finished it already (a re-run sweep
    redoes only the runs that did not finish). Writes no table: `--gather` does, once every job is done."""
    cfg = cfg.copy()
    for key, value in (("tasks", [task]), ("methods", [method]), ("seeds", [int(seed)])):
        OmegaConf.update(cfg, key, value)
    plan = prepare(cfg, save_config=False)
    row = finished_row(plan, task, method, int(seed))
    return row if row is not None else run_one(plan, load_task(plan, task), method, int(seed))


def gather_benchmark(cfg: DictConfig) -> list[dict]:
    """The tables of a fanned-out benchmark from its finished runs, training nothing. Refuses on one line,
    before writing any table, when a run of the config has not finished (or the directory holds runs of
    other settings: `prepare`)."""
    plan = prepare(cfg)
    runs = [(t, m, s) for t in plan.tasks for s in plan.seeds for m in plan.methods]
    missing = [f"{t}:{m}:{s}" for t, m, s in runs if finished_row(plan, t, m, s) is None]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DatamilError(
            f"{len(missing)} of {len(runs)} runs have not finished in {plan.out} ({shown}); run their jobs "
            "again (finished runs are skipped), or leave out --gather to run them in this process"
        )
    return write_tables(plan)


def run_pilot(cfg: DictConfig) -> list[dict]:
    """The pilot method (`pilot.method`, default target_only: no DataMIL run needed) on every test
    candidate; writes pilot.csv and pilot.md, whose `test_tasks` (and `dev_tasks`) lines are what the
    preset's rule picks. The pilot has its own seed (`pilot.seed`, not one of
    the benchmark's seeds) and its own directory: the benchmark's target_only runs of the chosen tasks are
    fresh, not the runs that were picked for being low."""
    candidates = list(cfg.get("test_candidates") or [])
    rule = cfg.get("pilot")
    if not candidates or rule is None:
        raise DatamilError(
            "--pilot needs test_candidates and pilot in the preset (see datamil/configs/benchmark/full.yaml)"
        )
    dev = sorted(set(candidates) & set(cfg.get("dev_tasks") or []))
    if dev:
        raise DatamilError(f"test candidates must not be dev tasks; remove {dev} from test_candidates")
    cfg = cfg.copy()
    OmegaConf.update(cfg, "tasks", candidates)
    OmegaConf.update(cfg, "methods", [str(rule.get("method", "target_only"))])
    n_test, n_dev = int(rule.n_test_tasks), int(rule.get("n_dev_tasks", 0))
    pilot_seed = int(rule.get("seed", 100))
    if pilot_seed in set(cfg.seeds):
        raise DatamilError(
            f"pilot.seed={pilot_seed} is one of the benchmark's seeds; give the pilot its own seed"
        )
    OmegaConf.update(cfg, "seeds", [pilot_seed])
    # pilot.budget: the pilot method's own budget (a retrieval baseline at DataMIL's size); pilot.data_seed: its
    # own draw of the data, so a task picked for a low pilot score is measured afresh by every method
    for key, target in (("budget", "budget"), ("data_seed", "data.seed")):
        if rule.get(key) is not None:
            OmegaConf.update(cfg, target, rule[key])
    OmegaConf.update(cfg, "output_dir", str(Path(cfg.output_dir) / "pilot"))
    if cfg.get("resume_from"):  # the committed pilot.csv beside the committed runs.csv
        if not isinstance(cfg.resume_from, str):
            raise DatamilError("--pilot resumes from one committed runs.csv; give resume_from a single path")
        OmegaConf.update(cfg, "resume_from", str(Path(cfg.resume_from).with_name("pilot.csv")))
    plan = prepare(cfg)

    def pick(rows: list[dict]) -> list[dict]:
        return tables.pilot_pick(rows, float(rule.max_success), n_test, n_dev)

    def write(rows: list[dict]) -> Path:
        return tables.write_csv(pick(rows), plan.out / "pilot.csv", tables.PILOT_FIELDS)

    def picked_all(rows: list[dict]) -> bool:  # later candidates cannot change the first n qualifiers
        picked = pick(rows)
        n_chosen = sum(r["test_task"] == "yes" for r in picked)
        return n_chosen >= n_test and sum(r.get("dev_task") == "yes" for r in picked) >= n_dev

    rows = pick(run_all(plan, write, "pilot runs", picked_all))
    n_chosen = sum(r["test_task"] == "yes" for r in rows)
    if n_chosen < n_test:  # a hint for whoever reads the log; pilot.md is the same however it is written
        print(f"only {n_chosen} of {n_test} test tasks qualify; add candidates to test_candidates for more")
    atomic_write_text(plan.out / "pilot.md", tables.pilot_markdown(rows))
    return rows


def main(argv: Sequence[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--preset",
        default="quick",
        help="datamil/configs/benchmark/<preset>.yaml: quick | default | full | tiny",
    )
    parser.add_argument(
        "--pilot", action="store_true", help="target_only, seed 0, on test_candidates: picks test_tasks"
    )
    parser.add_argument(
        "--gather",
        action="store_true",
        help="write the tables from the finished runs of a fan-out (selection_quality_job.py); train nothing",
    )
    parser.add_argument(
        "overrides", nargs="*", help="Hydra-style overrides, e.g. seeds=[0] eval.n_episodes=20"
    )
    args = parser.parse_args(argv)
    if args.pilot and args.gather:
        raise DatamilError("--pilot runs in one process; it has no --gather")
    cfg = load_config(args.preset, args.overrides)
    rows = (run_pilot if args.pilot else gather_benchmark if args.gather else run_benchmark)(cfg)
    print((Path(cfg.output_dir) / ("pilot/pilot.md" if args.pilot else "results.md")).read_text())
    return rows


if __name__ == "__main__":
    one_line_errors(main)(None)
