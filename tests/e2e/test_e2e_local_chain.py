"""The whole chain on loopback: signed webhook -> etl -> train -> monitor -> inference -> COMPLETE.

Six functions-framework processes, the local engine training in a detached process, the file-backed
model run receiving statuses, predictions, metrics and config, and the report rendered to the bucket.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from shared.demo import _ids, create_demo_model_run, create_demo_project
from shared.local_chain import LocalChain

FAST_MONITOR = {"MONITOR_INITIAL_DELAY_S": "1", "MONITOR_MAX_DELAY_S": "3"}


def _splits(model_run_dir: Path) -> dict[str, str | None]:
    """Each row's split; "unlabeled" for a row nobody labeled yet."""
    out = {}
    for line in (model_run_dir / "export.ndjson").read_text().splitlines():
        row = json.loads(line)
        run = next(iter(next(iter(row["experiments"].values()))["runs"].values()))
        out[row["data_row"]["id"]] = run.get("split") if "labels" in run else "unlabeled"
    return out


def _uploaded(model_run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((model_run_dir / "predictions").glob("*.ndjson"))}


@pytest.mark.slow
def test_detector_run_from_webhook_to_complete_and_a_rerun_uploads_nothing_twice(tmp_path: Path) -> None:
    create_demo_model_run(tmp_path / "model_runs", images=150, seed=3, unlabeled=12)
    project = create_demo_project(tmp_path / "projects")
    model_run_id, _ = _ids(3)
    env = {
        "LOCAL_ENGINE_TRAIN_SECONDS": "25",
        "ETL_SHARD_ROWS": "50",
        "INFERENCE_SHARD_ROWS": "10",
        "LABEL_NEXT_COUNT": "5",
        "LABEL_NEXT_PROJECT_ID": project.name,
        **FAST_MONITOR,
    }
    with LocalChain(tmp_path, env=env) as chain:
        assert chain.webhook(model_run_id, "local_detector").status_code == 202
        record = chain.wait(model_run_id, timeout_s=500)
        assert record["status"] == "complete", record.get("error")
        assert record["shards"]["etl"]["count"] == 4 and record["shards"]["etl"]["finished"]  # 162 rows, 4 shards
        assert record["shards"]["inference"]["count"] >= 2 and record["shards"]["inference"]["finished"]
        assert [e["event"] for e in record["events"] if e["stage"] == "etl"].count("shards_done") == 1
        folder = chain.model_run_dir(model_run_id)

        statuses = [s["status"] for s in chain.statuses(model_run_id)]
        assert statuses[0] == "EXPORTING_DATA" and statuses[-1] == "COMPLETE"
        assert statuses.index("PREPARING_DATA") < statuses.index("TRAINING_MODEL") < statuses.index("COMPLETE")
        final: dict = {}  # Labelbox merges the metadata of successive status updates
        for status in chain.statuses(model_run_id):
            final.update(status.get("metadata") or {})
        assert {"map50", "map50_95", "report", "predictions_uploaded"} <= set(final)

        # monitor looked several times, each look ending at once with the next one scheduled (no sleeping)
        looks = [e for e in record["events"] if e["stage"] == "monitor" and e["event"] == "started"]
        assert len(looks) >= 2
        assert record["looks"] >= len(looks)
        assert record["jobs"]["model"].endswith("model.pt")

        splits = _splits(folder)
        held_out = {i for i, s in splits.items() if s in ("validation", "test")}
        to_rank = {i for i, s in splits.items() if s in (None, "unlabeled")}  # unassigned, and nobody labeled
        assert len([s for s in splits.values() if s == "unlabeled"]) == 12
        rows = [json.loads(line) for content in _uploaded(folder).values() for line in content.splitlines()]
        predictions = [r for r in rows if "bbox" in r]
        metrics = [r for r in rows if "metricValue" in r]
        diagnostics = [r for r in metrics if not r["metricName"].startswith("al_")]
        assert predictions, "no predictions uploaded"
        assert {r["dataRow"]["id"] for r in predictions} <= held_out | to_rank
        assert all(0 <= r["confidence"] <= 1 and r["name"] in {"circle", "square", "triangle"} for r in predictions)
        assert {r["dataRow"]["id"] for r in diagnostics} == held_out
        assert {r["metricName"] for r in diagnostics} == {"50pct_iou", "custom_iou"}
        assert not {r["metricName"] for r in metrics} & {"iou", "precision", "recall", "f1"}
        uncertainty = [r for r in metrics if r["metricName"].startswith("al_")]
        assert {r["dataRow"]["id"] for r in uncertainty} == to_rank
        assert {r["metricName"] for r in uncertainty} == {
            "al_least_confidence",
            "al_margin",
            "al_entropy",
            "al_boxes",
            "al_no_detection",
        }

        # the loop: the rows to label next are the most uncertain of those, listed in the record and status
        listed = record["metrics"]["label_next"]
        assert listed["strategy"] == "entropy" and listed["rows_ranked"] == len(to_rank)
        ranked = [r["data_row_id"] for r in listed["rows"]]
        assert len(ranked) == 5 and set(ranked) <= to_rank
        entropy = {r["dataRow"]["id"]: r["metricValue"] for r in uncertainty if r["metricName"] == "al_entropy"}
        assert [entropy[i] for i in ranked] == sorted((entropy[i] for i in ranked), reverse=True)
        assert min(entropy[i] for i in ranked) >= max(entropy[i] for i in to_rank - set(ranked))
        assert final["label_next"] == f"{len(ranked)} of {len(to_rank)} rows to rank, by entropy"

        # and they went to the labeling project as one batch, with the model's boxes as pre-labels
        (batch_file,) = (project / "batches").glob("*.json")
        batch = json.loads(batch_file.read_text())
        assert batch["dataRowIds"] == ranked or sorted(batch["dataRowIds"]) == sorted(ranked)
        prelabels = [json.loads(line) for line in (project / "prelabels" / f"{batch_file.stem}.ndjson").open()]
        assert {r["dataRow"]["id"] for r in prelabels} <= set(ranked)
        boxed = {r["dataRow"]["id"] for r in predictions if r["dataRow"]["id"] in set(ranked)}
        assert {r["dataRow"]["id"] for r in prelabels} == boxed
        sent = chain.statuses(model_run_id)[-1]["metadata"]["label_next_sent"]  # the last update
        assert sent.startswith(f"5 rows to project {project.name}")

        config = json.loads((folder / "config.json").read_text())
        assert 0 <= config["chain"]["metrics"]["map50"] <= 1 and "per_class" in config["chain"]["metrics"]
        report = tmp_path / "bucket" / "runs" / model_run_id / "report.html"
        html = report.read_text()
        for section in ("summary", "data-quality", "metrics", "pr-curves", "confusion-matrix", "samples", "label-next"):
            assert f'id="{section}"' in html
        label_next = html[html.index('id="label-next"') :]
        assert all(data_row_id in label_next for data_row_id in ranked)

        # re-running inference by hand uploads nothing twice
        before = _uploaded(folder)
        again = chain.call_stage("inference", model_run_id)
        assert again.status_code == 200 and again.json()["outcome"] == "already_done"
        forced = chain.call_stage("inference", model_run_id, force=True)  # splits anew, in shards again
        assert forced.status_code == 202 and forced.json()["for"] == "shards", forced.text
        record = chain.wait(
            model_run_id,
            until=lambda r: r["shards"]["inference"]["generation"] == 2 and r["status"] == "complete",
            timeout_s=120,
        )
        assert _uploaded(folder) == before
        assert sum(c["accepted"] for c in record["uploads"]["chunks"].values()) == len(predictions) + len(metrics)


@pytest.mark.slow
def test_killing_the_training_process_fails_the_job_and_the_model_run(tmp_path: Path) -> None:
    create_demo_model_run(tmp_path / "model_runs", images=60, seed=4)
    model_run_id, _ = _ids(4)
    with LocalChain(tmp_path, env={"LOCAL_ENGINE_TRAIN_SECONDS": "600", **FAST_MONITOR}) as chain:
        assert chain.webhook(model_run_id, "local_detector").status_code == 202
        record = chain.wait(model_run_id, until=lambda r: "training" in r["jobs"], timeout_s=120)
        job = tmp_path / "engine" / "jobs" / record["jobs"]["training"].rsplit("/", 1)[-1]
        deadline = time.monotonic() + 120
        state: dict = {}
        while time.monotonic() < deadline:
            state = json.loads((job / "state.json").read_text()) if (job / "state.json").is_file() else {}
            if state.get("state") == "running" and state.get("pid"):
                break
            time.sleep(0.2)
        os.kill(state["pid"], signal.SIGKILL)

        record = chain.wait(model_run_id, timeout_s=120)
        assert record["status"] == "failed"
        assert "training" in record["error"]
        assert json.loads((job / "state.json").read_text())["state"] == "failed"
        last = chain.statuses(model_run_id)[-1]
        assert last["status"] == "FAILED" and len(last["error_message"]) <= 255


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["local_single_label_classifier", "vertex_automl_multi_label_classification"])
def test_classification_runs_end_to_end(tmp_path: Path, model_type: str) -> None:
    create_demo_model_run(tmp_path / "model_runs", images=120, seed=5)
    model_run_id, _ = _ids(5)
    with LocalChain(tmp_path, env={"LOCAL_ENGINE_TRAIN_SECONDS": "12", **FAST_MONITOR}) as chain:
        assert chain.webhook(model_run_id, model_type).status_code == 202
        record = chain.wait(model_run_id, timeout_s=400)
        assert record["status"] == "complete", record.get("error")
        rows = [
            json.loads(line) for c in _uploaded(chain.model_run_dir(model_run_id)).values() for line in c.splitlines()
        ]
        answers = [r for r in rows if "answer" in r]
        assert answers
        if model_type.startswith("local_single"):
            assert all(r["name"] == "largest_shape" and isinstance(r["answer"], dict) for r in answers)
        else:
            assert all(r["name"] == "shapes_present" and isinstance(r["answer"], list) for r in answers)
        assert any(r.get("metricName") == "classification" for r in rows)
        assert record["backend"] == "local"
