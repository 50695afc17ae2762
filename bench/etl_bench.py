"""ETL conversion benchmark: the split and one shard's conversion, no image copy.

Writes a synthetic model-run export of N rows (demo-shaped rows, 1-4 boxes each, all splits), then, each
in a fresh process so peak memory is its own, runs:

- `split`: what ETL's split call does with the export (one invocation for the whole run): convert each
  row (`example_from_row`), cut the rows into shard files of 10,000 and find repeated data row ids
  (`ExportSplitter`, into a bucket folder);
- `shard`: what one shard call does once its images are staged: read its part, and per row the
  Vertex import line, the manifest line and the data-quality counts (`TrainingSetBuilder`), written as
  the shard's chunks; the image copy is replaced by its result;
- `baseline`: a bare `json.loads` + `json.dumps` pass over the same export.

It prints rows/s and peak RSS for each, at two sizes, and the ratios against the baseline. The split
is the one step whose time grows with the run: its rate says how many rows fit in one invocation. A
shard's time and memory do not grow with the run at all.

    .venv/bin/python bench/etl_bench.py [--rows 200000] [--small 50000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import synthetic_export  # noqa: E402
from bench.synthetic_export import MODEL_RUN_ID  # noqa: E402
from shared.dataset import manifest  # noqa: E402
from shared.dataset.builder import TrainingSetBuilder  # noqa: E402
from shared.dataset.export_shards import EtlPlan, ExportSplitter, read_part  # noqa: E402
from shared.dataset.image_staging import StagedImage  # noqa: E402
from shared.dataset.manifest import jsonl  # noqa: E402
from shared.domain.model_types import Task  # noqa: E402
from shared.domain.run_paths import RunPaths  # noqa: E402
from shared.store.local_folder import LocalFolderStore  # noqa: E402

SHARD_ROWS = 10_000
FUNCTION_TIMEOUT_S = 540


def write_export(path: Path, rows: int, seed: int = 3) -> None:
    splits = ["training"] * 7 + ["validation", "test", None]
    synthetic_export.write_export(
        path,
        rows,
        row_data=lambda i: f"https://example.invalid/{i}.jpg",
        size=(1024, 768),
        box_side=(4, 120),
        boxes=(1, 4),
        splits=splits,
        seed=seed,
    )


def split(path: Path, bucket: Path) -> int:
    """The split call's pass over the export, into shard files in a bucket folder."""
    store = LocalFolderStore(bucket)
    splitter = ExportSplitter(
        store, RunPaths(MODEL_RUN_ID), task=Task.OBJECT_DETECTION, model_run_id=MODEL_RUN_ID, shard_rows=SHARD_ROWS
    )
    with open(path) as lines:
        for _ in splitter.add_rows(json.loads(line) for line in lines):
            pass
    splitter.finish(1)
    return splitter.quality.rows_seen


def shard(bucket: Path) -> int:
    """Shard 0's conversion after its images are staged, from the split's files."""
    store, paths = LocalFolderStore(bucket), RunPaths(MODEL_RUN_ID)
    plan = EtlPlan.read(store, paths)
    rows, repeats = read_part(store, paths, 0)
    builder = TrainingSetBuilder(Task.OBJECT_DETECTION, plan.names())
    rows = builder.without_repeats(rows, repeats)
    staged = [
        StagedImage(
            key=paths.image(c.example.data_row_id, "jpg", 0),
            uri=f"gs://bench/{paths.image(c.example.data_row_id, 'jpg', 0)}",
            width=c.example.width or 1,
            height=c.example.height or 1,
            mime_type="image/jpeg",
            copied=True,
        )
        for c in rows
    ]
    done = builder.training_rows(rows, staged)
    store.write(paths.import_chunk(0), jsonl(done.import_lines), content_type="application/jsonl")
    manifest.write_chunk(store, paths, 0, done.manifest_rows)
    return len(done.manifest_rows)


def baseline(path: Path, out_path: Path) -> int:
    rows = 0
    with open(path) as lines, open(out_path, "w") as out:
        for line in lines:
            rows += 1
            out.write(json.dumps(json.loads(line), separators=(",", ":")) + "\n")
    return rows


def child(mode: str, path: Path, bucket: Path) -> None:
    started = time.perf_counter()
    if mode == "split":
        rows = split(path, bucket)
    elif mode == "shard":
        rows = shard(bucket)
    else:
        with tempfile.NamedTemporaryFile(suffix=".jsonl") as out:
            rows = baseline(path, Path(out.name))
    elapsed = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rows": rows, "seconds": elapsed, "peak_rss_mib": peak_mib}))


def measure(mode: str, path: Path, bucket: Path) -> dict:
    result = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(path), str(bucket)], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--small", type=int, default=50_000)
    parser.add_argument("--child", nargs=3, metavar=("MODE", "PATH", "BUCKET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), Path(args.child[2]))
        return
    modes = ("baseline", "split", "shard")
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for rows in (args.small, args.rows):
            path, bucket = Path(tmp) / f"export-{rows}.ndjson", Path(tmp) / f"bucket-{rows}"
            write_export(path, rows)
            for mode in modes:
                results[(mode, rows)] = r = measure(mode, path, bucket)
                print(
                    f"{mode:<9} {rows:>8} rows  {r['rows']:>7} converted  {r['rows'] / r['seconds']:>9.0f} rows/s  "
                    f"peak RSS {r['peak_rss_mib']:6.1f} MiB  ({path.stat().st_size / 2**20:.0f} MiB export)"
                )
        big, small = args.rows, args.small
        base = results[("baseline", big)]
        base_rate = base["rows"] / base["seconds"]
        print()
        for mode in ("split", "shard"):
            r = results[(mode, big)]
            print(f"{mode} / baseline speed at {big} rows: {(r['rows'] / r['seconds']) / base_rate:.2f}x")
        split_rate = results[("split", big)]["rows"] / results[("split", big)]["seconds"]
        print(
            f"split: {split_rate * FUNCTION_TIMEOUT_S:,.0f} rows fit in one {FUNCTION_TIMEOUT_S} s invocation "
            f"(1,000,000 rows in {1_000_000 / split_rate:.0f} s)"
        )
        for mode in modes:
            print(
                f"{mode} peak RSS at {big} vs {small} rows: "
                f"{results[(mode, big)]['peak_rss_mib'] / results[(mode, small)]['peak_rss_mib']:.2f}x"
            )


if __name__ == "__main__":
    main()
