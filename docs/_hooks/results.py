"""mkdocs hook: the measured tables, published from where the benchmarks write them.

Every table under benchmarks/results/ is regenerated from committed CSVs by `python benchmarks/tables.py`.
Copying them into docs/ would leave two copies to drift apart, so the site reads them in place: each
markdown file becomes a page under "Results/", with a line naming the file it came from.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def on_files(files: Files, config) -> Files:
    for md in sorted(RESULTS.rglob("*.md")):
        rel = md.relative_to(RESULTS)
        source = f"*Generated from `benchmarks/results/{rel.as_posix()}`; rebuild with `python benchmarks/tables.py`.*"
        files.append(
            File.generated(config, f"results/{rel.as_posix()}", content=f"{source}\n\n{md.read_text()}")
        )
    return files
