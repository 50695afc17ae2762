"""Scale benchmark: sharded ETL with 1, 2, 4 and 8 parallel workers, images served with latency.

Builds a synthetic model run of N rows (a local model-run folder) whose images are tiny JPEGs served
by a loopback HTTP server that waits `--latency-ms` before each answer, as a remote image host does.
Then, per worker count, in a fresh bucket: the split call runs (the real `run_etl`, which cuts the
export into shards and queues one call per shard), W worker processes take the queued shard calls
(the real `run_shard` with `run_etl_shard`: claim, stage the images, write the chunks, complete the
shard) as W function instances would, and the fan-in call runs (merge, checks, one hand-off to train).

Per worker count it prints the shard phase's rows/s and its ratio to 1 worker, the longest single
invocation (split, any shard, fan-in), and the peak RSS of the biggest worker. Then it extrapolates the
longest invocation to 1,000,000 rows at the default shard size (10,000): the split grows with the
rows, a shard with its own rows only. Every run is checked: every row staged and kept, every image
fetched once, one hand-off to train.

`--rss` also measures peak RSS of the split and of one default-size shard at 100k and 1M rows
(latency 0), and of the run-level metrics merge over 1M held-out rows (`metrics_merge_bench.py`).

    .venv/bin/python bench/scale_bench.py [--rows 20000] [--shard-rows 2500] [--latency-ms 50] [--rss]
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from bench import synthetic_export  # noqa: E402
from bench.synthetic_export import MODEL_ID, MODEL_RUN_ID  # noqa: E402
from shared.bootstrap import build_services  # noqa: E402
from shared.config import load_settings  # noqa: E402
from shared.domain import run_record as rr  # noqa: E402
from shared.services import Services  # noqa: E402
from shared.stages.etl import run_etl, run_etl_shard  # noqa: E402
from shared.stages.runner import StageCall, run_stage  # noqa: E402
from shared.stages.shards import run_shard  # noqa: E402

SIDE = 64  # pixels: a tiny image, so the copy is latency-bound, not bandwidth-bound
DEFAULT_SHARD_ROWS = 10_000
DEFAULT_COPY_CONCURRENCY = 16  # ETL_COPY_CONCURRENCY's default
TARGET_ROWS = 1_000_000
INVOCATION_LIMIT_S = 600.0
WORKER_COUNTS = (1, 2, 4, 8)


# ------------------------------------------------------------------------------------------ the images


class ImageHost:
    """Serves one tiny JPEG at every path, after a fixed latency; counts the requests."""

    def __init__(self, latency_s: float) -> None:
        buffer = io.BytesIO()
        Image.new("RGB", (SIDE, SIDE), (90, 140, 200)).save(buffer, "JPEG")
        body, host = buffer.getvalue(), self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                time.sleep(latency_s)
                with host._lock:
                    host.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.requests = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.request_queue_size = 256
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def write_model_run(folder: Path, rows: int, image_url: str, seed: int = 7) -> None:
    """A local model-run folder of `rows` rows, each with 1-3 boxes Vertex accepts, in every split."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_run.json").write_text(json.dumps({"id": MODEL_RUN_ID, "model_id": MODEL_ID, "name": "scale"}))
    synthetic_export.write_export(
        folder / "export.ndjson",
        rows,
        row_data=lambda i: f"{image_url}{i}.jpg",
        size=(SIDE, SIDE),
        box_side=(10, 40),
        boxes=(1, 3),
        splits=["training"] * 8 + ["validation", "test"],
        seed=seed,
    )


# ------------------------------------------------------------------------------------------ the chain


@dataclass
class QueuedCalls:
    """The chain port as a list: the bench delivers the calls itself, to its worker processes."""

    shards: list[int] = field(default_factory=list)
    plain: list[str] = field(default_factory=list)  # (stage) of every plain hand-off

    def hand_off(self, stage: str, run_id: str, *, key: str, shard: int | None = None) -> None:
        if shard is None:
            self.plain.append(stage)
        else:
            self.shards.append(shard)

    def schedule(self, stage: str, run_id: str, *, delay_s: float, attempt: int) -> bool:
        raise AssertionError(f"ETL scheduled a later call of {stage}: the export should be ready at once")


@dataclass(frozen=True)
class Tuning:
    shard_rows: int
    copy_concurrency: int  # ETL_COPY_CONCURRENCY: a shard's concurrent image copies


def services_for(data_dir: Path, tuning: Tuning, chain: QueuedCalls) -> Services:
    settings = load_settings(
        {
            "CHAIN_MODE": "local",
            "LOCAL_DATA_DIR": str(data_dir),
            "WEBHOOK_SECRET": "a-webhook-secret-for-the-scale-bench",
            "ETL_SHARD_ROWS": str(tuning.shard_rows),
            "ETL_COPY_CONCURRENCY": str(tuning.copy_concurrency),
            **{f"{s}_URL": f"http://127.0.0.1:9/{s}" for s in ("ETL", "TRAIN", "MONITOR", "INFERENCE")},
        }
    )
    return build_services(settings, chain=chain)


def new_run(services: Services) -> None:
    record = rr.new_run(
        run_id=MODEL_RUN_ID,
        model_run_id=MODEL_RUN_ID,
        model_type="local_detector",
        task="object_detection",
        backend="local",
        model_id=MODEL_ID,
        now=time.time(),
    )
    assert services.runs.create(record)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def shard_call(services: Services, index: int) -> float:
    """One shard invocation, as the queue delivers it; its wall time."""
    started = time.perf_counter()
    answer = run_shard(services, StageCall(MODEL_RUN_ID, shard=index), "etl", run_etl_shard)
    if answer.status != 200 or answer.body.get("outcome") != "succeeded":
        raise SystemExit(f"shard {index}: HTTP {answer.status} {answer.body}")
    return time.perf_counter() - started


def worker(data_dir: str, tuning: Tuning, todo: Any, done: Any) -> None:
    """One function instance: takes shard calls until told to stop."""
    chain = QueuedCalls()
    services = services_for(Path(data_dir), tuning, chain)
    done.put(("ready", None))
    seconds = [shard_call(services, index) for index in iter(todo.get, None)]
    done.put(("result", {"seconds": seconds, "peak_rss_mib": peak_rss_mib(), "fan_ins": chain.plain}))


@dataclass
class Measured:
    workers: int
    rows: int
    shards: int
    split_s: float
    shards_s: float
    fan_in_s: float
    longest_shard_s: float
    peak_rss_mib: float

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.shards_s

    @property
    def longest_s(self) -> float:
        return max(self.split_s, self.longest_shard_s, self.fan_in_s)


def run_etl_with(workers: int, data_dir: Path, model_run: Path, rows: int, tuning: Tuning) -> Measured:
    """The sharded ETL of the model run with `workers` worker processes, checked."""
    folder = data_dir / "model_runs" / MODEL_RUN_ID  # a folder of its own (statuses), the same export
    folder.mkdir(parents=True)
    (folder / "model_run.json").write_bytes((model_run / "model_run.json").read_bytes())
    (folder / "export.ndjson").symlink_to(model_run / "export.ndjson")
    chain = QueuedCalls()
    services = services_for(data_dir, tuning, chain)
    new_run(services)
    context = mp.get_context("spawn")  # fresh processes: each worker's peak RSS is its own
    todo, done = context.Queue(), context.Queue()
    processes = [
        context.Process(target=worker, args=(str(data_dir), tuning, todo, done), daemon=True) for _ in range(workers)
    ]
    for process in processes:
        process.start()
    for _ in processes:
        assert done.get(timeout=120)[0] == "ready"

    started = time.perf_counter()
    split = run_stage(services, StageCall(MODEL_RUN_ID), "etl", run_etl)
    split_s = time.perf_counter() - started
    assert split.status == 202 and split.body["for"] == "shards", split.body

    started = time.perf_counter()
    for index in chain.shards:
        todo.put(index)
    for _ in processes:
        todo.put(None)
    results = [done.get(timeout=3600)[1] for _ in processes]
    shards_s = time.perf_counter() - started
    for process in processes:
        process.join(30)
        if process.exitcode != 0:
            raise SystemExit(f"a worker failed (exit {process.exitcode})")

    started = time.perf_counter()
    fan_in = run_stage(services, StageCall(MODEL_RUN_ID), "etl", run_etl)
    fan_in_s = time.perf_counter() - started
    assert fan_in.status == 200 and fan_in.body["outcome"] == "succeeded", fan_in.body
    handed_to_fan_in = [stage for r in results for stage in r["fan_ins"]]
    assert handed_to_fan_in == ["etl"], f"the fan-in was handed off {len(handed_to_fan_in)} times"
    assert chain.plain == ["train"], chain.plain
    quality = fan_in.body["data_quality"]
    assert quality["rows_kept"] == rows and quality["images_copied"] == rows, quality
    seconds = [s for r in results for s in r["seconds"]]
    return Measured(
        workers=workers,
        rows=rows,
        shards=len(chain.shards),
        split_s=split_s,
        shards_s=shards_s,
        fan_in_s=fan_in_s,
        longest_shard_s=max(seconds),
        peak_rss_mib=max(r["peak_rss_mib"] for r in results),
    )


def scaling(rows: int, tuning: Tuning, latency_s: float, worker_counts: Sequence[int], out: Path) -> list[Measured]:
    host = ImageHost(latency_s)
    try:
        model_run = out / "model_run"
        write_model_run(model_run, rows, host.url)
        measured = []
        for workers in worker_counts:
            before = host.requests
            measured.append(run_etl_with(workers, out / f"workers-{workers}", model_run, rows, tuning))
            assert host.requests - before == rows, f"{host.requests - before} image requests for {rows} rows"
        return measured
    finally:
        host.close()


def report_scaling(measured: Sequence[Measured], tuning: Tuning, latency_ms: float) -> list[str]:
    one = measured[0]
    lines = [
        f"{one.rows} rows in {one.shards} shards of {tuning.shard_rows}, {tuning.copy_concurrency} image copies "
        f"at once a worker, each image served after {latency_ms:g} ms",
        "workers  shard phase rows/s  vs 1 worker  longest invocation (split / shard / fan-in)  peak RSS a worker",
    ]
    for m in measured:
        lines.append(
            f"{m.workers:>7}  {m.rows_per_s:>18,.0f}  {m.rows_per_s / one.rows_per_s:>10.2f}x  "
            f"{m.longest_s:>8.1f} s ({m.split_s:.1f} / {m.longest_shard_s:.1f} / {m.fan_in_s:.2f})"
            f"       {m.peak_rss_mib:>8.1f} MiB"
        )
    return lines


# -------------------------------------------------------------------------------------------- at scale


def child(mode: str, data_dir: str, shard_rows: int) -> dict[str, Any]:
    """The split call, or then shard 0 at the default copy concurrency, alone in its own process."""
    chain = QueuedCalls()
    services = services_for(Path(data_dir), Tuning(shard_rows, DEFAULT_COPY_CONCURRENCY), chain)
    started = time.perf_counter()
    if mode == "split":
        new_run(services)
        answer = run_stage(services, StageCall(MODEL_RUN_ID), "etl", run_etl)
        assert answer.status == 202, answer.body
    else:
        shard_call(services, 0)
    return {"seconds": time.perf_counter() - started, "peak_rss_mib": peak_rss_mib(), "shards": len(chain.shards)}


def in_child(*args: object) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, __file__, "--child", *map(str, args)], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def at_scale(out: Path, sizes: Sequence[int], latency_s: float, fan_in_s: float, shards: int) -> Iterator[str]:
    """Split and one default shard at each size, the merge at 1M, and the longest invocation at 1M."""
    host = ImageHost(latency_s)
    split_at: dict[int, float] = {}
    shard_s = 0.0
    try:
        for rows in sizes:
            data_dir = out / f"scale-{rows}"
            write_model_run(data_dir / "model_runs" / MODEL_RUN_ID, rows, host.url)
            split = in_child("split", data_dir, DEFAULT_SHARD_ROWS)
            shard = in_child("shard", data_dir, DEFAULT_SHARD_ROWS)
            split_at[rows], shard_s = split["seconds"], max(shard_s, shard["seconds"])
            yield (
                f"{rows:>9,} rows: split {split['seconds']:6.1f} s, peak RSS {split['peak_rss_mib']:6.1f} MiB "
                f"({split['shards']} shards); shard 0, {min(rows, DEFAULT_SHARD_ROWS):,} rows "
                f"({DEFAULT_COPY_CONCURRENCY} copies at once) {shard['seconds']:5.1f} s, "
                f"peak RSS {shard['peak_rss_mib']:6.1f} MiB"
            )
    finally:
        host.close()
    merge_bench = [sys.executable, str(ROOT / "bench" / "metrics_merge_bench.py"), "--child"]
    partials = out / "partials"
    partials.mkdir()
    n_shards = TARGET_ROWS // DEFAULT_SHARD_ROWS
    subprocess.run(
        [*merge_bench, "partials", str(partials), str(TARGET_ROWS), str(DEFAULT_SHARD_ROWS)],
        check=True,
        capture_output=True,
    )
    merged = subprocess.run(
        [*merge_bench, "merge", str(partials), str(n_shards)], check=True, capture_output=True, text=True
    )
    result = json.loads(merged.stdout.strip().splitlines()[-1])
    yield (
        f"metrics merge over {TARGET_ROWS:,} held-out rows in {n_shards} shards: "
        f"{result['seconds']:.1f} s, peak RSS {result['peak_rss_mib']:.1f} MiB"
    )
    biggest = max(split_at)
    split_1m = split_at[biggest] * TARGET_ROWS / biggest
    fan_in_1m = fan_in_s * n_shards / max(1, shards)
    longest = max(split_1m, shard_s, fan_in_1m)
    yield (
        f"longest invocation at {TARGET_ROWS:,} rows: split {split_1m:.0f} s, a shard {shard_s:.0f} s, fan-in "
        f"{fan_in_1m:.1f} s (from {shards} shards) -> {longest:.0f} s, "
        f"{'under' if longest < INVOCATION_LIMIT_S else 'OVER'} {INVOCATION_LIMIT_S:.0f} s"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4_000)
    parser.add_argument("--shard-rows", type=int, default=500)
    parser.add_argument("--copy-concurrency", type=int, default=2, help="per worker; see the module docstring")
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--workers", type=int, nargs="+", default=list(WORKER_COUNTS))
    parser.add_argument("--at-scale", type=int, nargs="*", metavar="ROWS", help="e.g. 100000 1000000")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        mode, data_dir, shard_rows = args.child
        print(json.dumps(child(mode, data_dir, int(shard_rows))))
        return 0
    tuning = Tuning(args.shard_rows, args.copy_concurrency)
    with tempfile.TemporaryDirectory() as tmp:
        measured = scaling(args.rows, tuning, args.latency_ms / 1000, args.workers, Path(tmp))
        for line in report_scaling(measured, tuning, args.latency_ms):
            print(line, flush=True)
        if args.at_scale:
            last = measured[-1]
            for line in at_scale(Path(tmp), args.at_scale, args.latency_ms / 1000, last.fan_in_s, last.shards):
                print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
