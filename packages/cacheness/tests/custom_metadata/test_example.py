"""examples/experiment_tracking.py (the README's experiment-tracking example) runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[4] / "examples" / "experiment_tracking.py"


def test_experiment_tracking_example_runs() -> None:
    done = subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLE)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "poly runs: 3" in lines
    assert "poly runs after invalidating one: 2" in lines
    assert "connections checked out: 0" in lines
    best = next(line for line in lines if line.startswith("best: "))
    assert float(best.rsplit("accuracy=", 1)[1]) > 0.9
