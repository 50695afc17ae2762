"""Export reader benchmark: the SDK's buffered stream against the bounded-memory reader, on the fake Labelbox.

Builds a model-run export of N demo-shaped rows (1-4 boxes each, a non-ASCII global key), serves it from the
fake Labelbox on loopback in this process, cut into files of `--file-mib` that end mid-line, starts one export
task, then, each in a fresh process so peak memory is its own, reads every row of that task:

- `sdk`: `ExportTask.get_task(client, id).get_buffered_stream()`, which first downloads every file into a
  temporary file and only then yields rows;
- `stream`: `LabelboxPlatform.read_export`, the reader in `shared/platform/export_stream.py`.

For both it prints rows/s, the time to the first row, the peak RSS growth of the reading process, and the
peak bytes in its temp directory (sampled every 5 ms). On Cloud Functions `/tmp` is memory, so the last
two add up to the RAM an export costs there. Then the ratios new/SDK, measured in the same run.

    .venv/bin/python bench/export_stream_bench.py [--rows 200000] [--file-mib 16]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared.demo import export_row  # noqa: E402
from shared.platform.labelbox_adapter import LabelboxPlatform  # noqa: E402
from shared.secret import Secret  # noqa: E402

MODEL_RUN_ID = "11111111-2222-4333-8444-555555555555"
MODEL_ID = "cbenchmodel0000000000000a"
TEMPLATES = 500
ID_MARK = "@@DATA_ROW_ID@@"


def build_export(rows: int, seed: int = 3) -> bytes:
    """N export lines from a few hundred distinct rows, each with its own data row id (cheap to build)."""
    rng = random.Random(seed)
    splits = ["training"] * 7 + ["validation", "test", None]
    templates = []
    for i in range(TEMPLATES):
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
            data_row_id=ID_MARK,
            global_key=f"straße-東京-{i}.jpg",
            row_data=f"https://storage.example.com/{i}.jpg?X-Goog-Signature=abc",
            width=1024,
            height=768,
            model_id=MODEL_ID,
            model_run_id=MODEL_RUN_ID,
            objects=objects,
            split=rng.choice(splits),
            rng=rng,
        )
        templates.append(json.dumps(row, separators=(",", ":"), ensure_ascii=False).split(ID_MARK))
    lines = []
    for i in range(rows):
        head, tail = templates[i % TEMPLATES]
        lines.append(f"{head}c{i:024d}{tail}\n")
    return "".join(lines).encode()


def _status_kib(field: str) -> int:
    """VmRSS (now) or VmHWM (peak) of this process; unlike ru_maxrss, VmHWM does not carry the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


class _TempWatcher(threading.Thread):
    """Samples the bytes under the temp directory: the SDK's buffer file lives there."""

    def __init__(self, folder: Path) -> None:
        super().__init__(daemon=True)
        self.folder, self.peak, self.stopped = folder, 0, threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.005):
            total = 0
            for entry in os.scandir(self.folder):
                try:
                    total += entry.stat().st_size
                except FileNotFoundError:
                    continue
            self.peak = max(self.peak, total)


def child(mode: str, endpoint: str, api_key: str, task_id: str) -> None:
    temp = Path(tempfile.mkdtemp(prefix=f"export-bench-{mode}-"))
    tempfile.tempdir = str(temp)
    rest = endpoint.replace("/graphql", "/api/v1")
    platform = LabelboxPlatform(Secret(api_key), endpoint=endpoint, rest_endpoint=rest)
    if mode == "sdk":
        from labelbox import ExportTask

        stream = ExportTask.get_task(platform._client, task_id).get_buffered_stream()
        rows: Any = (out.json for out in stream)
    else:
        platform.export_status(task_id)  # warms the same client set-up and user lookup the SDK path did
        rows = None
    watcher = _TempWatcher(temp)
    watcher.start()
    before = _status_kib("VmHWM")  # the peak so far: imports, client set-up
    started = time.perf_counter()
    if rows is None:
        rows = platform.read_export(MODEL_RUN_ID, task_id)
    count, crc, first = 0, 0, None
    for row in rows:
        if first is None:
            first = time.perf_counter() - started
        count += 1
        crc = zlib.crc32(row["data_row"]["id"].encode(), crc)
    elapsed = time.perf_counter() - started
    watcher.stopped.set()
    watcher.join()
    peak = _status_kib("VmHWM")
    os.rmdir(temp)
    print(
        json.dumps(
            {
                "rows": count,
                "crc": crc,
                "seconds": elapsed,
                "first_row_s": first,
                "rss_growth_mib": max(0, peak - before) / 1024,
                "temp_peak_mib": watcher.peak / 2**20,
            }
        )
    )


def measure(mode: str, endpoint: str, api_key: str, task_id: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, __file__, "--child", mode, endpoint, api_key, task_id],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--file-mib", type=float, default=16, help="size of each export file Labelbox serves")
    parser.add_argument("--child", nargs=4, metavar=("MODE", "ENDPOINT", "KEY", "TASK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    from tests.platform.fake_labelbox import running_fake_labelbox

    started = time.perf_counter()
    stream = build_export(args.rows)
    file_bytes = int(args.file_mib * 2**20) + 4_321  # not a line boundary
    print(
        f"export: {args.rows} rows, {len(stream) / 2**20:.0f} MiB in files of {file_bytes / 2**20:.1f} MiB "
        f"(built in {time.perf_counter() - started:.1f} s)"
    )
    with running_fake_labelbox(
        [], model_run_id=MODEL_RUN_ID, model_id=MODEL_ID, export_result=stream, export_file_bytes=file_bytes
    ) as fake:
        platform = LabelboxPlatform(Secret(fake.api_key), endpoint=fake.endpoint, rest_endpoint=fake.rest_endpoint)
        task_id = platform.start_export(MODEL_RUN_ID)
        results = {mode: measure(mode, fake.endpoint, fake.api_key, task_id) for mode in ("sdk", "stream")}
    for mode, r in results.items():
        print(
            f"{mode:<7} {r['rows']:>8} rows  {r['rows'] / r['seconds']:>8.0f} rows/s  first row after "
            f"{r['first_row_s']:6.2f} s  peak RSS growth {r['rss_growth_mib']:7.1f} MiB  "
            f"temp dir peak {r['temp_peak_mib']:7.1f} MiB"
        )
    sdk, new = results["sdk"], results["stream"]
    assert sdk["rows"] == new["rows"] == args.rows and sdk["crc"] == new["crc"], "the readers disagree"

    def ram(r: dict[str, Any]) -> float:
        return float(r["rss_growth_mib"] + r["temp_peak_mib"])

    print(f"\nnew / SDK at {args.rows} rows (same rows, same order):")
    print(f"  speed            {(new['rows'] / new['seconds']) / (sdk['rows'] / sdk['seconds']):.2f}x")
    print(f"  time to 1st row  {new['first_row_s'] / sdk['first_row_s']:.4f}x")
    print(f"  peak RSS growth  {new['rss_growth_mib'] / max(sdk['rss_growth_mib'], 1e-9):.3f}x")
    print(f"  temp dir peak    {new['temp_peak_mib']:.1f} MiB vs {sdk['temp_peak_mib']:.1f} MiB")
    print(f"  RAM on Cloud Functions (RSS growth + /tmp)  {ram(new) / ram(sdk):.3f}x")


if __name__ == "__main__":
    main()
