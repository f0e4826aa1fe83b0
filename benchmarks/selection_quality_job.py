"""One (task, method, seed) run of the selection-quality benchmark per Hydra launcher job: the benchmark fanned
out over local processes (hydra/launcher=local), SLURM jobs (slurm) or Ray tasks (ray).

    python benchmarks/selection_quality_job.py -m benchmark=default \\
        run.task=metaworld/pick-place-wall,metaworld/push run.method=metagrad,random 'run.seed=range(0,3)' \\
        output_dir=/shared/sq hydra/launcher=slurm                     # one job per (task, method, seed)
    python benchmarks/selection_quality.py --preset default output_dir=/shared/sq --gather      # the tables

Each job runs its run as `python benchmarks/selection_quality.py` does and writes
`<output_dir>/runs/<task>/<method>/seed<N>/row.json` when it finishes. A job whose run finished already reads
it back, so running the same sweep again redoes only what a killed or failed job left unfinished. The gather
writes runs.csv, results.md and success.png from the finished runs, training nothing, and refuses on one line
while a run of the preset has not finished; the tables equal those of one process running the whole preset.
Jobs and the gather must use the same preset and overrides (other than `run`, and the gather's tasks, methods
and seeds lists, which name every run): an output directory holding runs of other settings is refused.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import hydra
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf, open_dict

from datamil.cli import CONFIG_DIR, one_line_errors
from datamil.scripts import load_script


def load_benchmark() -> ModuleType:
    """benchmarks/selection_quality.py, loaded in the process that runs the job: launchers ship this file's
    `main` to their workers by value, not its imports."""
    return load_script(Path(__file__).resolve().with_name("selection_quality.py"))


def preset_of(cfg: DictConfig) -> DictConfig:
    """The benchmark config of a job, as `selection_quality.py --preset` composes it: without the job's
    `run`, and with output_dir absolute (a launcher's worker may start in another directory)."""
    preset = cfg.copy()
    with open_dict(preset):
        del preset["run"]
    OmegaConf.update(preset, "output_dir", to_absolute_path(str(cfg.output_dir)))
    return preset


@hydra.main(config_path=CONFIG_DIR, config_name="selection_quality_job", version_base="1.3")
@one_line_errors
def main(cfg: DictConfig) -> dict:
    bench = load_benchmark()
    preset = preset_of(cfg)
    task, method, seed = str(cfg.run.task), str(cfg.run.method), int(cfg.run.seed)
    row = bench.run_job(preset, task, method, seed)
    path = bench.row_path(preset.output_dir, task, method, seed)
    print(f"{task} {method} seed {seed}: success {row['success_rate']:.2f}; {path}")
    return row


if __name__ == "__main__":
    main()
