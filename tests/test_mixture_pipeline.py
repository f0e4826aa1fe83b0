"""A three-dataset mixture prior through the whole workflow as a user runs it: select → co-train →
evaluate in MuJoCo. The prior mixes two write_rlds datasets (MetaWorld push and button-press episodes)
with a raw nested RLDS layout the registry does not know (MetaWorld episodes stored OXE-style, with
`observation/state` and a dict action), read by a per-entry `mapping` into the same 4-d action; the target
is write_rlds MetaWorld reach demos, so the co-trained checkpoint is evaluated on metaworld/reach."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("tensorflow_datasets")

from entry_points import run_app_ok, user_env  # noqa: E402

from datamil.checkpoint import load_policy  # noqa: E402
from datamil.data.rlds import write_rlds  # noqa: E402
from datamil.data.rlds_raw import state_action_example, state_action_features, write_raw  # noqa: E402
from datamil.data.schema import Episode  # noqa: E402
from datamil.sim_tasks.generate import generate_episodes, generate_target_demos  # noqa: E402

TASK = "metaworld/reach"
N_PER_DATASET = 3  # prior episodes of each of the three datasets
WORLD_VECTOR_GRIPPER = {"world_vector": 3, "gripper": 1}  # the nested dataset's OXE-style dict action


def nested_example(episode: Episode) -> dict:
    """An episode in the nested layout: observation/state, action {world_vector (3), gripper (1)}."""
    action = {"world_vector": episode.actions[:, :3], "gripper": episode.actions[:, 3:]}
    return state_action_example(episode.observations["state"], action)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mix3") / "rlds"
    make = dict(max_steps=40, workers=1, progress=False)
    push = generate_episodes(["metaworld/push"], N_PER_DATASET, seed=0, **make)
    button = generate_episodes(["metaworld/button-press"], N_PER_DATASET, seed=1, **make)
    reach = generate_episodes([TASK], N_PER_DATASET, seed=2, **make)
    target = generate_target_demos(TASK, 4, seed=3, max_steps=150)
    nested = write_raw(
        root,
        "my_nested_arm",
        state_action_features(39, WORLD_VECTOR_GRIPPER),
        [nested_example(e) for e in reach],
    )
    return {
        "push": write_rlds(push, root, "mw_push"),
        "button": write_rlds(button, root, "mw_button"),
        "nested": nested,
        "target": write_rlds(target, root, "reach_target"),
    }


def cli(module: str, *overrides: str, run_dir: Path, cache: Path) -> subprocess.CompletedProcess:
    done = run_app_ok(module, *overrides, env=user_env(cache), run_dir=run_dir)
    assert "Traceback" not in done.stdout + done.stderr
    return done


@pytest.mark.slow
@pytest.mark.sim
def test_three_dataset_mixture_selects_cotrains_and_evaluates(datasets, tmp_path):
    mapping = (
        "{state_keys: [observation/state], action_keys: [action/world_vector, action/gripper], "
        "action_transform: native}"
    )
    prior = (
        f"data.prior=[{{path: {datasets['push']}, label: push, robot: sawyer}},"
        f"{{path: {datasets['button']}, label: button, robot: sawyer, weight: 2}},"
        f"{{path: {datasets['nested']}, label: nested, robot: sim_arm, mapping: {mapping}}}]"
    )
    data = [
        f"+task={TASK}", "data=rlds", prior, f"data.target={datasets['target']}", "data.n_target_val=1",
        "data.normalization=mean_std", "policy=bc_mlp", "policy.hidden=[32,32]",
    ]  # fmt: skip
    cache, select_dir = tmp_path / "cache", tmp_path / "select"
    train_dir, eval_dir = tmp_path / "cotrain", tmp_path / "evaluate"

    done = cli(
        "datamil.select", *data, "estimator.proxy.optim.total_steps=20", "estimator.proxy.batch_size=32",
        "selection.budget=0.5", run_dir=select_dir, cache=cache,
    )  # fmt: skip
    assert "state sizes differ" not in done.stdout + done.stderr  # 39-d everywhere: states kept
    selection = json.loads((select_dir / "selection.json").read_text())
    labels = ("push", "button", "nested")
    everything = {f"{label}/{i}" for label in labels for i in range(N_PER_DATASET)}
    assert set(selection["scores"]) == everything  # one selection over the three datasets, ids <label>/<i>
    assert len(selection["selected"]) == round(0.5 * len(everything))
    assert set(selection["selected"]) <= everything
    rows = list(csv.DictReader((select_dir / "sources.csv").open()))
    by_dataset = {r["name"]: r for r in rows if r["by"] == "dataset"}
    assert set(by_dataset) == set(labels)
    assert all(by_dataset[label]["prior_episodes"] == str(N_PER_DATASET) for label in labels)
    assert sum(int(r["selected_episodes"]) for r in by_dataset.values()) == len(selection["selected"])
    assert {r["name"] for r in rows if r["by"] == "robot"} == {"sawyer", "sim_arm"}
    report = (select_dir / "report.md").read_text()
    table = report.split("## Composition by dataset", 1)[1]
    assert all(f"| {label} " in table for label in labels), table[:800]

    cli(
        "datamil.cotrain", *data, f"selection={select_dir}/selection.json", "training.steps=30",
        "training.batch_size=32", "training.optim.warmup_steps=5", "logger=none",
        run_dir=train_dir, cache=cache,
    )  # fmt: skip
    loaded = load_policy(train_dir / "policy.pt")
    assert loaded.task == TASK and loaded.step == 30
    # the mixture's normalization (mean_std, not data=rlds's q01_q99 default) is the one the checkpoint acts
    # with, on the target's 4-d actions and 39-d states, and the one both runs resolved
    acting = loaded.policy.data_normalization
    assert acting.mode == "mean_std" and acting.action.mean.shape == (4,) and acting.state.mean.shape == (39,)
    for run in (select_dir, train_dir):
        assert yaml.safe_load((run / "config.yaml").read_text())["data"]["normalization"] == "mean_std"
    state = np.zeros((2, 39), np.float32)
    actions = loaded.policy.act(None, {"state": state})
    assert actions.shape[-1] == 4 and np.all(np.isfinite(actions))

    done = cli(
        "datamil.evaluate", f"checkpoint={train_dir}/policy.pt", "eval.n_episodes=2", "eval.max_steps=30",
        "eval.n_envs=2", run_dir=eval_dir, cache=cache,
    )  # fmt: skip
    results = json.loads((eval_dir / "results.json").read_text())
    assert results["task"] == TASK and results["n_episodes"] == 2
    assert 0.0 <= results["ci_low"] <= results["success_rate"] <= results["ci_high"] <= 1.0
    assert np.isfinite(results["mean_length"]) and (eval_dir / "results.csv").is_file()
    assert "success" in done.stdout
