"""Selection: aggregation to trajectories and segments, strategies, the selection file."""

import json

import numpy as np
import pytest

from datamil.data.schema import Episode, EpisodeMeta
from datamil.data.store import TrajectoryStore
from datamil.errors import DatamilError
from datamil.selection import (
    Selection,
    iterative_prune,
    per_segment,
    per_trajectory,
    read_selection,
    threshold,
    top_k,
    write_selection,
)


@pytest.fixture
def store():
    episodes = [
        Episode({"state": np.zeros((n, 2))}, np.zeros((n, 1)), EpisodeMeta(f"ep{i}", "d", "t", True))
        for i, n in enumerate([3, 5, 2])
    ]
    return TrajectoryStore.from_episodes(episodes)


def test_per_trajectory_sum_and_mean(store):
    scores = np.arange(10.0)  # episodes: [0,1,2] [3..7] [8,9]
    np.testing.assert_allclose(per_trajectory(scores, store, "sum"), [3, 25, 17])
    np.testing.assert_allclose(per_trajectory(scores, store, "mean"), [1, 5, 8.5])
    with pytest.raises(DatamilError, match="aggregation"):
        per_trajectory(scores, store, "max")
    with pytest.raises(DatamilError, match="steps"):
        per_trajectory(scores[:5], store)


def test_fixed_length_segments(store):
    segs = per_segment(np.arange(10.0), store, length=2)
    np.testing.assert_array_equal(segs.episode, [0, 0, 1, 1, 1, 2])
    np.testing.assert_array_equal(segs.start, [0, 2, 0, 2, 4, 0])
    np.testing.assert_array_equal(segs.length, [2, 1, 2, 2, 1, 2])
    np.testing.assert_allclose(segs.score, [1, 2, 7, 11, 7, 17])
    np.testing.assert_array_equal(segs.step_indices(store, np.array([1, 4])), [2, 7])
    np.testing.assert_allclose(
        per_segment(np.arange(10.0), store, 2, "mean").score, [0.5, 2, 3.5, 5.5, 7, 8.5]
    )


def test_top_k_and_threshold():
    scores = np.array([0.3, -1.0, 0.0, -0.2, 2.0])
    np.testing.assert_array_equal(top_k(scores, 0.4), [1, 3])
    np.testing.assert_array_equal(top_k(scores, 1.0), np.arange(5))
    np.testing.assert_array_equal(top_k(scores, 0.01), [1])  # at least one
    np.testing.assert_array_equal(threshold(scores), [1, 3])
    np.testing.assert_array_equal(threshold(scores, 0.5), [0, 1, 2, 3])
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(DatamilError, match="budget"):
            top_k(scores, bad)


def test_iterative_prune_drops_bad_and_readmits_good():
    truth = np.arange(20.0)  # lower = better
    rounds = []

    def score_fn(active):
        rounds.append(active.copy())
        scores = truth.copy()
        if len(rounds) == 1:
            scores[[0, 1]] = 100.0  # look bad on the first estimate only
        else:
            scores[np.setdiff1d(np.arange(20), active)[-1:]] = np.nan  # cannot score one dropped episode
        return scores

    selected, last = iterative_prune(score_fn, 20, rounds=3, drop_percentile=85, readmit_percentile=30)
    assert len(rounds[0]) == 20 and 0 not in rounds[1] and 1 not in rounds[1]  # dropped after round 1
    assert 0 in rounds[2] and 1 in rounds[2]  # re-admitted once re-estimated as good
    assert 19 not in selected and 18 not in selected and 0 in selected
    assert np.all(np.isfinite(last))
    with pytest.raises(DatamilError):
        iterative_prune(score_fn, 20, rounds=3, drop_percentile=10, readmit_percentile=50)
    with pytest.raises(DatamilError, match="shape"):
        iterative_prune(lambda a: np.zeros(3), 20, 3, 80.0, 20.0)


def test_iterative_prune_from_a_pool_never_admits_what_it_never_scored():
    truth = np.arange(20.0)
    pool = np.array([3, 5, 8, 13, 17])

    def score_fn(active):
        out = np.full(20, np.nan)
        out[active] = truth[active]
        return out

    selected, last = iterative_prune(score_fn, 20, 2, 80.0, 20.0, start=pool)
    assert set(selected) < set(pool) and 17 not in selected  # the pool's worst is dropped
    assert np.all(np.isnan(np.delete(last, pool)))
    with pytest.raises(DatamilError, match="starting pool is empty"):
        iterative_prune(score_fn, 20, 2, 80.0, 20.0, start=np.array([], np.int64))


def test_selection_file_round_trip(tmp_path):
    ids = ["a", "b", "c"]
    sel = Selection.from_arrays(
        ids, np.array([0.5, -1.0, 0.1]), np.array([2, 1]), "metagrad", 0.5, 7, {"k": 1}
    )
    path = write_selection(tmp_path / "sel.json", sel)
    raw = json.loads(path.read_text())
    assert (
        raw["format"] == "datamil-selection" and raw["selected"] == ["b", "c"] and "torch" in raw["versions"]
    )
    again = read_selection(path)
    assert again == sel
    assert not list(tmp_path.glob(".*tmp*"))  # atomic: no temp files left


def test_selection_file_errors(tmp_path):
    sel = Selection(["a"], {"a": float("nan")}, "m", 0.5, 0)
    with pytest.raises(DatamilError, match="NaN"):
        write_selection(tmp_path / "x.json", sel)
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(DatamilError, match="not a datamil selection"):
        read_selection(tmp_path / "bad.json")
    with pytest.raises(DatamilError, match="cannot read"):
        read_selection(tmp_path / "missing.json")


def test_report_counts_unknown_success_apart(tmp_path):
    from datamil.data.sources import TaskData
    from datamil.report import success_count
    from datamil.selection.pipeline import _write_report

    assert success_count([True, False]) == "1 of 2"
    assert success_count([True, None, False, None, None]) == "1 of 5 (3 unknown)"
    assert success_count([None]) == "unknown (no success flags)"
    assert success_count([]) == "0 of 0"
    flags = [True, None, False, None, None]
    episodes = [
        Episode({"state": np.zeros((3, 2))}, np.zeros((3, 1)), EpisodeMeta(f"ep{i}", "d", "t", s))
        for i, s in enumerate(flags)
    ]
    prior = TrajectoryStore.from_episodes(episodes)
    data = TaskData("t", prior, prior.subset([0]), prior.subset([2]))
    report = _write_report(tmp_path, data, np.arange(5.0), np.array([0, 1, 3]), "metagrad", [0])
    assert "- **selected successes**: 1 of 3 (2 unknown)" in report.read_text()
    report = _write_report(tmp_path, data, np.arange(5.0), np.array([1]), "metagrad", [0])
    assert "- **selected successes**: unknown (no success flags)" in report.read_text()
