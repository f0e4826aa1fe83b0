"""benchmarks/surrogate_alignment.py: step positions, the variants, the per-task table and its refusals."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest

from datamil.errors import DatamilError
from datamil.scripts import load_script

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def alignment():
    return load_script(ROOT / "benchmarks" / "surrogate_alignment.py")


def test_step_positions_restart_at_every_demo(alignment, tiny_task_data):
    store = tiny_task_data.target_val
    when, demo = alignment.step_positions(store)
    assert len(when) == store.n_steps and when.min() == 0.0 and when.max() < 1.0
    starts = np.flatnonzero(np.diff(demo, prepend=-1))
    assert np.all(when[starts] == 0.0) and len(starts) == store.n_episodes


def test_variants_read_the_parts_of_the_loss_they_name(alignment):
    dims = np.array([[1.0, 1.0, 0.0, 2.0]] * 4 + [[0.0, 0.0, 0.0, 0.0]] * 2)  # the gripper is the last
    losses = alignment.StepLosses(
        val=np.array([1.0, 1.0, 1.0, 5.0, 0.0, 0.0]),
        val_dims=dims,
        when=np.array([0.0, 0.25, 0.5, 0.75, 0.0, 0.5]),
        demo=np.array([0, 0, 0, 0, 1, 1]),
        train=np.array([0.5, 0.5]),
    )
    value = {name: fn(losses) for name, fn in alignment.VARIANTS.items()}
    assert value["mean (the surrogate)"] == pytest.approx(8 / 6)
    assert value["first half of each demo"] == pytest.approx(2 / 3)
    assert value["second half of each demo"] == pytest.approx(2.0)
    assert value["worst demo"] == pytest.approx(2.0)
    assert alignment.worst_demos(losses.val, losses.demo, 1.0) == pytest.approx(value["mean (the surrogate)"])
    assert value["gripper (last action dimension)"] == pytest.approx(8 / 6)
    assert value["arm motion (other action dimensions)"] == pytest.approx(8 / 18)
    assert value["fit gap (target-val minus target-train)"] == pytest.approx(8 / 6 - 0.5)


def test_a_real_policy_is_scored_and_must_be_the_one_its_row_came_from(alignment, tiny_task_data, tmp_path):
    """The step losses of a saved MLP add up to its surrogate; a row.json whose surrogate_loss the policy
    does not reproduce (another policy's row) is refused on one line."""
    from datamil.checkpoint import save_policy
    from datamil.policies.build import build_policy
    from datamil.policies.mlp import MLPPolicy
    from datamil.training import init_params

    policy = build_policy(functools.partial(MLPPolicy, hidden=(16, 16)), tiny_task_data.target_train)
    path = save_policy(tmp_path / "run" / "policy.pt", policy, init_params(policy, 0), task="t")
    losses = alignment.step_losses(path, tiny_task_data.target_val, tiny_task_data.target_train)
    assert losses.val_dims.shape == (tiny_task_data.target_val.n_steps, tiny_task_data.target_val.action_dim)
    np.testing.assert_allclose(losses.val_dims.mean(axis=1), losses.val, rtol=1e-5)
    assert len(losses.train) == tiny_task_data.target_train.n_steps
    row = {"method": "all_prior", "seed": 0, "success_rate": 0.5, "surrogate_loss": float(losses.val.mean())}
    (path.parent / "row.json").write_text(json.dumps(row))
    [scored] = alignment.policy_rows("t", [path], tiny_task_data)
    assert scored["method"] == "all_prior" and scored["mean (the surrogate)"] == pytest.approx(
        losses.val.mean()
    )
    (path.parent / "row.json").write_text(json.dumps(row | {"surrogate_loss": 2 * losses.val.mean()}))
    with pytest.raises(DatamilError, match="but its row.json recorded"):
        alignment.policy_rows("t", [path], tiny_task_data)


def policy_row(alignment, task: str, method: str, seed: int, success: float, good_signal: bool) -> dict:
    """A scored policy whose every variant is 1 - success (a signal that picks the better one) or, with
    good_signal False, success (one that picks the worse)."""
    value = 1 - success if good_signal else success
    return {"task": task, "method": method, "seed": seed, "success": success} | dict.fromkeys(
        alignment.VARIANTS, value
    )


def test_each_signal_keeps_its_lowest_candidate(alignment):
    """A signal that tracks success keeps the better candidate, one that tracks failure the worse; a pair
    missing a candidate or the baseline is left out; hindsight keeps the better one whatever the signal."""
    rows = [
        policy_row(alignment, "a", "refine", 0, 0.9, True),
        policy_row(alignment, "a", "all_prior", 0, 0.3, True),
        policy_row(alignment, "b", "refine", 0, 0.2, False),
        policy_row(alignment, "b", "all_prior", 0, 0.8, False),
        policy_row(alignment, "c", "refine", 0, 0.5, True),  # no all_prior: left out
    ]
    versus = {("a", 0): 0.5, ("b", 0): 0.5, ("c", 0): 0.5}
    choices = alignment.choice_rows("dev", rows, ["refine", "all_prior"], "retrieval", versus)
    by = {(r["task"], r["signal"]): r for r in choices}
    signal = "mean (the surrogate)"
    assert {t for t, _ in by} == {"a", "b"}
    assert (by[("a", signal)]["kept"], by[("b", signal)]["kept"]) == ("refine", "refine")
    assert by[("b", alignment.HINDSIGHT)]["kept"] == "all_prior"
    assert by[("a", "always all_prior")]["success"] == 0.3
    table = alignment.choice_summary(choices)
    assert "| mean (the surrogate) | 2 | 55.0 | +5.0 [" in table
    assert (
        "| hindsight: the more successful candidate (a ceiling, not a method) | 2 | 85.0 | +35.0 [" in table
    )


def test_choices_are_written_pooled_and_rebuilt_from_their_csv(alignment, tmp_path):
    rows = [
        policy_row(alignment, "a", "refine", 0, 0.9, True),
        policy_row(alignment, "a", "all_prior", 0, 0.3, True),
    ]
    choices = alignment.choice_rows("dev", rows, ["refine", "all_prior"], "retrieval", {("a", 0): 0.5})
    table = alignment.write_choices(choices, tmp_path / "one")
    assert (tmp_path / "one" / "choice.md").read_text() == table
    (tmp_path / "one" / "choice.md").unlink()
    load_script(ROOT / "benchmarks" / "tables.py").regenerate(tmp_path / "one" / "choice.csv")
    assert (tmp_path / "one" / "choice.md").read_text() == table
    with pytest.raises(DatamilError, match="share \\(part, task, seed\\) pairs"):
        alignment.pool_choices([tmp_path / "one" / "choice.csv"] * 2, tmp_path / "pooled")
    with pytest.raises(DatamilError, match="nothing written to"):
        alignment.write_choices([], tmp_path / "empty")
    assert not (tmp_path / "empty").exists() and not (tmp_path / "pooled").exists()


def test_alignment_table_has_a_sign_that_can_fail(alignment):
    """A variant equal to (1 - success) correlates at -1, its negation at +1; the last row averages tasks."""
    rows = [
        {"task": task, "run": str(i), "success": s} | {name: sign * (1 - s) for name in alignment.VARIANTS}
        for task, sign in (("a", 1.0), ("b", -1.0))
        for i, s in enumerate([0.1, 0.5, 0.9, 0.7])
    ]
    table = alignment.alignment_rows(rows)
    name = next(iter(alignment.VARIANTS))
    assert [r[name] for r in table] == [-1.0, 1.0, 0.0]
    assert table[-1]["task"] == "mean over tasks" and table[-1]["policies"] == 8


def test_runs_of_other_data_are_refused_on_one_line(alignment, tmp_path):
    (tmp_path / "settings.json").write_text(json.dumps({"data": {"seed": 3}}))
    with pytest.raises(DatamilError, match="made with data.seed 3, not 0; pass data.seed=3"):
        alignment.policy_paths([tmp_path], "metaworld/reach", 0)
    with pytest.raises(DatamilError, match="has no settings.json"):
        alignment.policy_paths([tmp_path / "missing"], "metaworld/reach", 0)
