"""Your own model type, end to end: the README's `large_object_detector`, loaded by every function through
CHAIN_MODEL_TYPE_MODULES, offered by GET /models, trained and predicted by the local chain to COMPLETE,
with no box under its size in what ETL imported nor in what reached the model run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from shared.demo import IMAGE_SIZE, _ids, create_demo_model_run
from shared.domain.model_types import ModelType
from shared.domain.predictions import VertexPrediction
from shared.formats.vertex_prediction import parse_prediction_line
from shared.local_chain import LocalChain, sign

SEED = 13
ENV = {
    "CHAIN_MODEL_TYPE_MODULES": "shared.examples.large_object_detector",
    "LOCAL_ENGINE_STEPS": "80",  # fewer, and the model predicts no large box yet: nothing would be uploaded
    "PREDICT_CONFIDENCE_THRESHOLD": "0.05",
    "ETL_SHARD_ROWS": "40",
    "INFERENCE_SHARD_ROWS": "20",
    "MONITOR_INITIAL_DELAY_S": "1",
    "MONITOR_MAX_DELAY_S": "2",
}


@pytest.mark.slow
def test_a_model_type_from_your_own_module_runs_through_the_local_chain(
    tmp_path: Path, model_type_registry: dict[str, ModelType]
) -> None:
    # imported here, under the fixture: importing the module registers its type, for this test only
    from shared.examples.large_object_detector import MIN_AREA

    create_demo_model_run(tmp_path / "model_runs", images=80, seed=SEED, unlabeled=6)
    model_run_id, _ = _ids(SEED)
    with LocalChain(tmp_path, env=ENV) as chain:
        listed = requests.get(chain.urls["models"], headers=sign(b"", chain.secret), timeout=10)
        assert listed.status_code == 200 and "large_object_detector" in listed.json(), listed.text

        assert chain.webhook(model_run_id, "large_object_detector").status_code == 202
        record = chain.wait(model_run_id, timeout_s=400)
        assert record["status"] == "complete", record.get("error")
        assert record["model_type"] == "large_object_detector" and record["backend"] == "local"
        assert chain.statuses(model_run_id)[-1]["status"] == "COMPLETE"
    run = tmp_path / "bucket" / "runs" / model_run_id
    left_out = record["data_quality"]["boxes_dropped"]["box left out by model type large_object_detector"]
    assert left_out > 0

    # what ETL imported for training: only the large boxes
    imported = [json.loads(x) for p in sorted((run / "etl").glob("vertex_import-*.jsonl")) for x in p.open()]
    boxes = [b for line in imported for b in line["boundingBoxAnnotations"]]
    assert boxes and all((b["xMax"] - b["xMin"]) * (b["yMax"] - b["yMin"]) >= MIN_AREA - 1e-6 for b in boxes)

    # what reached the model run: predictions with large boxes only, though the model also predicted small ones
    uploaded = [
        json.loads(line)
        for path in sorted((chain.model_run_dir(model_run_id) / "predictions").glob("*.ndjson"))
        for line in path.read_text().splitlines()
    ]
    predicted = [r["bbox"] for r in uploaded if "bbox" in r]
    assert predicted, "no predictions uploaded"
    smallest = MIN_AREA * IMAGE_SIZE * IMAGE_SIZE - 1.0  # uploaded boxes are rounded to 0.01 px
    assert all(b["width"] * b["height"] >= smallest for b in predicted)
    routed = sorted(run.glob("inference/**/routed/**/*.jsonl"))  # the engine's lines, before the conversion
    raw = [parse_prediction_line(line) for path in routed for line in path.read_bytes().splitlines()]
    small = [
        b
        for p in raw
        if isinstance(p, VertexPrediction)
        for b in p.boxes
        if b.confidence >= 0.05 and (b.x_max - b.x_min) * (b.y_max - b.y_min) < MIN_AREA
    ]
    assert small, "the engine predicted no small box above the threshold: the conversion was not tried"
