"""benchmarks/surrogate_alignment.py: step positions, the variants, the per-task table and its refusals."""

from __future__ import annotations

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
    loss = np.array([1.0, 1.0, 1.0, 5.0, 0.0, 0.0])
    when = np.array([0.0, 0.25, 0.5, 0.75, 0.0, 0.5])
    demo = np.array([0, 0, 0, 0, 1, 1])
    value = {name: fn(loss, when, demo) for name, fn in alignment.VARIANTS.items()}
    assert value["mean (the surrogate)"] == pytest.approx(8 / 6)
    assert value["first half of each demo"] == pytest.approx(2 / 3)
    assert value["second half of each demo"] == pytest.approx(2.0)
    assert value["worst demo"] == pytest.approx(2.0)
    assert alignment.worst_demos(loss, demo, 1.0) == pytest.approx(value["mean (the surrogate)"])


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
