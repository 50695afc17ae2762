"""Inference's delivery in shards: the same run, cut into several delivery shards, gives exactly what one
pass over every held-out row gives (metrics, counts, uploads), and a re-delivered or crashed shard, or a
re-run, never uploads a chunk twice.

The demo run goes through the real ETL, `train` and `monitor` in-process (as in `test_inference.py`), with
the delivery shards shrunk to a few rows (and, in some cases, ETL's shards too, so that a delivery shard
spans several manifest chunks and a chunk several delivery shards). The batch job's output is varied on
purpose: jittered and spurious boxes with spread confidences, a row never predicted, a failed instance, a
duplicate line, a malformed line and predictions for images outside the held-out set.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shared import run_settings
from shared.dataset.manifest import ManifestRow, read_manifest
from shared.domain import run_record as rr
from shared.domain.label_next import Strategy
from shared.domain.model_types import Task
from shared.domain.run_paths import RunPaths
from shared.evaluation import Evaluated, Joined, evaluate_rows, join_predictions
from shared.formats.vertex_prediction import parse_prediction_line
from shared.metrics.summary import by_split, run_metrics
from shared.report.assemble import label_next_candidates, report_data
from shared.report.data import ReportData
from shared.stages import inference_fan_in, inference_split, upload
from shared.stages.inference import run_inference
from shared.stages.runner import StageAnswer, StageCall, run_stage
from shared.training.port import JobState
from tests.demo_run import DemoRun
from tests.stages.test_inference import HELD_OUT, Flow, error_line, flow_up_to_inference
from tests.stages.world import call, shard_call

UNKNOWN = "prediction for an image not in the held-out set"


@pytest.fixture
def sharded(tmp_path: Path, demo: DemoRun) -> Callable[..., Flow]:
    """`sharded(delivery_rows=3, **env)`: the demo run up to inference, delivering in shards of that size."""

    def make(delivery_rows: int = 3, **env: str) -> Flow:
        flow = flow_up_to_inference(tmp_path, demo, **{"INFERENCE_SHARD_ROWS": str(delivery_rows), **env})
        assert flow.inference().status == 202  # the batch job started
        return flow

    return make


def _varied_line(row: ManifestRow, rng: random.Random, labels: list[str]) -> str:
    """A detection line that roughly finds the row's boxes, with spread confidences and a spurious box."""
    boxes, names, scores = [], [], []
    for label, x, y, w, h in row.boxes:
        dx, dy = rng.uniform(-0.1, 0.1) * w, rng.uniform(-0.1, 0.1) * h
        x0, y0 = min(max(0.0, x + dx), row.width - 1), min(max(0.0, y + dy), row.height - 1)
        x1, y1 = min(row.width, x0 + w), min(row.height, y0 + h)
        boxes.append([x0 / row.width, x1 / row.width, y0 / row.height, y1 / row.height])
        names.append(label if rng.random() < 0.85 else rng.choice(labels))
        scores.append(round(rng.uniform(0.05, 1.0), 3))
    x0, y0 = rng.uniform(0, 0.5), rng.uniform(0, 0.5)
    boxes.append([x0, x0 + rng.uniform(0.05, 0.4), y0, y0 + rng.uniform(0.05, 0.4)])
    names.append(rng.choice(labels))
    scores.append(round(rng.uniform(0.01, 0.9), 3))
    prediction = {
        "ids": [str(i) for i in range(len(boxes))],
        "displayNames": names,
        "confidences": scores,
        "bboxes": boxes,
    }
    return json.dumps({"instance": {"content": row.image_uri, "mimeType": row.mime_type}, "prediction": prediction})


def batch_output(flow: Flow, seed: int = 7) -> list[str]:
    """Writes the job's files (two prediction files, one error file) and hands the run to inference. The
    unassigned rows (ranked for labeling, never scored) are predicted on too."""
    held_out = flow.manifest(*HELD_OUT, "unassigned")
    rng = random.Random(seed)
    labels = sorted({b[0] for row in held_out for b in row.boxes})
    _never, failed, *predicted = held_out
    lines = [_varied_line(row, rng, labels) for row in predicted]
    lines.append(lines[0])  # a duplicate
    lines.append("{not json")
    outsider = ManifestRow("x", "gs://local-bucket/elsewhere/cat.jpg", "image/jpeg", 10, 10, predicted[0].split)
    lines.append(_varied_line(outsider, rng, labels))
    lines.append(
        _varied_line(ManifestRow("y", "https://example.com/dog.jpg", "image/jpeg", 10, 10, outsider.split), rng, labels)
    )
    ref = flow.record().jobs["batch_prediction"]
    output = flow.services.store.key_from_uri(flow.backend.output_dir(ref))
    half = len(lines) // 2
    store = flow.services.store
    store.write(f"{output}/predictions_00001.jsonl", "".join(line + "\n" for line in lines[:half]).encode())
    store.write(f"{output}/predictions_00002.jsonl", "\n".join(lines[half:]).encode())  # no final newline
    store.write(f"{output}/errors_00001.jsonl", (error_line(failed) + "\n").encode())
    flow.backend.prediction_state = JobState.SUCCEEDED
    assert call(flow.services, "monitor", flow.run_id).body["outcome"] == "handed_off"
    return [*lines, error_line(failed)]


def single_pass(flow: Flow, lines: list[str]) -> tuple[dict[str, Any], Joined, Evaluated, list[ManifestRow]]:
    """What inference computed in one pass before it was sharded, over the same rows and lines."""
    record, settings = flow.record(), flow.services.settings
    rows = {
        r.image_uri: r
        for r in read_manifest(flow.services.store, flow.run_id)
        if r.split.value in (*HELD_OUT, "unassigned")
    }
    joined = join_predictions(rows, (parse_prediction_line(line) for line in lines))
    threshold = settings.predict.confidence_threshold
    evaluated = evaluate_rows(
        list(rows.values()),
        joined,
        task=Task.OBJECT_DETECTION,
        feature_for=json.loads(record.artifacts.get("label_map") or "{}"),
        question=None,
        confidence_threshold=threshold,
        max_predictions=settings.predict.max_predictions,
        uuid_seed=f"{flow.run_id}:{record.restarts}",
    )
    metrics = run_metrics(Task.OBJECT_DETECTION, evaluated.detections, [], threshold)
    split_of = {row.data_row_id: row.split.value for row in rows.values() if row.data_row_id not in evaluated.pool}
    metrics["by_split"] = by_split(Task.OBJECT_DETECTION, evaluated.detections, [], split_of, threshold)
    return json.loads(json.dumps(metrics)), joined, evaluated, list(rows.values())


def _canonical(rows: list[dict[str, Any]]) -> list[str]:
    return sorted(json.dumps(r, sort_keys=True) for r in rows)


def drain(flow: Flow) -> list[StageAnswer]:
    """Delivers the shard and fan-in calls waiting in the chain, as `world.call` does; the fan-ins' answers."""
    answers = []
    while pending := flow.chain.take_internal():
        for handed in pending:
            if handed.shard is not None:
                shard_call(flow.services, handed.stage, handed.run_id, handed.shard)
            else:
                answers.append(run_stage(flow.services, StageCall(handed.run_id), handed.stage, run_inference))
    return answers


CUTS = [
    pytest.param(3, {}, id="one-manifest-chunk"),
    pytest.param(3, {"ETL_SHARD_ROWS": "4"}, id="chunks-of-4-shards-of-3"),
    pytest.param(2, {"ETL_SHARD_ROWS": "3"}, id="chunks-of-3-shards-of-2"),
    pytest.param(1, {"ETL_SHARD_ROWS": "7"}, id="one-row-shards"),
]


@pytest.mark.parametrize(("delivery_rows", "env"), CUTS)
def test_sharded_delivery_equals_one_pass(
    sharded: Callable[..., Flow], monkeypatch: pytest.MonkeyPatch, delivery_rows: int, env: dict[str, str]
) -> None:
    monkeypatch.setattr(upload, "UPLOAD_ROWS_PER_CHUNK", 1)
    monkeypatch.setattr(inference_split, "PART_BYTES", 600)  # several part objects per chunk
    reports: list[ReportData] = []
    render = inference_fan_in.render_report
    monkeypatch.setattr(inference_fan_in, "render_report", lambda data: reports.append(data) or render(data))
    f = sharded(delivery_rows, **env)
    lines = batch_output(f)
    answer = f.inference()
    assert answer.status == 200 and answer.body["outcome"] == "complete", answer.body

    record = f.record()
    shards = record.shards["inference"]
    predicted = f.manifest(*HELD_OUT, "unassigned")
    assert shards["count"] == -(-len(predicted) // delivery_rows) > 1 and shards["finished"]
    plan = inference_split.read_plan(f.services.store, f.run_id)
    assert plan is not None and plan.lines == len(lines) and plan.stray_lines == 3  # bad json, two outsiders
    assert sum(plan.parts.values()) > len(plan.chunks)

    metrics, joined, evaluated, rows = single_pass(f, lines)
    assert record.metrics["summary"] == metrics  # exactly: every float, every curve, every split
    assert 0.0 < metrics["map50"] < 1.0 and set(metrics["by_split"]) == set(HELD_OUT)
    assert record.metrics["prediction_problems"] == dict(joined.problems)
    assert joined.problems == {
        UNKNOWN: 2,
        "prediction line skipped: malformed json": 1,
        "duplicate prediction for an image": 1,
        "held-out image without a prediction": 1,
    }
    assert record.data_quality["failed_predictions"] == dict(joined.failed_reasons) != {}
    metadata = f.platform.statuses(f.run_id)[-1]["metadata"]
    assert metadata["failed_predictions"] == "1" and metadata["prediction_problems"] == "5"
    assert metadata["rows_with_predictions"] == str(evaluated.predicted_rows)
    assert metadata["predictions_uploaded"] == str(len(f.platform.uploaded(f.run_id)))
    assert (
        json.loads((f.platform.folder(f.run_id) / "config.json").read_text())["chain"]["metrics"]["map50"]
        == metrics["map50"]
    )

    # the same rows uploaded as one pass would (same import ids), in chunks named by shard
    expected = [row for data_row_id in sorted(evaluated.upload_rows) for row in evaluated.upload_rows[data_row_id]]
    assert _canonical(f.platform.uploaded(f.run_id)) == _canonical(expected)
    names = [name for name, _rows in f.platform.uploads]
    assert len(names) == len(set(names)) == len([r for r in evaluated.upload_rows.values() if r])
    assert names == sorted(names) and all(n.startswith(f"lbchain-{f.run_id}-r0-s") for n in names)
    assert {n.split("-s")[-1][:5] for n in names} == {f"{i:05d}" for i in range(shards["count"])} - _empty(f, shards)
    assert list(record.uploads["chunks"]) == names and record.uploads["accepted"] == len(f.platform.uploaded(f.run_id))

    # the report shows what one pass would show
    (data,) = reports
    chosen = [(s.data_row_id, list(s.ground_truth), list(s.predictions)) for s in data.samples]
    threshold = f.services.settings.predict.confidence_threshold
    alone = report_data(
        record, metrics, evaluated, rows, image_of=lambda _uri: b"", threshold=threshold, finished_at=""
    )
    assert chosen == [(s.data_row_id, list(s.ground_truth), list(s.predictions)) for s in alone.samples]

    # and the rows to label next are the top of one pass too, whatever the cut
    assert evaluated.pool and set(evaluated.pool) == {r.data_row_id for r in predicted if r.split.value == "unassigned"}
    settings = run_settings.of_record(f.services.settings, record)
    one_pass = label_next_candidates(
        evaluated,
        rows,
        strategy=Strategy(settings.label_next_strategy),
        count=settings.label_next_count,
        threshold=threshold,
    )
    assert record.metrics["label_next"]["rows"] == [c.listed() for c in one_pass]
    assert [s.data_row_id for s in data.label_next] == [c.row.data_row_id for c in one_pass]


def _empty(f: Flow, shards: dict[str, Any]) -> set[str]:
    """The shards that uploaded nothing (every row of theirs failed or went unpredicted)."""
    out = set()
    for i in range(shards["count"]):
        result = json.loads(f.services.store.read(RunPaths(f.run_id).shard_result("inference", i)))
        if not result["uploads"]:
            out.add(f"{i:05d}")
    return out


def test_a_redelivered_shard_uploads_nothing_twice(
    sharded: Callable[..., Flow], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(upload, "UPLOAD_ROWS_PER_CHUNK", 1)
    f = sharded(3)
    batch_output(f)
    first = run_stage(f.services, StageCall(f.run_id), "inference", run_inference)  # the split
    assert first.status == 202 and first.body["for"] == "shards" and first.body["shards"] > 1
    calls = f.chain.take_internal()
    assert [c.shard for c in calls] == list(range(first.body["shards"]))
    for c in calls:
        assert c.shard is not None
        assert shard_call(f.services, "inference", f.run_id, c.shard).body["outcome"] == "succeeded"
    uploads = list(f.platform.uploads)
    for c in calls:  # a duplicate delivery of every shard call
        assert c.shard is not None
        assert shard_call(f.services, "inference", f.run_id, c.shard).body["outcome"] == "already_done"
    # a shard whose state was lost (its work redone from scratch) still finds its chunks marked
    f.services.store.delete(RunPaths(f.run_id).shard_state("inference", 1))
    assert shard_call(f.services, "inference", f.run_id, 1).body["outcome"] == "succeeded"
    assert f.platform.uploads == uploads
    first, *repeats = drain(f)  # every completion that found the set done handed off the fan-in
    assert first.body["outcome"] == "complete", first.body
    assert all(a.body["outcome"] == "already_done" for a in repeats)
    assert f.platform.uploads == uploads and f.record().status is rr.RunStatus.COMPLETE


def test_a_shard_that_crashes_is_retried_and_the_run_completes_with_the_same_metrics(
    sharded: Callable[..., Flow], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(upload, "UPLOAD_ROWS_PER_CHUNK", 1)
    f = sharded(3)
    lines = batch_output(f)
    real = f.platform.upload_predictions
    crashed: list[str] = []

    def flaky(model_run_id: str, name: str, rows: list[dict[str, Any]]) -> Any:
        if name.endswith("-s00001-001") and not crashed:
            crashed.append(name)
            raise ConnectionError("the platform hung up")
        return real(model_run_id, name, rows)

    monkeypatch.setattr(f.platform, "upload_predictions", flaky)
    answer = f.inference()  # split, shards (shard 1 crashes after its first chunk), no fan-in yet
    assert crashed and answer.status == 202 and f.record().status is rr.RunStatus.RUNNING
    state = f.record().shards["inference"]
    assert 1 not in state["done"] and not state["finished"]
    names = [name for name, _rows in f.platform.uploads]
    assert f"lbchain-{f.run_id}-r0-s00001-000" in names

    retry = shard_call(f.services, "inference", f.run_id, 1)  # the queue delivers it again
    assert retry.body["outcome"] == "succeeded", retry.body
    (done,) = drain(f)
    assert done.body["outcome"] == "complete", done.body
    names = [name for name, _rows in f.platform.uploads]
    assert len(names) == len(set(names))  # chunk 000 of shard 1 was not uploaded again
    metrics, _joined, evaluated, _rows = single_pass(f, lines)
    assert f.record().metrics["summary"] == metrics
    assert len(names) == len([r for r in evaluated.upload_rows.values() if r])


def test_a_rerun_after_completion_uploads_nothing_again(sharded: Callable[..., Flow]) -> None:
    f = sharded(3)
    batch_output(f)
    assert f.inference().body["outcome"] == "complete"
    uploads, summary = list(f.platform.uploads), f.record().metrics["summary"]
    chunks = dict(f.record().uploads["chunks"])

    again = f.inference()
    assert again.body["outcome"] == "already_done" and f.platform.uploads == uploads
    forced = f.inference(force=True)  # splits anew: every chunk is marked, so none goes again
    assert forced.status == 200 and forced.body["outcome"] == "complete", forced.body
    record = f.record()
    assert f.platform.uploads == uploads and record.uploads["chunks"] == chunks
    assert record.metrics["summary"] == summary and record.status is rr.RunStatus.COMPLETE
    assert record.shards["inference"]["generation"] == 2
    old = RunPaths(f.run_id).inference_split(1)
    assert not list(f.services.store.list(old))  # the first split's files are gone


def test_a_split_killed_half_way_is_redone(sharded: Callable[..., Flow], monkeypatch: pytest.MonkeyPatch) -> None:
    f = sharded(3)
    batch_output(f)

    def killed(*_args: Any, **_kwargs: Any) -> Iterator[bytes]:
        raise KeyboardInterrupt

    real = inference_split.output_lines
    monkeypatch.setattr(inference_split, "output_lines", killed)
    with pytest.raises(KeyboardInterrupt):  # the invocation dies in the middle of the split
        f.inference()
    assert f.record().shards["inference"]["splitting"]
    monkeypatch.setattr(inference_split, "output_lines", real)
    f.services.runs.update(f.run_id, lambda r: setattr(r.stages["inference"], "heartbeat_at", 0.0))  # lease over
    answer = f.inference()
    assert answer.body["outcome"] == "complete", answer.body
    assert f.record().shards["inference"]["generation"] == 2
