"""The stages as a user runs them: select → co-train → evaluate, their artifacts and their errors."""

from __future__ import annotations

import dataclasses
import json
from functools import partial

import numpy as np
import pytest
from conftest import TINY_DATA, TINY_TASK
from entry_points import run_app, run_app_ok

from datamil.datamodels.metagrad import estimate_metagrad
from datamil.datamodels.proxy import ProxyConfig, smooth_optim
from datamil.errors import DatamilError
from datamil.policies.mlp import MLPPolicy
from datamil.selection import SelectionConfig, read_selection
from datamil.selection.pipeline import (
    check_seed_files,
    run_selection,
    score_path,
    score_seeds,
    score_settings,
)
from datamil.training.cotraining import build_mixture


def tiny_estimator(steps: int = 40):
    proxy = ProxyConfig(
        optim=smooth_optim().__class__(**{**smooth_optim().__dict__, "total_steps": steps}), batch_size=64
    )
    return partial(estimate_metagrad, proxy=proxy)


def select(data, run_dir, estimate=None, **cfg):
    factory = partial(MLPPolicy, hidden=(32, 32))
    config = {"estimator": "metagrad-tiny", "policy": "bc_mlp-32"}
    return run_selection(
        data, factory, estimate or tiny_estimator(), "metagrad", SelectionConfig(**cfg), [0], run_dir, config
    )


def test_selection_is_deterministic_and_writes_a_readable_run(tiny_task_data, tmp_path):
    first = select(tiny_task_data, tmp_path / "a", budget=0.25)
    second = select(tiny_task_data, tmp_path / "b", budget=0.25)
    assert first.scores == second.scores and first.selected == second.selected
    assert len(first.selected) == round(0.25 * tiny_task_data.prior.n_episodes)
    assert set(first.scores) == set(tiny_task_data.prior.episodes.episode_id)
    assert read_selection(tmp_path / "a" / "selection.json").selected == first.selected
    for name in ("report.md", "score_histogram.png", "composition.png", "score_vs_length.png"):
        assert (tmp_path / "a" / name).stat().st_size > 0
    picked = [first.scores[e] for e in first.selected]
    assert max(picked) <= min(s for e, s in first.scores.items() if e not in first.selected)


def test_selection_resumes_from_saved_scores_and_refuses_other_settings(tiny_task_data, tmp_path):
    select(tiny_task_data, tmp_path, budget=0.25)

    def must_not_run(*args, **kwargs):
        raise AssertionError("the estimator ran again although this seed's scores were saved")

    select(tiny_task_data, tmp_path, estimate=must_not_run, budget=0.5)  # re-selects from saved scores
    factory = partial(MLPPolicy, hidden=(32, 32))
    with pytest.raises(DatamilError, match="different settings"):
        run_selection(
            tiny_task_data,
            factory,
            tiny_estimator(),
            "metagrad",
            SelectionConfig(),
            [0],
            tmp_path,
            {"estimator": "another", "policy": "bc_mlp-32"},
        )


def test_cross_fit_averages_both_roles_of_the_target_demos(tiny_task_data, tmp_path):
    """cross_fit scores each trajectory as the mean of the usual split and the split with target-train
    and target-val swapped; the swap changes the scores, so the average is not a relabelled copy."""
    crossed = select(tiny_task_data, tmp_path / "crossed", budget=0.25, cross_fit=True)
    plain = select(tiny_task_data, tmp_path / "plain", budget=0.25)
    data = tiny_task_data
    swapped = select(
        dataclasses.replace(data, target_train=data.target_val, target_val=data.target_train),
        tmp_path / "swapped",
        budget=0.25,
    )
    assert plain.scores != swapped.scores
    for episode, score in crossed.scores.items():
        assert score == pytest.approx((plain.scores[episode] + swapped.scores[episode]) / 2)
    assert (tmp_path / "crossed" / "cross_fit" / "scores" / "seed0.npz").is_file()


def test_cross_fit_fans_out_both_splits_and_a_gather_needs_both(tiny_task_data, tmp_path):
    """score_seeds (a score_only job) writes both splits' files; a gather from them equals one process,
    and a gather missing the swapped split's file is refused on one line."""
    factory = partial(MLPPolicy, hidden=(32, 32))
    config = {"estimator": "metagrad-tiny", "policy": "bc_mlp-32"}
    paths = score_seeds(
        tiny_task_data, factory, tiny_estimator(), [0], tmp_path / "jobs", config, cross_fit=True
    )
    assert paths == [score_path(tmp_path / "jobs", 0), score_path(tmp_path / "jobs" / "cross_fit", 0)]
    settings = score_settings(config, tiny_task_data)
    check_seed_files(tmp_path / "jobs", [0], settings, cross_fit=True)
    gathered = select(tiny_task_data, tmp_path / "jobs", estimate=refuse, budget=0.25, cross_fit=True)
    single = select(tiny_task_data, tmp_path / "single", budget=0.25, cross_fit=True)
    assert gathered.scores == single.scores
    paths[1].unlink()
    with pytest.raises(DatamilError, match="seeds 0 have no score file"):
        check_seed_files(tmp_path / "jobs", [0], settings, cross_fit=True)


def refuse(*args, **kwargs):
    raise AssertionError("a gather trained a proxy")


@pytest.mark.parametrize("budget", [0.0, 1.5, -0.1])
def test_budget_outside_unit_interval_is_one_clear_line(tiny_task_data, tmp_path, budget):
    with pytest.raises(DatamilError, match="must be a fraction in \\(0, 1\\]"):
        select(tiny_task_data, tmp_path, budget=budget)


def test_mixture_errors(tiny_task_data):
    data = tiny_task_data
    with pytest.raises(DatamilError, match="not in this store"):
        build_mixture(data.target_train, data.prior, ["metaworld/nope/s0/0"], 1.0, 1.0, 32, 0)
    with pytest.raises(DatamilError, match="must be positive"):
        build_mixture(data.target_train, data.prior, [], 0.0, 1.0, 32, 0)
    mixture = build_mixture(
        data.target_train, data.prior, data.prior.episodes.episode_id[:2], 3.0, 1.0, 32, 0
    )
    counts = mixture.sampler.counts(0)
    assert counts.tolist() == [24, 8]
    assert mixture.store.n_episodes == data.target_train.n_episodes + 2


def test_unknown_task_is_one_line_with_valid_names(cli_env, tmp_path):
    result = run_app("datamil.select", "+task=metaworld/pick-place-wal", env=cli_env, run_dir=tmp_path)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert (
        last.startswith("error: unknown task 'metaworld/pick-place-wal'")
        and "metaworld/pick-place-wall" in last
    )
    assert not (tmp_path / "selection.json").exists()


def test_missing_task_says_how_to_give_one(cli_env, tmp_path):
    result = run_app("datamil.select", env=cli_env, run_dir=tmp_path)
    assert result.returncode == 2 and "+task=" in result.stderr


@pytest.mark.slow
def test_select_cotrain_evaluate_as_a_user_runs_them(tiny_task_data, cli_env, tmp_path):
    """The README's workflow on tiny real data: every stage's command, artifacts and summary line."""
    select_dir, train_dir, eval_dir = tmp_path / "select", tmp_path / "cotrain", tmp_path / "evaluate"
    result = run_app_ok(
        "datamil.select",
        f"+task={TINY_TASK}",
        *TINY_DATA,
        "estimator.proxy.optim.total_steps=40",
        "estimator.proxy.batch_size=64",
        "selection.budget=0.25",
        env=cli_env,
        run_dir=select_dir,
    )
    selection = json.loads((select_dir / "selection.json").read_text())
    assert selection["method"] == "metagrad" and len(selection["selected"]) == 3
    assert (select_dir / "config.yaml").is_file() and "selected 3 of 12" in result.stdout

    run_app_ok(
        "datamil.cotrain",
        f"+task={TINY_TASK}",
        *TINY_DATA,
        f"selection={select_dir}/selection.json",
        "training.steps=60",
        "training.batch_size=64",
        "training.optim.warmup_steps=5",
        "logger=none",
        env=cli_env,
        run_dir=train_dir,
    )
    assert (train_dir / "policy.pt").is_file() and (train_dir / "training_curve.png").is_file()

    run_app_ok(
        "datamil.evaluate",
        f"checkpoint={train_dir}/policy.pt",
        "eval.n_episodes=3",
        "eval.max_steps=40",
        "eval.n_envs=3",
        env=cli_env,
        run_dir=eval_dir,
    )
    results = json.loads((eval_dir / "results.json").read_text())
    assert results["task"] == TINY_TASK and results["n_episodes"] == 3
    assert 0.0 <= results["ci_low"] <= results["success_rate"] <= results["ci_high"] <= 1.0
    assert np.isfinite(results["mean_length"]) and (eval_dir / "results.csv").is_file()
