"""A crashed ETL resumes when re-run by hand, without copying again the images it had staged."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from shared.demo import _ids, create_demo_model_run
from shared.local_chain import LocalChain
from tests.fakes import StageSink

IMAGES = 1200


@pytest.mark.slow
def test_killing_etl_half_way_then_curl_completes_without_recopying(tmp_path: Path, stage_sink: StageSink) -> None:
    create_demo_model_run(tmp_path / "model_runs", images=IMAGES, seed=5)
    model_run_id, _ = _ids(5)
    chain = LocalChain(tmp_path, env={"TRAIN_URL": stage_sink.url, "ETL_COPY_CONCURRENCY": "1", "ETL_CHUNK_ROWS": "40"})
    chain.start(("model_run", "etl"))
    try:
        assert chain.webhook(model_run_id, "local_detector").status_code == 202
        images = tmp_path / "bucket" / "runs" / model_run_id / "images"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(list(images.glob("*.jpg"))) < IMAGES // 4:
            time.sleep(0.005)
        chain.kill("etl")
        staged_before = {p.name: p.stat().st_mtime_ns for p in images.glob("*.jpg")}
        assert IMAGES // 4 <= len(staged_before) < IMAGES, "the kill must land half-way"
        record = chain.run_record(model_run_id)
        assert record["stages"]["etl"]["state"] == "running"  # the dead process still holds it

        chain.start(("etl",))
        response = chain.call_stage("etl", model_run_id)  # what an operator's curl does
        assert response.status_code == 200, response.text
        quality = response.json()["data_quality"]
        assert quality["rows_kept"] == IMAGES
        assert quality["images_already_staged"] >= len(staged_before)
        assert quality["images_copied"] + quality["images_already_staged"] == IMAGES
        after = {p.name: p.stat().st_mtime_ns for p in images.glob("*.jpg")}
        assert len(after) == IMAGES
        assert all(after[name] == mtime for name, mtime in staged_before.items()), "staged images were rewritten"

        record = chain.run_record(model_run_id)
        assert record["stages"]["etl"]["state"] == "succeeded"
        assert [e["event"] for e in record["events"] if e["stage"] == "etl"].count("taken_over") == 1
        assert stage_sink.calls == [{"run_id": model_run_id}]  # handed to train exactly once
    finally:
        chain.stop()


@pytest.mark.slow
def test_train_model_clicked_on_a_run_whose_etl_died_hands_etl_to_a_new_invocation(
    tmp_path: Path, stage_sink: StageSink
) -> None:
    """No curl needed: the click finds the stage held by a dead process and hands it on."""
    create_demo_model_run(tmp_path / "model_runs", images=IMAGES, seed=6)
    model_run_id, _ = _ids(6)
    chain = LocalChain(tmp_path, env={"TRAIN_URL": stage_sink.url, "ETL_COPY_CONCURRENCY": "1", "ETL_CHUNK_ROWS": "20"})
    chain.start(("model_run", "etl"))
    try:
        assert chain.webhook(model_run_id, "local_detector").status_code == 202
        images = tmp_path / "bucket" / "runs" / model_run_id / "images"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(list(images.glob("*.jpg"))) < IMAGES // 4:
            time.sleep(0.005)
        chain.kill("etl")
        assert len(list(images.glob("*.jpg"))) < IMAGES, "the kill must land half-way"
        chain.start(("etl",))
        busy = chain.webhook(model_run_id, "local_detector")  # Labelbox's "Train model" again, no force
        assert busy.status_code == 202, busy.text
        assert busy.json()["message"] == "run resumed from etl"
        record = chain.wait(model_run_id, until=lambda r: r["stages"]["etl"]["state"] == "succeeded", timeout_s=180)
        assert [e["event"] for e in record["events"] if e["stage"] == "etl"].count("taken_over") == 1
        assert record["data_quality"]["images_already_staged"] >= 20
        assert stage_sink.got_request.wait(30)  # the hand-off follows the write that records the success
        assert stage_sink.calls == [{"run_id": model_run_id}]
        again = chain.webhook(model_run_id, "local_detector")  # a live run: nothing is started
        assert again.status_code == 200 and "in progress" in again.json()["message"]
    finally:
        chain.stop()
