"""benchmarks/tables.py on small hand-made CSVs whose answers are known: intervals, paired differences,
the bar, size-matched labels, the pilot's rule, and the one command that rebuilds every table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from datamil.errors import DatamilError
from datamil.scripts import load_script

ROOT = Path(__file__).resolve().parent.parent
TASKS = ("metaworld/a", "metaworld/b")
# success per (method, task): one value per seed 0, 1, 2
SUCCESS = {
    "metagrad": {"metaworld/a": [0.9, 0.8, 1.0], "metaworld/b": [0.7, 0.6, 0.8]},
    "metagrad_threshold": {"metaworld/a": [0.7, 0.7, 0.7], "metaworld/b": [0.5, 0.5, 0.5]},
    "all_prior": {"metaworld/a": [0.7, 0.7, 0.7], "metaworld/b": [0.5, 0.5, 0.5]},
    "random": {"metaworld/a": [0.5, 0.6, 0.4], "metaworld/b": [0.3, 0.2, 0.4]},
    "random@metagrad_threshold": {"metaworld/a": [0.6, 0.6, 0.6], "metaworld/b": [0.4, 0.4, 0.4]},
}


@pytest.fixture(scope="module")
def tables():
    return load_script(ROOT / "benchmarks" / "tables.py")


def make_rows() -> list[dict]:
    rows = []
    for task in TASKS:
        for seed in range(3):
            for method, by_task in SUCCESS.items():
                size_matched = "@" in method
                rows.append(
                    {"task": task, "method": method, "seed": seed, "success_rate": by_task[task][seed]}
                    | {"ci_low": 0.0, "ci_high": 1.0, "n_episodes": 50, "n_prior": 100, "n_selected": 10}
                    | {"selected_success": 5, "selected_target_task": 1, "surrogate_loss": 0.1 + seed / 100}
                    | {"select_s": 1.0, "train_s": 2.0, "eval_s": 3.0, "cpu_s": 4.0, "n_target_train": 10}
                    | {"n_target_val": 10, "budget": "" if size_matched else 0.1, "budget_count": 10}
                    | {"size_from": "metagrad_threshold" if size_matched else "", "cotrain_steps": 5000}
                    | {"chosen": ""}
                )
    return rows


def test_csv_round_trips_with_types(tables, tmp_path):
    rows = make_rows()
    again = tables.read_rows(tables.write_csv(rows, tmp_path / "runs.csv"))
    assert again == rows


def test_paired_difference_is_a_t_interval_over_task_seed_pairs(tables):
    diffs = np.array([0.2, 0.1, 0.3, 0.2, 0.1, 0.3])  # metagrad minus all_prior, per (task, seed)
    half = stats.t.ppf(0.975, 5) * diffs.std(ddof=1) / np.sqrt(6)
    mean, low, high = tables.paired_difference(make_rows(), "metagrad", "all_prior")
    assert mean == pytest.approx(0.2) and (low, high) == pytest.approx((0.2 - half, 0.2 + half))
    assert tables.paired_difference(make_rows(), "metagrad_threshold", "all_prior") == (0.0, 0.0, 0.0)


def test_intervals_over_seeds_and_over_episodes(tables):
    from datamil.sim_tasks.rollout import wilson_interval

    mean, low, high = tables.interval([0.75], 4)  # one seed: Wilson over its episodes
    assert mean == 0.75 and (low, high) == pytest.approx(wilson_interval(3, 4), abs=1e-4)
    assert tables.interval([0.5, 0.5], 50) == (0.5, 0.5, 0.5)  # no spread: no NaN
    mean, low, high = tables.interval([0.9, 1.0, 1.0], 50)
    assert low < mean < high == 1.0  # clipped to a probability


def test_the_bar_and_the_size_matched_comparison(tables):
    rows, methods = make_rows(), list(SUCCESS)
    bar = tables.bar_check(rows, methods).splitlines()
    top = next(line for line in bar if line.startswith("| metagrad |"))
    thresh = next(line for line in bar if line.startswith("| metagrad_threshold |"))
    assert "| all_prior |" in top and "+20.0" in top and top.endswith("| met |")
    assert thresh.endswith("| MISSED |") and "+0.0" in thresh
    all_prior = [r["success_rate"] for r in rows if r["method"] == "all_prior"]
    headroom = next(line for line in bar if line.startswith("Headroom"))
    assert f"{100 * (1 - np.mean(all_prior)):+.1f} points" in headroom
    assert ("out of reach" in headroom) == (100 * (1 - np.mean(all_prior)) < 15)
    paired = tables.paired_table(rows, methods).splitlines()
    assert paired[0] == "| minus | metagrad | metagrad_threshold |"
    matched = next(line for line in paired if "size-matched" in line)
    # metagrad is not compared with a run size-matched to metagrad_threshold; metagrad_threshold is (+10)
    assert matched.startswith("| random, size-matched to metagrad_threshold |  | +10.0 [+10.0, +10.0] |")


def test_the_reached_envelope_takes_the_best_method_per_task(tables):
    rows, methods = make_rows(), list(SUCCESS)
    line = tables.reached_line(rows, methods)  # metagrad is best on both tasks: (90 + 70) / 2
    assert "a 90 (metagrad), b 70 (metagrad)" in line and "averages 80.0, +20.0 points" in line
    assert "best baseline (all_prior, 60.0)" in line and "is within the +10 bar" in line
    flat = [
        r | {"success_rate": 0.62} if r["method"] in ("metagrad", "metagrad_threshold") else r for r in rows
    ]
    assert "(a 70 (all_prior), b 62 (metagrad)) averages 66.0, +6.0 points" in tables.reached_line(
        flat, methods
    )
    assert "short of the +10 bar" in tables.reached_line(flat, methods)


def test_a_privileged_reference_is_never_the_best_baseline(tables):
    rows = make_rows()
    rows += [
        r | {"method": "same_task_success", "success_rate": 1.0} for r in rows if r["method"] == "random"
    ]
    methods = [*SUCCESS, "same_task_success"]
    top = next(
        line for line in tables.bar_check(rows, methods).splitlines() if line.startswith("| metagrad |")
    )
    assert "| all_prior |" in top and top.endswith("| met |")  # same_task_success (100) is above all_prior
    assert "same_task_success (privileged reference)" in tables.results_markdown(rows)
    reached = tables.reached_line(rows, methods)  # 100 against all_prior's 70 / 50: +30 and +50 per seed
    assert (
        "reference same_task_success is +40.0 [+28.5, +51.5] points over that baseline (paired)." in reached
    )


def test_results_markdown_labels_every_method(tables):
    text = tables.results_markdown(make_rows())
    assert "| metagrad (DataMIL top-k) | 90 [" in text
    assert (
        "| random, size-matched to metagrad_threshold | 60 [60, 60] | 40 [40, 40] | **50 [50, 50]** |" in text
    )
    assert "budget 10% of a 100-trajectory prior, 10 target-train / 10 target-val demos" in text


def test_pilot_rule_takes_the_first_five_below_80_percent(tables):
    rates = [0.9, 0.5, 0.79, 0.8, 0.1, 0.2, 0.3, 0.0]
    rows = [
        {"task": f"metaworld/c{i}", "success_rate": r, "ci_low": 0.0, "ci_high": 1.0}
        for i, r in enumerate(rates)
    ]
    picked = tables.pilot_pick(rows, 0.8, 5)
    assert [r["qualifies"] for r in picked] == ["no", "yes", "yes", "no", "yes", "yes", "yes", "yes"]
    assert [r["task"][-2:] for r in picked if r["test_task"] == "yes"] == ["c1", "c2", "c4", "c5", "c6"]
    text = tables.pilot_markdown(picked)
    assert "test_tasks: [metaworld/c1, metaworld/c2, metaworld/c4, metaworld/c5, metaworld/c6]" in text
    # the room the pilot method leaves: its mean over the candidates, 100% minus that
    assert "6 of 8 candidates qualify. target_only averages 44.9% over the candidates" in text
    assert "a policy at 100% on every one would be +55.1 points above it." in text


def test_pilot_rule_alternates_test_and_dev_tasks_until_both_are_filled(tables):
    rates = [0.5, 0.9, 0.1, 0.2, 0.69, 0.7, 0.3, 0.4, 0.0, 0.6, 0.1]
    rows = [
        {"task": f"metaworld/c{i}", "method": "all_prior", "success_rate": r, "ci_low": 0.0, "ci_high": 1.0}
        for i, r in enumerate(rates)
    ]
    picked = tables.pilot_pick(rows, 0.7, 5, n_dev=3)
    tests = [r["task"][-3:].strip("/") for r in picked if r["test_task"] == "yes"]
    devs = [r["task"][-3:].strip("/") for r in picked if r["dev_task"] == "yes"]
    assert tests == ["c0", "c3", "c6", "c8", "c9"] and devs == ["c2", "c4", "c7"]
    assert picked[-1]["qualifies"] == "yes" and picked[-1]["test_task"] == picked[-1]["dev_task"] == "no"
    text = tables.pilot_markdown(picked)
    assert "| candidate | all_prior success (%) [95% Wilson] | qualifies | test task | dev task |" in text
    assert text.endswith("dev_tasks: [metaworld/c2, metaworld/c4, metaworld/c7]\n")


def test_one_command_rebuilds_every_table(tables, tmp_path, capsys):
    runs = tables.write_csv(make_rows(), tmp_path / "full" / "runs.csv")
    pilot = [
        {"task": "metaworld/c0", "method": "target_only", "seed": 0, "success_rate": 0.5, "n_episodes": 50}
    ]
    pilot_csv = tables.write_csv(
        tables.pilot_pick(pilot, 0.8, 5), tmp_path / "full" / "pilot.csv", tables.PILOT_FIELDS
    )
    written = tables.main([str(runs), str(pilot_csv)])
    assert written == [tmp_path / "full" / "results.md", tmp_path / "full" / "pilot.md"]
    printed = capsys.readouterr().out
    assert "## The bar" in printed and "test_tasks: [metaworld/c0]" in printed
    assert written[0].read_text() == tables.results_markdown(make_rows())


def test_other_results_csvs_become_plain_tables(tables, tmp_path):
    fidelity = tmp_path / "fidelity" / "lds.csv"
    fidelity.parent.mkdir()
    fidelity.write_text("estimator,alpha,lds\nmetagrad/trajectory,0.5,0.61\ntruncated/trajectory,0.5,0.4\n")
    (written,) = tables.main([str(fidelity)])
    assert written == fidelity.with_suffix(".md")
    lines = written.read_text().splitlines()
    assert lines[0] == "| estimator | alpha | lds |" and lines[2] == "| metagrad/trajectory | 0.5 | 0.61 |"
    assert len(lines) == 4


def test_means_of_a_partial_run_cover_only_tasks_every_method_finished(tables):
    rows = [
        {"task": t, "method": m, "seed": 0, "success_rate": v, "n_episodes": 50}
        for t, m, v in [
            ("a", "random", 1.0),
            ("a", "all_prior", 0.0),
            ("b", "random", 0.0),
        ]  # all_prior: not b yet
    ]
    table = tables.success_table(rows, ["random", "all_prior"])
    assert "mean of the 1 finished tasks" in table
    assert "| random | 100 [93, 100] | 0 [0, 7] | **100 [93, 100]** |" in table  # b left out of the mean
    assert [r["task"] for r in tables.finished_everywhere(rows, ["random", "all_prior"])] == ["a", "a"]


def test_a_benchmark_with_its_own_layout_rebuilds_its_committed_table(tables, tmp_path):
    """cross_embodiment.csv is laid out by its own script, and `tables.py` rebuilds the committed results.md
    from the committed CSV exactly (so the README's cross-embodiment numbers come from one command)."""
    committed = ROOT / "benchmarks" / "results" / "cross_embodiment"
    copy = tmp_path / "cross_embodiment.csv"
    copy.write_bytes((committed / "cross_embodiment.csv").read_bytes())
    (written,) = tables.main([str(copy)])
    assert written == tmp_path / "results.md"
    assert written.read_text() == (committed / "results.md").read_text()


def test_a_paired_difference_across_two_runs_files_pairs_by_task_and_seed(tables, tmp_path):
    """`--paired A.csv:METHOD B.csv:METHOD`: one round's method against another round's, on the pairs they
    share (the directories took runs over from each other, so the data and start states are the same)."""
    rows = make_rows()
    tables.write_csv([r for r in rows if r["method"] == "metagrad"], tmp_path / "a.csv")
    tables.write_csv([r for r in rows if r["method"] == "all_prior"], tmp_path / "b.csv")
    line = tables.paired_across(f"{tmp_path / 'a.csv'}:metagrad", f"{tmp_path / 'b.csv'}:all_prior")
    diff = tables.difference_text(tables.paired_difference(rows, "metagrad", "all_prior"))
    assert line.endswith(f"{diff} over 6 (task, seed) pairs (means 80.0 and 60.0)")
    # a side may pool files of different tasks; the same (task, seed) in two of them is refused
    tables.write_csv(
        [r for r in rows if r["method"] == "metagrad" and r["task"] == TASKS[0]], tmp_path / "a0.csv"
    )
    tables.write_csv(
        [r for r in rows if r["method"] == "metagrad" and r["task"] == TASKS[1]], tmp_path / "a1.csv"
    )
    pooled = tables.paired_across(
        f"{tmp_path / 'a0.csv'},{tmp_path / 'a1.csv'}:metagrad", f"{tmp_path / 'b.csv'}:all_prior"
    )
    assert pooled.endswith(f"{diff} over 6 (task, seed) pairs (means 80.0 and 60.0)")
    with pytest.raises(DatamilError, match="repeats \\(task, seed\\) pairs"):
        tables.paired_across(
            f"{tmp_path / 'a.csv'},{tmp_path / 'a1.csv'}:metagrad", f"{tmp_path / 'b.csv'}:all_prior"
        )
    for bad, message in [
        (f"{tmp_path / 'a.csv'}:all_prior", "no runs of 'all_prior'"),
        (f"{tmp_path / 'c.csv'}:metagrad", "does not exist"),
        ("metagrad", "CSV:METHOD"),
    ]:
        with pytest.raises(DatamilError, match=message):
            tables.paired_across(bad, f"{tmp_path / 'b.csv'}:all_prior")


def test_test_sets_summary_uses_each_sets_bar_check(tables, tmp_path):
    """test_sets.csv: one line per test set, with the best baseline and paired differences of its bar check,
    written as test_sets.md and test_sets.png by the same one command; a missing runs.csv fails on one line."""
    tables.write_csv(make_rows(), tmp_path / "set_a" / "runs.csv")
    listing = tmp_path / "test_sets.csv"
    listing.write_text("test_set,runs,datamil\nset a,set_a/runs.csv,metagrad\n")
    (written,) = tables.main([str(listing)])
    assert written == tmp_path / "test_sets.md" and (tmp_path / "test_sets.png").stat().st_size > 0
    (summary,) = tables.read_test_sets(listing)
    assert summary.best == "all_prior" and summary.pairs == 6  # all_prior (60) beats random (40)
    assert summary.over_best == tables.paired_difference(make_rows(), "metagrad", "all_prior")
    assert np.isnan(summary.reference_over_best[0])  # no privileged reference in these runs
    assert "| set a | 6 | metagrad: 80 | all_prior: 60 | +20.0 [" in written.read_text()
    # the best method per task (metagrad: 90 on a, 70 on b) against all_prior's 60
    assert summary.envelope_over_best == pytest.approx(0.2) and written.read_text().count("| +20.0 |") == 1
    assert "+10 over the best baseline: met on 1 of 1 test sets: set a." in written.read_text()
    tables.write_csv([r for r in make_rows() if r["seed"] == 0], tmp_path / "set_c" / "runs.csv")
    listing.write_text(
        "test_set,runs,datamil\nset a,set_a/runs.csv,metagrad\nset c,set_c/runs.csv,metagrad\n"
    )
    a, c = tables.read_test_sets(listing)
    pooled = tables.pooled([a, c]).over_best
    assert pooled == tables.mean_interval(a.over_best_pairs + c.over_best_pairs)
    # more pairs, tighter
    assert c.pairs < a.pairs and pooled[2] - pooled[1] < a.over_best[2] - a.over_best[1]
    pooled_text = tables.main([str(listing)])[0].read_text()
    assert f"Pooled over the 2 test sets ({a.pairs + c.pairs} (task, seed) pairs" in pooled_text
    assert (
        "is +20.0 over the best baseline (pair-weighted), and reaches the +10 bar on 2 of 2 sets"
        in pooled_text
    )
    other_setting = tmp_path / "new_task_test_sets.csv"  # a second listing, summarized alone
    other_setting.write_text("test_set,runs,datamil\nset c,set_c/runs.csv,metagrad\n")
    (written,) = tables.main([str(other_setting)])
    assert written == tmp_path / "new_task_test_sets.md" and f"| set c | {c.pairs} |" in written.read_text()
    assert (tmp_path / "new_task_test_sets.png").stat().st_size > 0
    listing.write_text("test_set,runs,datamil\nset b,set_b/runs.csv,metagrad\n")
    with pytest.raises(DatamilError, match="set_b/runs.csv does not exist; commit that run or drop its row"):
        tables.read_test_sets(listing)
    listing.write_text("test_set,runs,datamil\nset a,set_a/runs.csv,metagrad_iterative\n")
    with pytest.raises(DatamilError, match="has no runs of 'metagrad_iterative'"):
        tables.read_test_sets(listing)


def test_a_choice_keeps_the_candidate_with_the_lowest_surrogate(tables):
    rows = make_rows()
    for r in rows:  # metagrad's co-trained loss is the lower on task a, all_prior's on task b
        if r["method"] in ("metagrad", "all_prior"):
            r["surrogate_loss"] = 0.1 if (r["method"] == "metagrad") == (r["task"] == "metaworld/a") else 0.2
    name = "metagrad|all_prior"
    for task in TASKS:
        for seed in range(3):
            candidates = [
                r for r in rows if (r["task"], r["seed"]) == (task, seed) and r["method"] in name.split("|")
            ]
            rows.append(tables.choose_by_surrogate(name, candidates))
    chosen = [r for r in rows if r["method"] == name]
    assert [r["chosen"] for r in chosen] == ["metagrad"] * 3 + ["all_prior"] * 3
    assert [r["success_rate"] for r in chosen] == [0.9, 0.8, 1.0, 0.5, 0.5, 0.5]
    assert all(r["cpu_s"] == 8.0 and r["budget"] == "" for r in chosen)  # both co-trainings are paid for
    spec = tables.parse_method(name)
    assert spec.candidates == ("metagrad", "all_prior") and spec.datamodel and spec.self_sized
    assert not tables.parse_method("random|all_prior").datamodel  # a choice among baselines is a baseline
    assert tables.label(name) == f"{name} (DataMIL, size chosen by the co-trained surrogate)"
    methods = [*SUCCESS, name]
    assert name in tables.datamil_variants(methods)
    escaped = name.replace("|", r"\|")  # a `|` inside a table cell is escaped, or it would split the cell
    # a choice keeps one candidate's selection: runs size-matched to any candidate are its baselines too
    assert tables.compared_with(
        [*methods, "metagrad_threshold|all_prior"], "metagrad_threshold|all_prior"
    ) == [*SUCCESS, name]
    assert "random@metagrad_threshold" not in tables.compared_with(methods, name)
    assert any(
        line.startswith(f"| {escaped} | all_prior |") for line in tables.bar_check(rows, methods).splitlines()
    )
    text = tables.results_markdown(rows)
    assert f"| {escaped} (DataMIL, size chosen by the co-trained surrogate) | 90 [" in text
    assert f"- {name} kept: all_prior 3 (mean success 50), metagrad 3 (mean success 90)" in text
    assert "all 30 trained policies" in text  # the choice repeats policies already counted
    assert "CPU seconds per run 4.0" in text  # per run: a choice's summed cost is not one more run
    for bad in ("metagrad|metagrad", "metagrad|"):
        with pytest.raises(DatamilError, match="two or more distinct"):
            tables.parse_method(bad)


def test_pooled_runs_are_one_table_of_disjoint_pairs(tables, tmp_path):
    rows = make_rows()
    a = tables.write_csv([r for r in rows if r["task"] == "metaworld/a"], tmp_path / "a" / "runs.csv")
    b = tables.write_csv([r for r in rows if r["task"] == "metaworld/b"], tmp_path / "b" / "runs.csv")
    written = tables.main(["--pool", str(tmp_path / "both" / "runs.csv"), str(a), str(b)])
    assert written == [tmp_path / "both" / "results.md"]
    assert tables.read_rows(tmp_path / "both" / "runs.csv") == rows  # task a's part, then task b's
    assert tables.results_markdown(rows) == written[0].read_text()
    with pytest.raises(DatamilError, match="is in both"):
        tables.main(["--pool", str(tmp_path / "twice" / "runs.csv"), str(a), str(a)])
    assert not (tmp_path / "twice").exists()  # nothing half-written
    with pytest.raises(DatamilError, match="two or more"):
        tables.main(["--pool", str(tmp_path / "one" / "runs.csv"), str(a)])
