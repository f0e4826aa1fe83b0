"""The documentation site builds with `mkdocs build --strict`: a broken link, a missing page or a docstring
mkdocstrings cannot render fails here, as it would for a reader."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_docs_site_builds_strictly(tmp_path: Path) -> None:
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert (site / "reference" / "index.html").is_file()
    # the measured tables are published from benchmarks/results, where tables.py writes them
    results = site / "results" / "full" / "results" / "index.html"
    assert "metagrad_iterative" in results.read_text()
