"""The how-tos in docs/howto run: each one's files are written to a temporary directory and its `# run`
block executes against this checkout, registering the example plug-in through the real config path."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HOWTOS = sorted((ROOT / "docs" / "howto").glob("*.md"))
BLOCK = re.compile(r"```(python|yaml)\n(.*?)```", re.S)


def blocks(path: Path) -> tuple[dict[str, str], list[str]]:
    """(file path -> text) of the blocks whose first line is `# file: <path>`, and the `# run` blocks."""
    files, runs = {}, []
    for _, text in BLOCK.findall(path.read_text()):
        first, _, rest = text.partition("\n")
        if first.startswith("# file: "):
            files[first[len("# file: ") :].strip()] = text
        elif first.strip() == "# run":
            runs.append(rest)
    return files, runs


def test_every_howto_has_an_example_that_runs():
    assert {p.name for p in HOWTOS} >= {"add_estimator.md", "add_policy.md", "map_dataset.md"}
    for path in HOWTOS:
        files, runs = blocks(path)
        assert files and runs, f"{path.name} needs `# file:` blocks and a `# run` block"


@pytest.mark.parametrize("howto", HOWTOS, ids=lambda p: p.stem)
def test_howto_example_runs(howto, tmp_path):
    files, runs = blocks(howto)
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    plugins = [str(tmp_path / d) for d in ("my_plugins",) if (tmp_path / d).is_dir()]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*plugins, str(ROOT)]), "OMP_NUM_THREADS": "1"}
    for code in runs:
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, f"{howto.name}:\n{done.stdout}\n{done.stderr}"
