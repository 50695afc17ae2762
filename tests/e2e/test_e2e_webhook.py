"""The webhook and models functions served by functions-framework, over real HTTP on loopback."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from shared.domain.model_types import Backend, offered
from shared.local_chain import LocalChain, sign


def _runs(data: Path) -> list[str]:
    runs = data / "bucket" / "runs"
    return sorted(p.name for p in runs.iterdir()) if runs.is_dir() else []


def _post(chain: LocalChain, body: bytes, headers: dict[str, str]) -> requests.Response:
    return requests.post(chain.urls["model_run"], data=body, headers=headers, timeout=10)


def test_models_lists_the_offered_model_types_when_signed(webhook_chain: LocalChain) -> None:
    response = requests.get(webhook_chain.urls["models"], headers=sign(b"", webhook_chain.secret), timeout=10)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == set(offered(Backend.LOCAL))
    assert {
        "vertex_automl_object_detection",
        "vertex_automl_single_label_classification",
        "vertex_automl_multi_label_classification",
        "local_detector",
    } <= set(body)
    assert all(v == {} for v in body.values())


def test_models_refuses_unsigned_and_wrongly_signed_calls(webhook_chain: LocalChain) -> None:
    assert requests.get(webhook_chain.urls["models"], timeout=10).status_code == 401
    bad = requests.get(webhook_chain.urls["models"], headers=sign(b"", "not-the-secret"), timeout=10)
    assert bad.status_code == 401
    assert requests.post(webhook_chain.urls["models"], timeout=10).status_code == 405


def test_bad_webhooks_get_4xx_with_a_message_and_start_nothing(
    webhook_chain: LocalChain, demo_data: tuple[Path, str]
) -> None:
    data, model_run_id = demo_data
    good = json.dumps({"modelRunId": model_run_id, "modelType": "local_detector"}).encode()
    cases = [
        (good, {"Content-Type": "application/json"}, 401),  # no signature
        (good, sign(good, "wrong-secret"), 401),
        (good, {**sign(good, webhook_chain.secret), "X-Hub-Signature": "sha1=" + "0" * 40}, 401),
        (good + b" ", sign(good, webhook_chain.secret), 401),  # body changed after signing
        (b"{not json", sign(b"{not json", webhook_chain.secret), 400),
        (b"[1, 2]", sign(b"[1, 2]", webhook_chain.secret), 400),
    ]
    for payload in (
        {"modelType": "local_detector"},
        {"modelRunId": model_run_id},
        {"modelRunId": model_run_id, "modelType": "yolo_v99"},
        {"modelRunId": "../../etc", "modelType": "local_detector"},
        {"modelRunId": model_run_id, "modelType": "local_detector", "force": "yes"},
    ):
        body = json.dumps(payload).encode()
        cases.append((body, sign(body, webhook_chain.secret), 400))
    huge = json.dumps({"modelRunId": model_run_id, "modelType": "local_detector", "pad": "x" * 70_000}).encode()
    cases.append((huge, sign(huge, webhook_chain.secret), 413))

    for body, headers, status in cases:
        response = _post(webhook_chain, body, headers)
        assert response.status_code == status, (body[:80], response.text)
        assert response.json()["error"]
    assert requests.get(webhook_chain.urls["model_run"], timeout=10).status_code == 405
    unknown = _post(webhook_chain, *_signed(webhook_chain, {"modelRunId": model_run_id, "modelType": "yolo_v99"}))
    assert "local_detector" in unknown.json()["error"]
    assert _runs(data) == []
    assert webhook_chain.statuses(model_run_id) == []


def _signed(chain: LocalChain, payload: dict) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload).encode()
    return body, sign(body, chain.secret)


def test_twenty_concurrent_duplicate_deliveries_make_one_run_and_one_etl(
    webhook_chain: LocalChain, demo_data: tuple[Path, str]
) -> None:
    data, model_run_id = demo_data
    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(lambda _: webhook_chain.webhook(model_run_id, "local_detector"), range(20)))
    assert sorted(r.status_code for r in responses) == [200] * 19 + [202]
    assert sum(not r.json()["duplicate"] for r in responses) == 1
    record = webhook_chain.wait(
        model_run_id,
        until=lambda r: r["stages"]["etl"]["state"] in ("succeeded", "failed"),
        timeout_s=120,
    )
    assert _runs(data) == [model_run_id]
    etl_events = [e["event"] for e in record["events"] if e["stage"] == "etl"]
    assert etl_events.count("splitting") == 1 and etl_events.count("fan_out") == 1  # one ETL, in 3 shards
    assert etl_events.count("shard_done") == 3 and etl_events.count("shards_done") == 1
    assert record["stages"]["etl"]["state"] == "succeeded"
    statuses = [s["status"] for s in webhook_chain.statuses(model_run_id)]
    assert statuses[:2] == ["EXPORTING_DATA", "PREPARING_DATA"]
    assert statuses.count("EXPORTING_DATA") == 1

    # what ETL left: valid Vertex import lines whose ml_use matches the export's splits, one image per kept row
    bucket = data / "bucket"
    lines = [
        json.loads(line)
        for p in sorted((bucket / "runs" / model_run_id / "etl").glob("vertex_import-*.jsonl"))
        for line in p.read_text().splitlines()
    ]
    export = [
        json.loads(line) for line in (data / "model_runs" / model_run_id / "export.ndjson").read_text().splitlines()
    ]
    split_of = {
        row["data_row"]["id"]: next(iter(next(iter(row["experiments"].values()))["runs"].values())).get("split")
        for row in export
    }
    assert len(lines) == sum(1 for s in split_of.values() if s)
    for line in lines:
        assert set(line) == {"imageGcsUri", "boundingBoxAnnotations", "dataItemResourceLabels"}
        data_row_id = line["dataItemResourceLabels"]["data_row_id"]
        assert line["dataItemResourceLabels"]["aiplatform.googleapis.com/ml_use"] == split_of[data_row_id]
        assert line["imageGcsUri"].startswith(f"gs://local-bucket/runs/{model_run_id}/images/0000")
        assert line["imageGcsUri"].endswith(f"/{data_row_id}.jpg")  # in its shard's folder
        for box in line["boundingBoxAnnotations"]:
            assert 0 <= box["xMin"] < box["xMax"] <= 1 and 0 <= box["yMin"] < box["yMax"] <= 1
            assert box["displayName"] in {"circle", "square", "triangle"}
    images = list((bucket / "runs" / model_run_id / "images").glob("*/*.jpg"))
    assert len(images) == record["data_quality"]["rows_kept"] == len(export)
    assert sorted({p.parent.name for p in images}) == ["00000", "00001", "00002"]

    # the hand-off to train could not be delivered: the run says so, with a message a user can act on
    failed = webhook_chain.wait(model_run_id, timeout_s=120)
    assert failed["status"] == "failed"
    assert "the call of train was not delivered" in failed["error"]
    assert "once train is running, click Train model again or re-run it with curl" in failed["error"]
    assert webhook_chain.statuses(model_run_id)[-1]["status"] == "FAILED"


def test_train_model_clicked_again_on_a_failed_run_resumes_from_the_failed_stage_without_force(
    webhook_chain: LocalChain, demo_data: tuple[Path, str]
) -> None:
    _data, model_run_id = demo_data
    failed = webhook_chain.wait(model_run_id, timeout_s=120)  # the run the previous test left failed at train
    assert failed["status"] == "failed" and failed["stages"]["train"]["state"] == "failed"
    again = webhook_chain.webhook(model_run_id, "local_detector")  # Labelbox sends no force
    assert again.status_code == 202, again.text
    assert again.json()["message"] == "run resumed from train"
    # the resume queues the hand-off to train, which this chain still cannot reach: the run fails again
    record = webhook_chain.wait(model_run_id, timeout_s=120)
    resumed = [e for e in record["events"] if e["event"] == "run_resumed" and e["stage"] == "model_run"]
    assert resumed and resumed[-1]["detail"]["from_stage"] == "train"
    # ETL's work is kept: it ran once, and still only once
    assert len([e for e in record["events"] if e["stage"] == "etl" and e["event"] == "splitting"]) == 1
    assert record["status"] == "failed" and "train was not delivered" in record["error"] and record["resumes"] == 1


def test_a_signed_webhook_for_a_model_run_that_does_not_exist_is_a_404_and_writes_nothing(
    webhook_chain: LocalChain, demo_data: tuple[Path, str]
) -> None:
    data, _ = demo_data
    before = _runs(data)
    missing = "00000000-0000-4000-8000-000000000000"
    response = webhook_chain.webhook(missing, "local_detector")
    assert response.status_code == 404
    assert missing in response.json()["error"]
    assert _runs(data) == before
    assert not (data / "model_runs" / missing).exists()


def test_no_secret_in_logs_run_records_or_answers(webhook_chain: LocalChain, demo_data: tuple[Path, str]) -> None:
    data, model_run_id = demo_data
    webhook_chain.webhook(model_run_id, "local_detector")  # at least one delivery happened
    for path in [*data.rglob("*.json"), *data.rglob("*.ndjson"), *data.rglob("*.log"), *data.rglob("*.jsonl")]:
        assert webhook_chain.secret not in path.read_text(errors="replace"), path
