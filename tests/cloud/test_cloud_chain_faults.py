"""Faults of the deployed chain: an ETL instance dies mid-run, and the chain picks the run up by itself.

On Cloud Functions an instance that runs past its timeout, or crashes, stops answering; nothing marks
the stage it held. Here the ETL function is SIGKILLed while it stages images and a fresh instance is
started (as Cloud Run would start one). The Cloud Tasks delivery that was in flight failed, so the
queue delivers it again; the new instance answers 409 while the dead owner's lease lasts, then takes
the stage over and resumes it, reusing every image already staged. No curl, no second export.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.demo import _ids, create_demo_model_run
from tests.cloud.cloud_chain import CloudChain
from tests.platform.fake_labelbox import FakeLabelbox, running_fake_labelbox_for_folder
from tests.store.gcs_emulator import GcsEmulator

SEED = 22


@pytest.fixture
def slow_images(tmp_path: Path) -> Iterator[tuple[FakeLabelbox, str]]:
    folder = create_demo_model_run(tmp_path / "model_runs", images=40, seed=SEED)
    with running_fake_labelbox_for_folder(folder, media_delay_s=0.15) as fake:
        yield fake, _ids(SEED)[0]


@pytest.mark.slow
def test_an_etl_instance_killed_mid_run_is_taken_over_by_the_queue_s_retry_and_the_run_completes(
    tmp_path: Path, gcs_emulator: GcsEmulator, slow_images: tuple[FakeLabelbox, str]
) -> None:
    labelbox, model_run_id = slow_images
    env = {"ETL_COPY_CONCURRENCY": "1", "ETL_CHUNK_ROWS": "8", "STAGE_LEASE_SECONDS": "4"}
    with CloudChain(tmp_path / "chain", gcs_emulator, labelbox, env=env) as chain:
        assert chain.webhook(model_run_id, "vertex_automl_object_detection").status_code == 202
        shard_state = f"runs/{model_run_id}/shards/etl/state-00000.json"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            state = chain.read_json(shard_state) or {}
            if state.get("state") == "running" and state.get("progress", {}).get("images_copied", 0) >= 8:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"ETL's shard never got half-way: {chain.read_json(shard_state)}")
        chain.kill("etl")  # the instance dies with the shard in hand
        labelbox.media_delay_s = 0.0
        chain.start_function("etl")  # a new instance; nobody calls it but the queue

        record = chain.wait(model_run_id, timeout_s=300)
        assert record["status"] == "complete", record.get("error")
        state = chain.read_json(shard_state)
        assert state is not None and state["state"] == "succeeded" and state["attempts"] >= 2  # taken over
        quality = record["data_quality"]
        assert quality["images_already_staged"] >= 8  # the dead instance's copies were kept, not redone
        assert quality["images_copied"] + quality["images_already_staged"] == quality["rows_kept"]
        assert len(labelbox.exports) == 1  # the recorded export was read again, not started again
        assert len(chain.vertex.pipelines()) == 1
        deliveries = [a for t in chain.tasks.tasks() if t.url == chain.doors["etl"].url for a in t.attempts]
        assert len(deliveries) >= 2  # the killed delivery failed and the queue delivered it again
