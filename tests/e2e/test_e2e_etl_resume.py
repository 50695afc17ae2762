"""A crashed ETL resumes by itself once its function is back: the local queue delivers its shard calls
again, the shards the dead process held are taken over, and no image it had staged is copied again."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from shared.demo import _ids, create_demo_model_run
from shared.local_chain import LocalChain
from tests.fakes import StageSink

IMAGES = 1200
SHARD_ROWS = 300  # four shards, run at once
ENV = {
    "ETL_COPY_CONCURRENCY": "1",
    "ETL_SHARD_ROWS": str(SHARD_ROWS),
    "ETL_CHUNK_ROWS": "20",
    "LOCAL_CALL_FIRST_RETRY_S": "0.5",
}


def _kill_half_way(chain: LocalChain, images: Path) -> dict[str, int]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(images.glob("*/*.jpg"))) < IMAGES // 4:
        time.sleep(0.005)
    chain.kill("etl")
    staged = {str(p.relative_to(images)): p.stat().st_mtime_ns for p in images.glob("*/*.jpg")}
    assert IMAGES // 4 <= len(staged) < IMAGES, "the kill must land half-way"
    return staged


def _shard_attempts(bucket: Path, run_id: str) -> list[int]:
    states = sorted((bucket / "runs" / run_id / "shards" / "etl").glob("state-*.json"))
    return [json.loads(p.read_text())["attempts"] for p in states]


@pytest.mark.slow
def test_killing_etl_half_way_then_restarting_it_completes_without_recopying(
    tmp_path: Path, stage_sink: StageSink
) -> None:
    create_demo_model_run(tmp_path / "model_runs", images=IMAGES, seed=5)
    model_run_id, _ = _ids(5)
    chain = LocalChain(tmp_path, env={"TRAIN_URL": stage_sink.url, **ENV})
    chain.start(("model_run", "etl"))
    try:
        assert chain.webhook(model_run_id, "local_detector").status_code == 202
        images = tmp_path / "bucket" / "runs" / model_run_id / "images"
        staged_before = _kill_half_way(chain, images)
        record = chain.run_record(model_run_id)
        assert record is not None and record["shards"]["etl"]["count"] == IMAGES // SHARD_ROWS
        assert record["status"] == "running"

        chain.start(("etl",))  # nothing else: the queue still holds the shard calls the kill broke
        record = chain.wait(model_run_id, until=lambda r: r["stages"]["etl"]["state"] == "succeeded", timeout_s=180)
        quality = record["data_quality"]
        assert quality["rows_kept"] == IMAGES
        assert quality["images_already_staged"] >= len(staged_before)
        assert quality["images_copied"] + quality["images_already_staged"] == IMAGES
        after = {str(p.relative_to(images)): p.stat().st_mtime_ns for p in images.glob("*/*.jpg")}
        assert len(after) == IMAGES
        assert all(after[name] == mtime for name, mtime in staged_before.items()), "staged images were rewritten"
        assert max(_shard_attempts(tmp_path / "bucket", model_run_id)) >= 2  # a dead owner's shard taken over
        assert stage_sink.got_request.wait(30)
        time.sleep(1.0)  # a duplicate hand-off would land now
        assert stage_sink.calls == [{"run_id": model_run_id}]  # handed to train exactly once

        again = chain.call_stage("etl", model_run_id)  # what an operator's curl does, once it is done
        assert again.status_code == 200 and again.json()["outcome"] == "already_done", again.text
        assert stage_sink.calls == [{"run_id": model_run_id}]
    finally:
        chain.stop()


@pytest.mark.slow
def test_shard_calls_given_up_fail_the_run_and_train_model_clicked_again_redoes_only_the_unfinished(
    tmp_path: Path, stage_sink: StageSink
) -> None:
    """With no redeliveries left (LOCAL_CALL_RETRIES=0), the calls the kill broke are given up: the run
    fails and says what to do; "Train model" clicked again fans out the unfinished shards anew."""
    create_demo_model_run(tmp_path / "model_runs", images=IMAGES, seed=6)
    model_run_id, _ = _ids(6)
    chain = LocalChain(tmp_path, env={"TRAIN_URL": stage_sink.url, **ENV, "LOCAL_CALL_RETRIES": "0"})
    chain.start(("model_run", "etl"))
    try:
        assert chain.webhook(model_run_id, "local_detector").status_code == 202
        images = tmp_path / "bucket" / "runs" / model_run_id / "images"
        staged_before = _kill_half_way(chain, images)
        failed = chain.wait(model_run_id, until=lambda r: r["status"] == "failed", timeout_s=60)
        assert "of etl was not delivered" in failed["error"]
        assert "once etl is running, click Train model again or re-run it with curl" in failed["error"]
        done_before = len(failed["shards"]["etl"]["done"])

        chain.start(("etl",))
        resumed = chain.webhook(model_run_id, "local_detector")  # Labelbox sends no force
        assert resumed.status_code == 202 and resumed.json()["message"] == "run resumed from etl", resumed.text
        record = chain.wait(model_run_id, until=lambda r: r["stages"]["etl"]["state"] == "succeeded", timeout_s=180)
        assert record["data_quality"]["images_already_staged"] >= len(staged_before)
        assert record["data_quality"]["rows_kept"] == IMAGES
        assert record["shards"]["etl"]["dispatches"] == 2
        fan_out = [e for e in record["events"] if e["event"] == "fan_out"]
        assert [e["detail"]["shards"] for e in fan_out] == [IMAGES // SHARD_ROWS, IMAGES // SHARD_ROWS - done_before]
        assert stage_sink.got_request.wait(30)
        time.sleep(1.0)
        assert stage_sink.calls == [{"run_id": model_run_id}]
    finally:
        chain.stop()
