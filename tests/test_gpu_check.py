"""benchmarks/gpu_check.py without a GPU: one line, exit code 2, nothing run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_without_a_gpu_it_says_so_on_one_line_and_exits_2(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}  # hides any GPU from torch
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--work", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.strip().count("\n") == 0 and "no CUDA GPU is present" in done.stderr
    assert list(tmp_path.iterdir()) == []  # nothing was generated or run
