"""The scale bench at a small N, as a test of its correctness (never of speed): every row is staged
once by the worker processes, the fan-in is handed off once, and the report has a line per worker count."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_scale_bench_runs_sharded_etl_with_several_workers_and_checks_itself() -> None:
    command = [
        sys.executable,
        str(REPO / "bench" / "scale_bench.py"),
        *("--rows", "120", "--shard-rows", "30", "--latency-ms", "1", "--workers", "1", "3"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("120 rows in 4 shards of 30")
    rows = [line.split() for line in lines[2:4]]
    assert [r[0] for r in rows] == ["1", "3"]
    assert rows[0][2] == "1.00x"
