"""The deployed chain, end to end in cloud mode: a signed webhook reaches COMPLETE.

Every function runs from its staged build in its own venv (tests/cloud/cloud_chain.py says what that
proves and what it does not). One run goes through every path a deployed run takes: the export is
still running when ETL first looks (so `monitor` watches it), the ETL function answers 403 at first
(IAM propagation after a fresh deploy) so the queue must retry the hand-off, Vertex fails one held-out
instance (an `errors_*` file), and a duplicate webhook arrives at the end.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.demo import _ids, create_demo_model_run
from tests.cloud.cloud_chain import SA, CloudChain
from tests.platform.fake_labelbox import FakeLabelbox, running_fake_labelbox_for_folder
from tests.store.gcs_emulator import GcsEmulator

SEED = 21
MODEL_TYPE = "vertex_automl_object_detection"


def _splits(folder: Path) -> dict[str, str | None]:
    """data row id -> split (None: unassigned) of every row of a demo model run."""
    out = {}
    for line in (folder / "export.ndjson").read_text().splitlines():
        row = json.loads(line)
        run = next(iter(next(iter(row["experiments"].values()))["runs"].values()))
        out[row["data_row"]["id"]] = run.get("split")
    return out


def _held_out(folder: Path) -> dict[str, str]:
    """data row id -> split, for the validation and test rows of a demo model run."""
    return {i: s for i, s in _splits(folder).items() if s in ("validation", "test")}


RUN_CONFIG = {
    "train": {
        "model_type": "CLOUD_1",
        "budget_milli_node_hours": 24000,
        "early_stopping": False,
        "max_predictions": 50,
    },
    "experiment": "budget sweep 2",
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("cloud-demo")
    folder = create_demo_model_run(root / "model_runs", images=60, seed=SEED)
    return folder, _ids(SEED)[0]


@pytest.fixture(scope="module")
def labelbox(demo: tuple[Path, str]) -> Iterator[FakeLabelbox]:
    folder, _ = demo
    # the export is still IN_PROGRESS at ETL's first looks, as a big one would be
    with running_fake_labelbox_for_folder(folder, export_in_progress_polls=3) as fake:
        fake.training_metadata = dict(RUN_CONFIG)  # the model run was created with a config
        yield fake


@pytest.fixture(scope="module")
def completed(
    demo: tuple[Path, str], labelbox: FakeLabelbox, gcs_emulator: GcsEmulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[CloudChain, dict[str, Any], str]]:
    folder, model_run_id = demo
    failed_row = sorted(_held_out(folder))[0]
    chain = CloudChain(
        tmp_path_factory.mktemp("cloud-chain"),
        gcs_emulator,
        labelbox,
        # ETL in 3 shards and delivery in 2 or 3: fan-out and fan-in run as tasks, as in a big run
        env={
            "ETL_EXPORT_WAIT_S": "0",
            "STAGE_LEASE_SECONDS": "20",
            "ETL_SHARD_ROWS": "20",
            "INFERENCE_SHARD_ROWS": "8",
        },
        vertex_options={"fail_instances": (f"/{failed_row}.jpg",), "training_polls": 3},
    )
    with chain:
        chain.doors["etl"].deny_until = time.monotonic() + 3  # a fresh deploy: IAM not yet propagated
        started = time.monotonic()
        answer = chain.webhook(model_run_id, MODEL_TYPE, modelId="cmodel")
        assert answer.status_code == 202, answer.text
        assert time.monotonic() - started < 30  # generous: the webhook queues work, it never does it
        record = chain.wait(model_run_id, timeout_s=420)
        yield chain, record, failed_row


@pytest.mark.slow
def test_a_signed_webhook_reaches_complete_with_predictions_metrics_and_status_in_labelbox(
    completed: tuple[CloudChain, dict[str, Any], str], demo: tuple[Path, str], labelbox: FakeLabelbox
) -> None:
    chain, record, failed_row = completed
    folder, model_run_id = demo
    assert record["status"] == "complete", record.get("error")
    assert record["backend"] == "vertex"
    assert chain.run_record(model_run_id) == record  # the record lives in the (emulated) bucket

    statuses = [s["status"] for s in labelbox.statuses]
    assert statuses[0] == "EXPORTING_DATA" and statuses[-1] == "COMPLETE"
    assert statuses.index("PREPARING_DATA") < statuses.index("TRAINING_MODEL") < statuses.index("COMPLETE")
    final = labelbox.pipeline["metadata"]
    assert {"map50", "map50_95", "report", "predictions_uploaded"} <= set(final)
    assert final["failed_predictions"] == "1"

    held_out = set(_held_out(folder))
    to_rank = {i for i, s in _splits(folder).items() if s is None}  # unassigned: predicted and ranked
    rows = [row for job in labelbox.imports for row in job.rows]
    predicted = {r["dataRow"]["id"] for r in rows if "bbox" in r}
    metric_rows = {r["dataRow"]["id"] for r in rows if "metricValue" in r and not r["metricName"].startswith("al_")}
    ranked_rows = {r["dataRow"]["id"] for r in rows if "metricValue" in r and r["metricName"].startswith("al_")}
    assert predicted and predicted <= (held_out | to_rank) - {failed_row}
    # the instance Vertex could not predict is neither uploaded nor scored as a miss: it is counted
    assert failed_row not in predicted | metric_rows
    assert metric_rows == held_out - {failed_row}
    assert to_rank and ranked_rows == to_rank  # uncertainty, never diagnostics, on the rows to rank
    assert {r["data_row_id"] for r in record["metrics"]["label_next"]["rows"]} == to_rank
    assert sum(record["data_quality"]["failed_predictions"].values()) == 1
    assert 0 < record["metrics"]["summary"]["map50"] <= 1
    written = labelbox.configs[-1]
    assert written["chain"]["metrics"]["map50"] == record["metrics"]["summary"]["map50"]
    assert {k: v for k, v in written.items() if k != "chain"} == RUN_CONFIG  # the user's keys, untouched
    assert record["shards"]["etl"]["count"] == 3 and record["shards"]["inference"]["count"] >= 2
    assert all(record["shards"][stage]["finished"] for stage in ("etl", "inference"))


@pytest.mark.slow
def test_every_hand_off_was_a_cloud_task_with_an_oidc_token_and_a_403_at_start_was_retried(
    completed: tuple[CloudChain, dict[str, Any], str],
) -> None:
    chain, record, _ = completed
    tasks = chain.tasks.tasks()
    targets = [t.url for t in tasks]
    for stage in ("etl", "train", "monitor", "inference"):
        assert chain.doors[stage].url in targets, f"no task ever called {stage}"
    assert all(t.state == "succeeded" for t in tasks), [(t.task_id, t.state) for t in tasks]
    for stage, door in chain.doors.items():
        verdicts = door.verdicts()
        assert "unauthenticated" not in verdicts, f"a call reached {stage} without a valid OIDC token"
    etl_verdicts = chain.doors["etl"].verdicts()
    assert etl_verdicts[0] == "propagating" and etl_verdicts[-1] == "forwarded"  # 403 first, then the queue retried
    assert all(p.identity == SA for door in chain.doors.values() for p in door.passages if p.verdict == "forwarded")
    # the export was still running at ETL's first look: monitor watched it, then handed the run back to ETL
    watched = [e["detail"]["kind"] for e in record["events"] if e["event"] == "watching"]
    assert watched == ["export", "dataset_import", "training", "batch_prediction"][: len(watched)]
    assert "export" in watched and "training" in watched


@pytest.mark.slow
def test_vertex_received_one_labelled_dataset_training_and_batch_job_from_the_runtime_account(
    completed: tuple[CloudChain, dict[str, Any], str], demo: tuple[Path, str]
) -> None:
    chain, record, _ = completed
    _, model_run_id = demo
    (dataset,) = chain.vertex.datasets()
    (pipeline,) = chain.vertex.pipelines()
    (batch,) = chain.vertex.batch_jobs()
    for resource in (dataset, pipeline, batch):
        labels = resource["labels"]
        assert labels["lb_chain"] == "e2e" and labels["lb_model_run"] == model_run_id.lower()
        assert labels["lb_job"]
    assert record["jobs"]["training"] == pipeline["name"] and pipeline["name"].startswith("projects/123456789/")
    # the model run's own settings, read through the SDK, in the exact training request
    assert pipeline["trainingTaskInputs"] == {
        "modelType": "CLOUD_1",
        "budgetMilliNodeHours": 24000,
        "disableEarlyStopping": True,
    }
    assert batch["modelParameters"]["maxPredictions"] == 50
    assert {r.identity for r in chain.vertex.requests} == {SA}  # every call carried the runtime account's token


@pytest.mark.slow
def test_train_model_clicked_again_on_a_complete_run_starts_nothing(
    completed: tuple[CloudChain, dict[str, Any], str], demo: tuple[Path, str]
) -> None:
    chain, _, _ = completed
    _, model_run_id = demo
    again = chain.webhook(model_run_id, MODEL_TYPE)
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert "already complete" in again.json()["message"] and '"force": true' in again.json()["message"]
    assert len(chain.vertex.pipelines()) == 1


@pytest.mark.slow
def test_no_secret_reaches_the_record_or_any_log(
    completed: tuple[CloudChain, dict[str, Any], str], labelbox: FakeLabelbox
) -> None:
    chain, record, _ = completed
    text = json.dumps(record)
    logs = "".join(chain.log(name) for name in chain.processes)
    for secret in (labelbox.api_key, chain.secret):
        assert secret not in text and secret not in logs


@pytest.mark.slow
def test_models_lists_what_the_deployment_can_train(completed: tuple[CloudChain, dict[str, Any], str]) -> None:
    chain, _, _ = completed
    answer = chain.models()
    assert answer.status_code == 200
    assert set(answer.json()) == {
        "vertex_automl_object_detection",
        "vertex_automl_single_label_classification",
        "vertex_automl_multi_label_classification",
    }
