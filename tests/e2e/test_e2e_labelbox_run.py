"""`python -m shared.local_chain run --model-run ID`: a Labelbox model run trained on this machine.

The command as a user runs it (in-process `main`, its six functions as processes), with the real
labelbox SDK talking to the fake Labelbox on loopback, which serves a small demo model run and its
images over HTTP. The ports are Labelbox, a folder store, the local engine and the loopback queue: no
Google Cloud anywhere. The run must reach COMPLETE with its status, predictions, metrics and config
written to Labelbox, and the API key must appear in no output, log, run record or file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.demo import create_demo_model_run
from shared.local_chain import main
from tests.platform.fake_labelbox import FakeLabelbox, running_fake_labelbox_for_folder

SEED = 21
IMAGES = 40
ENGINE = {
    "LOCAL_ENGINE_STEPS": "20",
    "PREDICT_CONFIDENCE_THRESHOLD": "0.05",
    "MONITOR_INITIAL_DELAY_S": "1",
    "MONITOR_MAX_DELAY_S": "2",
}


def _rows_of(folder: Path, *splits: str | None) -> set[str]:
    """The data rows of these splits (None: unassigned)."""
    out = set()
    for line in (folder / "export.ndjson").read_text().splitlines():
        row = json.loads(line)
        run = next(iter(next(iter(row["experiments"].values()))["runs"].values()))
        if run.get("split") in splits:
            out.add(row["data_row"]["id"])
    return out


@pytest.fixture
def labelbox(tmp_path: Path) -> Iterator[tuple[FakeLabelbox, Path]]:
    folder = create_demo_model_run(tmp_path / "demo", images=IMAGES, seed=SEED)
    with running_fake_labelbox_for_folder(folder) as fake:
        yield fake, folder


@pytest.mark.slow
def test_run_trains_a_labelbox_model_run_here_and_writes_everything_back_to_labelbox(
    labelbox: tuple[FakeLabelbox, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake, folder = labelbox
    model_run_id = fake.model_run_id
    for name in ("CHAIN_MODE", "CHAIN_STORE", "CHAIN_BACKEND", "CHAIN_QUEUE", "LABELBOX_API_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LABELBOX_API_KEY", fake.api_key)
    monkeypatch.setenv("LABELBOX_ENDPOINT", fake.endpoint)
    monkeypatch.setenv("LABELBOX_REST_ENDPOINT", fake.rest_endpoint)
    for name, value in ENGINE.items():
        monkeypatch.setenv(name, value)
    data = tmp_path / "data"

    code = main(["run", "--model-run", model_run_id, "--data-dir", str(data), "--timeout", "300"])

    out, err = capsys.readouterr()
    record: dict[str, Any] = json.loads((data / "bucket" / "runs" / model_run_id / "run.json").read_text())
    assert code == 0, f"{out}\n{err}\n{record.get('error')}"
    assert f"run {model_run_id}: COMPLETE" in out and "map50" in out
    assert f"Labelbox model run {model_run_id} (predictions, metrics and status uploaded there)" in out
    assert record["status"] == "complete" and record["backend"] == "local"
    assert not (data / "model_runs").exists()  # the model run was Labelbox's, never a local folder

    # the model run's images came over HTTP from Labelbox's (signed) media URLs, each once
    media = sorted(d.split("?")[0] for d in fake.downloads if d.startswith("/media/"))
    assert media == sorted(f"/media/{name}" for name in fake.media) and len(media) == IMAGES

    statuses = [s["status"] for s in fake.statuses]
    assert statuses[0] == "EXPORTING_DATA" and statuses[-1] == "COMPLETE"
    assert statuses.index("PREPARING_DATA") < statuses.index("TRAINING_MODEL") < statuses.index("COMPLETE")
    assert {"map50", "map50_95", "report", "predictions_uploaded"} <= set(fake.pipeline["metadata"])

    # exactly one prediction import, of the held-out rows' predictions and metrics, all accepted
    (upload,) = fake.named("createMEAPredictionImportByFilePyApi")
    name = f"lbchain-{model_run_id}-r0-s00000-000"
    assert upload.path == "/graphql" and upload.headers["Authorization"] == f"Bearer {fake.api_key}"
    assert (upload.variables["modelRunId"], upload.variables["name"]) == (model_run_id, name)
    ((part, targets),) = json.loads(upload.form["map"]).items()
    assert targets == ["variables.file"]
    rows = [json.loads(line) for line in upload.files[part].decode().splitlines()]
    (job,) = fake.imports
    assert job.rows == rows and job.state == "FINISHED" and job.errors == []
    held_out, to_rank = _rows_of(folder, "validation", "test"), _rows_of(folder, None)
    predictions = [r for r in rows if "bbox" in r]
    metrics = [r for r in rows if "metricValue" in r and not r["metricName"].startswith("al_")]
    uncertainty = [r for r in rows if "metricValue" in r and r["metricName"].startswith("al_")]
    assert predictions and len(predictions) + len(metrics) + len(uncertainty) == len(rows)
    assert {r["dataRow"]["id"] for r in predictions} <= held_out | to_rank
    assert all(0 <= r["confidence"] <= 1 and r["name"] in {"circle", "square", "triangle"} for r in predictions)
    assert {r["dataRow"]["id"] for r in metrics} == held_out
    assert {r["metricName"] for r in metrics} == {"50pct_iou", "custom_iou"}
    assert to_rank and {r["dataRow"]["id"] for r in uncertainty} == to_rank  # the unassigned rows, ranked
    assert record["uploads"]["accepted"] == len(rows) and record["uploads"]["rejected"] == 0
    assert fake.configs[-1]["chain"]["metrics"]["map50"] == record["metrics"]["summary"]["map50"]

    # the key went to Labelbox in the Authorization header, and nowhere else
    assert fake.api_key not in out + err
    assert fake.api_key not in json.dumps(record)
    written = [p for p in data.rglob("*") if p.is_file()]
    assert any(p.suffix == ".log" for p in written)
    assert [p for p in written if fake.api_key.encode() in p.read_bytes()] == []
