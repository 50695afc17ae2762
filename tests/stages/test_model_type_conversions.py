"""A run's model type in ETL and inference: its conversions applied (ETL's to what is imported and
counted, inference's to what is joined), and a type this process has not registered failing the stage
with the type's name and how to register it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from shared import model_type_modules
from shared.demo import create_demo_model_run
from shared.domain import run_record as rr
from shared.domain.examples import Example
from shared.domain.model_types import Backend, ModelType, Task, lookup, register
from shared.domain.predictions import PredictedBox, VertexPrediction
from shared.formats.vertex_prediction import PredictionLineError
from shared.services import Services
from shared.stages.inference_delivery import converted
from tests.demo_run import DemoRun
from tests.fakes import RecordingChain, RecordingModelRuns
from tests.stages.world import call, services_for

EXAMPLE = "shared.examples.large_object_detector"
UNKNOWN = "someone_elses_detector"


def new_run(services: Services, model_run_id: str, model_type: str) -> None:
    record = rr.new_run(
        run_id=model_run_id,
        model_run_id=model_run_id,
        model_type=model_type,
        task="object_detection",
        backend="local",
        model_id=None,
        now=services.clock(),
    )
    assert services.runs.create(record)


@pytest.mark.parametrize("stage", ["etl", "inference"])
def test_a_run_of_a_type_this_process_has_not_registered_fails_the_stage_saying_how_to_register_it(
    stage: str, tmp_path: Path, demo: DemoRun
) -> None:
    platform = RecordingModelRuns(demo.root)
    services = services_for(tmp_path, platform, chain=RecordingChain())
    new_run(services, demo.model_run_id, UNKNOWN)
    answer = call(services, stage, demo.model_run_id)
    record = services.runs.get(demo.model_run_id)
    assert record is not None and record.status is rr.RunStatus.FAILED
    assert answer.body["outcome"] == "failed"
    assert record.error == (
        f"{stage} failed: model type '{UNKNOWN}' is not registered in this process: name the module that "
        'registers it in CHAIN_MODEL_TYPE_MODULES (README, "Add your own model type")'
    )
    assert platform.exports_started == []  # failed before anything was exported or predicted
    assert platform.statuses(demo.model_run_id)[-1]["status"] == "FAILED"


@pytest.fixture(scope="module")
def sixty(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sixty") / "model_runs"
    create_demo_model_run(root, images=60, seed=11)
    return root


def test_etl_imports_and_counts_what_the_model_type_trains_on(
    sixty: Path, tmp_path: Path, model_type_registry: dict[str, ModelType]
) -> None:
    assert model_type_modules.load({model_type_modules.VARIABLE: EXAMPLE}) == []
    from shared.examples.large_object_detector import MIN_AREA

    (folder,) = sixty.iterdir()
    services = services_for(tmp_path, RecordingModelRuns(sixty), chain=RecordingChain(), ETL_SHARD_ROWS="25")
    new_run(services, folder.name, "large_object_detector")
    answer = call(services, "etl", folder.name)
    assert answer.status == 200 and answer.body["outcome"] == "succeeded", answer.body
    quality = answer.body["data_quality"]

    etl = tmp_path / "bucket" / "runs" / folder.name / "etl"
    lines = [json.loads(x) for p in sorted(etl.glob("vertex_import-*.jsonl")) for x in p.read_text().splitlines()]
    boxes = [b for line in lines for b in line["boundingBoxAnnotations"]]
    assert boxes and all((b["xMax"] - b["xMin"]) * (b["yMax"] - b["yMin"]) >= MIN_AREA - 1e-6 for b in boxes)
    manifest = [json.loads(x) for p in sorted(etl.glob("manifest-*.jsonl")) for x in p.read_text().splitlines()]
    kept = [b for row in manifest for b in row["boxes"]]  # of every kept row, unassigned ones included
    image_area = 160 * 160  # the demo's: the ground truth the run is scored against is converted too
    assert kept and all(b[3] * b[4] >= MIN_AREA * image_area - 1e-3 for b in kept)
    assert len(boxes) <= len(kept)

    exported = sum(len(r["annotations"]["objects"]) for r in _labels(folder))
    left_out = quality["boxes_dropped"]["box left out by model type large_object_detector"]
    assert 0 < left_out < exported and quality["boxes_kept"] == len(kept) == exported - left_out
    counted: dict[str, dict[str, int]] = {}  # per class and split, images of the converted rows
    for row in manifest:
        for label in {b[0] for b in row["boxes"]}:
            counted.setdefault(label, {}).setdefault(row["split"], 0)
            counted[label][row["split"]] += 1
    assert quality["per_class_per_split"] == counted


def _labels(folder: Path) -> list[dict[str, Any]]:
    out = []
    for line in (folder / "export.ndjson").read_text().splitlines():
        (experiment,) = json.loads(line)["experiments"].values()
        (run,) = experiment["runs"].values()
        out.extend(run.get("labels", []))
    return out


def test_inference_converts_each_parsed_prediction_and_leaves_bad_lines_as_they_are() -> None:
    def top_box_only(p: VertexPrediction) -> VertexPrediction:
        return VertexPrediction(p.content_uri, p.mime_type, boxes=p.boxes[:1])

    mine = ModelType("top_box", Task.OBJECT_DETECTION, {Backend.LOCAL: Backend.LOCAL}, "", prediction=top_box_only)
    boxes = (PredictedBox("a", 0.9, 0, 1, 0, 1), PredictedBox("b", 0.8, 0, 1, 0, 1))
    bad = PredictionLineError("gs://b/y.jpg", "malformed json")
    out = list(converted([VertexPrediction("gs://b/x.jpg", None, boxes=boxes), bad], mine))
    assert out == [VertexPrediction("gs://b/x.jpg", None, boxes=boxes[:1]), bad]
    plain = [VertexPrediction("gs://b/x.jpg", None, boxes=boxes)]
    assert list(converted(plain, lookup("local_detector"))) == plain


def test_a_conversion_that_makes_up_a_label_fails_etl_naming_the_type_and_the_row(
    tmp_path: Path, demo: DemoRun, model_type_registry: dict[str, ModelType]
) -> None:
    def hexagons(example: Example) -> Example:
        return replace(example, boxes=tuple(replace(b, label="hexagon") for b in example.boxes))

    register(ModelType("hexagon_detector", Task.OBJECT_DETECTION, {Backend.LOCAL: Backend.LOCAL}, "", hexagons))
    services = services_for(tmp_path, RecordingModelRuns(demo.root), chain=RecordingChain())
    new_run(services, demo.model_run_id, "hexagon_detector")
    call(services, "etl", demo.model_run_id)
    record = services.runs.get(demo.model_run_id)
    assert record is not None and record.status is rr.RunStatus.FAILED
    assert record.error is not None and record.error.startswith(
        "etl failed: shard 0 (rows 0-19): model type 'hexagon_detector': training_example gave data row "
    )
    assert record.error.endswith("labels the export does not have (hexagon): it may use its features only")
