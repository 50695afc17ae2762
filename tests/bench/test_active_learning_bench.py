"""The active-learning bench at a tiny size, as a test of its correctness (never of speed, nor of which
strategy wins): every strategy is trained and scored, each picks K distinct rows of the pool and never
a test or labeled row, the printed table parses, and a second run picks and scores the same."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STRATEGIES = ["random", "least_confidence", "margin", "entropy"]
INITIAL, PICK, POOL, TEST = 8, 4, 16, 8


def _run(out: Path) -> tuple[str, dict]:
    command = [
        sys.executable,
        *("-m", "bench.active_learning_bench"),
        *("--seeds", "3", "--initial", str(INITIAL), "--pick", str(PICK), "--pool", str(POOL)),
        *("--test", str(TEST), "--steps", "12", "--input-size", "64", "--width", "8", "--threads", "1"),
        *("--json", str(out)),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, json.loads(out.read_text())


@pytest.mark.slow
def test_each_strategy_picks_k_distinct_pool_rows_and_is_retrained_and_scored(tmp_path: Path) -> None:
    stdout, report = _run(tmp_path / "first.json")
    seed = report["seeds"]["3"]
    test, labeled, pool = set(seed["test"]), set(seed["labeled"]), set(seed["pool"])
    assert (len(test), len(labeled), len(pool)) == (TEST, INITIAL, POOL)
    assert not (test & labeled) and not (test & pool) and not (labeled & pool)
    assert list(seed["strategies"]) == STRATEGIES
    for name, outcome in seed["strategies"].items():
        picked = outcome["picked"]
        assert len(picked) == PICK and len(set(picked)) == PICK, name
        assert set(picked) <= pool, name  # never a test row, nor one already labeled
        assert 0.0 <= outcome["map50"] <= 1.0 and 0.0 <= outcome["map"] <= outcome["map50"] + 1e-9, name

    row = re.compile(r"^([a-z_]+) \((?:\d+ labeled|\+\d+)\)\s+(\d\.\d{4}) \[(\d\.\d{4}), (\d\.\d{4})\]")
    rows = {m[1]: [float(m[i]) for i in (2, 3, 4)] for line in stdout.splitlines() if (m := row.match(line))}
    assert list(rows) == ["initial", *STRATEGIES]
    for name in STRATEGIES:  # one seed: the mean is that seed's figure, and so are min and max
        assert rows[name] == [round(seed["strategies"][name]["map50"], 4)] * 3
    assert re.search(r"^random \(\+4\) .*\(baseline\)", stdout, re.MULTILINE)
    assert re.search(r"^time: \d+ s in all; 5 trainings", stdout, re.MULTILINE)

    _stdout, again = _run(tmp_path / "second.json")
    assert again["seeds"] == report["seeds"]  # step mode, fixed seeds, sorted orders: the same picks and figures
