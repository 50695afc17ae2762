"""ETL conversion benchmark: Labelbox export rows -> Vertex import lines, no image copy.

Writes a synthetic model-run export of N rows (demo-shaped rows, 1-4 boxes each, all splits), then, each
in a fresh process so peak memory is its own, runs:

- `convert`: what ETL does per row: parse, `example_from_row`, `training_row` (Vertex's box limits, the
  import line, the manifest line, data-quality counts), write JSONL in chunks (as ETL writes chunk objects);
- `baseline`: a bare `json.loads` + `json.dumps` pass over the same file.

It prints rows/s and peak RSS for both, at two sizes, and the ratios: peak memory must not grow with
the row count, because ETL streams.

    .venv/bin/python bench/etl_bench.py [--rows 200000] [--small 50000]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared.dataset.builder import TrainingSetBuilder  # noqa: E402
from shared.dataset.image_staging import StagedImage  # noqa: E402
from shared.dataset.manifest import jsonl  # noqa: E402
from shared.demo import export_row  # noqa: E402
from shared.domain.model_types import Task  # noqa: E402

MODEL_RUN_ID = "11111111-2222-4333-8444-555555555555"
MODEL_ID = "cbenchmodel0000000000000a"
CHUNK_ROWS = 5_000


def write_export(path: Path, rows: int, seed: int = 3) -> None:
    rng = random.Random(seed)
    splits = ["training"] * 7 + ["validation", "test", None]
    with open(path, "w") as out:
        for i in range(rows):
            objects = [
                {
                    "class": rng.choice(("circle", "square", "triangle")),
                    "left": rng.randint(0, 900),
                    "top": rng.randint(0, 600),
                    "width": rng.randint(4, 120),
                    "height": rng.randint(4, 120),
                }
                for _ in range(rng.randint(1, 4))
            ]
            row = export_row(
                data_row_id=f"c{i:024d}",
                global_key=f"img-{i}.jpg",
                row_data=f"https://example.invalid/{i}.jpg",
                width=1024,
                height=768,
                model_id=MODEL_ID,
                model_run_id=MODEL_RUN_ID,
                objects=objects,
                split=rng.choice(splits),
                rng=rng,
            )
            out.write(json.dumps(row, separators=(",", ":")) + "\n")


def convert(path: Path, out_path: Path) -> int:
    """The stage's own block conversion, with the image copy replaced by its result (no I/O)."""
    builder = TrainingSetBuilder(Task.OBJECT_DETECTION, MODEL_RUN_ID)
    with open(path) as lines, open(out_path, "w") as out:
        for converted in builder.example_blocks((json.loads(line) for line in lines), CHUNK_ROWS):
            staged = [
                StagedImage(
                    key=f"runs/x/images/{c.example.data_row_id}.jpg",
                    uri=f"gs://bench/runs/x/images/{c.example.data_row_id}.jpg",
                    width=c.example.width or 1,
                    height=c.example.height or 1,
                    mime_type="image/jpeg",
                    copied=True,
                )
                for c in converted
            ]
            done = builder.training_rows(converted, staged)
            out.write(jsonl(done.import_lines).decode())
            out.write(jsonl(r.to_json() for r in done.manifest_rows).decode())
    return builder.quality.rows_seen


def baseline(path: Path, out_path: Path) -> int:
    rows = 0
    with open(path) as lines, open(out_path, "w") as out:
        for line in lines:
            rows += 1
            out.write(json.dumps(json.loads(line), separators=(",", ":")) + "\n")
    return rows


def child(mode: str, path: Path) -> None:
    with tempfile.NamedTemporaryFile(suffix=".jsonl") as out:
        started = time.perf_counter()
        rows = (convert if mode == "convert" else baseline)(path, Path(out.name))
        elapsed = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rows": rows, "seconds": elapsed, "peak_rss_mib": peak_mib}))


def measure(mode: str, path: Path) -> dict:
    result = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(path)], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--small", type=int, default=50_000)
    parser.add_argument("--child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for rows in (args.small, args.rows):
            path = Path(tmp) / f"export-{rows}.ndjson"
            write_export(path, rows)
            for mode in ("baseline", "convert"):
                results[(mode, rows)] = r = measure(mode, path)
                print(
                    f"{mode:<9} {rows:>8} rows  {r['rows'] / r['seconds']:>9.0f} rows/s  "
                    f"peak RSS {r['peak_rss_mib']:6.1f} MiB  ({path.stat().st_size / 2**20:.0f} MiB export)"
                )
        big, small = args.rows, args.small
        conv, base = results[("convert", big)], results[("baseline", big)]
        print(
            f"\nconvert / baseline speed at {big} rows: "
            f"{(conv['rows'] / conv['seconds']) / (base['rows'] / base['seconds']):.2f}x"
        )
        for mode in ("baseline", "convert"):
            print(
                f"{mode} peak RSS at {big} vs {small} rows: "
                f"{results[(mode, big)]['peak_rss_mib'] / results[(mode, small)]['peak_rss_mib']:.2f}x"
            )


if __name__ == "__main__":
    main()
