"""benchmarks/fidelity_at_scale.py margin: the default against the best other estimator, from lds.csv only."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from datamil.errors import DatamilError
from datamil.scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ["task", "alpha", "estimator", "proxy_seeds", "k", "lds_mean_truth", "reliability"]


def write_lds(path: Path, rows: list[tuple]) -> None:
    with open(path / "lds.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(FIELDS)
        writer.writerows(rows)


def test_margin_takes_the_best_other_family_and_what_the_bar_asks(tmp_path: Path) -> None:
    fidelity = load_script(ROOT / "benchmarks" / "fidelity_at_scale.py")
    write_lds(tmp_path, [
        ("t", 0.1, "metagrad/cover", 1, 6, 0.87, 0.81),
        ("t", 0.1, "metagrad/epoch", 1, 6, 0.95, 0.81),  # a metagrad variant is not an "other" estimator
        ("t", 0.1, "truncated/cover", 1, 6, 0.80, 0.81),
        ("t", 0.1, "influence/trajectory", 1, 6, 0.70, 0.81),
        ("t", 0.1, "truncated/cover", 4, 6, 0.99, 0.81),  # averaged proxy seeds: another budget, left out
    ])  # fmt: skip
    fidelity.main(["margin", "--out", str(tmp_path), "--work", str(tmp_path / "work")])
    (row,) = list(csv.DictReader(open(tmp_path / "margin.csv")))
    assert row["best_other"] == "truncated/cover" and float(row["margin"]) == pytest.approx(0.07)
    assert float(row["attainable"]) == pytest.approx(0.9)
    assert float(row["needed_share_of_attainable"]) == pytest.approx(1.0)  # 0.80 + 0.1 = all there is


def test_margin_without_an_lds_table_says_what_to_run(tmp_path: Path) -> None:
    fidelity = load_script(ROOT / "benchmarks" / "fidelity_at_scale.py")
    with pytest.raises(DatamilError, match="run `fidelity_at_scale.py lds` first"):
        fidelity.main(["margin", "--out", str(tmp_path), "--work", str(tmp_path / "work")])
    write_lds(tmp_path, [("t", 0.1, "truncated/cover", 1, 6, 0.8, 0.81)])
    with pytest.raises(DatamilError, match="no \\(metagrad/cover, other estimator\\) pair"):
        fidelity.main(["margin", "--out", str(tmp_path), "--work", str(tmp_path / "work")])
    assert not (tmp_path / "margin.csv").exists()
