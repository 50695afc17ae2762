"""The local platform's labeling projects: `send_to_project` writes the batch and the pre-labels in
Labelbox's shapes into the project's folder, skips rows of earlier batches, and is idempotent by name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shared.demo import CHECKLIST, DEMO_PROJECT, RADIO, create_demo_project
from shared.platform.local_model_run import LocalModelRuns
from shared.platform.port import PlatformError, ProjectRefused, SendResult
from tests.demo_run import DemoRun

BATCH = "lbchain-run-r0-label-next"


def predicted(demo: DemoRun) -> tuple[LocalModelRuns, list[str]]:
    """The demo's local platform with its project, and predictions uploaded on its first four rows."""
    platform = LocalModelRuns(demo.root)
    create_demo_project(platform.projects_dir)
    ids = [r["data_row"]["id"] for r in demo.rows()[:4]]
    rows: list[dict[str, Any]] = []
    for i, data_row_id in enumerate(ids):
        rows += [
            {
                "uuid": f"00000000-0000-4000-8000-00000000000{i}",
                "dataRow": {"id": data_row_id},
                "name": "circle",
                "confidence": 0.7,
                "bbox": {"top": 1.0, "left": 2.0, "height": 3.0, "width": 4.0},
            },
            {
                "uuid": f"00000000-0000-4000-8000-00000000001{i}",
                "dataRow": {"id": data_row_id},
                "name": RADIO,
                "answer": {"name": "square", "confidence": 0.6},
            },
            {
                "dataRow": {"id": data_row_id},
                "metricName": "al_entropy",
                "metricValue": 0.5,
                "featureName": "circle",
                "aggregation": "ARITHMETIC_MEAN",
            },
        ]
    assert platform.upload_predictions(demo.model_run_id, "chunk-000", rows).accepted == len(rows)
    return platform, ids


def send(platform: LocalModelRuns, demo: DemoRun, ids: list[str], **options: Any) -> SendResult:
    options = {"batch_name": BATCH, "priority": 2, **options}
    return platform.send_to_project(demo.model_run_id, DEMO_PROJECT, ids, **options)


def test_the_batch_and_its_pre_labels_are_written_in_labelboxs_shapes(demo: DemoRun) -> None:
    platform, ids = predicted(demo)
    result = send(platform, demo, ids[:2])
    folder = platform.projects_dir / DEMO_PROJECT
    assert platform.projects_dir == demo.root.parent / "projects"  # beside the model runs by default
    batch = json.loads((folder / "batches" / f"{BATCH}.json").read_text())
    assert {k: v for k, v in batch.items() if k not in ("createdAt", "updatedAt")} == {
        "id": result.batch_id,
        "name": BATCH,
        "size": 2,
        "priority": 2,
        "projectId": DEMO_PROJECT,
        "dataRowIds": ids[:2],
        "excludedDataRowIds": [],
        "source": {"modelRunId": demo.model_run_id},
        "preLabels": f"prelabels/{BATCH}.ndjson",
        "unmatchedFeatures": [],
    }
    prelabels = [json.loads(line) for line in (folder / "prelabels" / f"{BATCH}.ndjson").read_text().splitlines()]
    assert prelabels == platform.prelabels(DEMO_PROJECT, BATCH)
    shapes = [{k: v for k, v in p.items() if k != "uuid"} for p in prelabels]
    assert shapes == [  # the project's schema ids (demo_ontology), no confidence, no metric rows
        {
            "dataRow": {"id": ids[0]},
            "schemaId": "schema-circle",
            "bbox": {"top": 1.0, "left": 2.0, "height": 3.0, "width": 4.0},
        },
        {"dataRow": {"id": ids[0]}, "schemaId": f"schema-{RADIO}", "answer": {"schemaId": "schema-option-square"}},
        {
            "dataRow": {"id": ids[1]},
            "schemaId": "schema-circle",
            "bbox": {"top": 1.0, "left": 2.0, "height": 3.0, "width": 4.0},
        },
        {"dataRow": {"id": ids[1]}, "schemaId": f"schema-{RADIO}", "answer": {"schemaId": "schema-option-square"}},
    ]
    assert result == SendResult(
        DEMO_PROJECT, BATCH, sent=2, skipped_in_project=0, batch_id=batch["id"], import_id=batch["preLabels"]
    )


def test_rows_of_earlier_batches_are_skipped_and_counted(demo: DemoRun) -> None:
    platform, ids = predicted(demo)
    send(platform, demo, ids[:2])
    result = send(platform, demo, ids[1:4], batch_name="lbchain-run-r1-label-next")
    assert (result.sent, result.skipped_in_project) == (2, 1)
    later = platform.batches(DEMO_PROJECT)[-1]
    assert later["dataRowIds"] == ids[2:4] and later["excludedDataRowIds"] == [ids[1]]
    assert {p["dataRow"]["id"] for p in platform.prelabels(DEMO_PROJECT, later["name"])} == set(ids[2:4])

    nothing = send(platform, demo, ids[:2], batch_name="lbchain-run-r2-label-next")
    assert (nothing.sent, nothing.skipped_in_project, nothing.batch_id) == (0, 2, None)
    assert len(platform.batches(DEMO_PROJECT)) == 2  # no batch of no rows


def test_a_second_send_of_the_same_batch_writes_nothing(demo: DemoRun) -> None:
    platform, ids = predicted(demo)
    first = send(platform, demo, ids[:2])
    folder = platform.projects_dir / DEMO_PROJECT
    written = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != ".lock"}
    again = send(platform, demo, ids[:3])  # a retry, or a duplicate delivery
    assert again.already_sent and (again.sent, again.batch_id) == (2, first.batch_id)
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != ".lock"} == written


def test_features_the_ontology_lacks_are_named_and_left_out(demo: DemoRun) -> None:
    platform, ids = predicted(demo)
    result = send(platform, demo, ids[:1], features=["circle", CHECKLIST, "hexagon"])
    assert result.unmatched_features == ("hexagon",)
    assert {p["schemaId"] for p in platform.prelabels(DEMO_PROJECT, BATCH)} == {"schema-circle"}  # only those asked


def test_an_ontology_with_none_of_the_features_is_refused_naming_them(demo: DemoRun) -> None:
    platform, ids = predicted(demo)
    ontology = platform.projects_dir / DEMO_PROJECT / "ontology.json"
    ontology.write_text(json.dumps({"tools": [{"tool": "polygon", "name": "circle"}], "classifications": []}))
    with pytest.raises(ProjectRefused) as caught:
        send(platform, demo, ids[:2])
    assert str(caught.value) == (
        f"labeling project {DEMO_PROJECT}'s ontology has none of the model's features (circle (rectangle), "
        f"{RADIO} (radio)): add them to its ontology.json, or send to another project"
    )
    assert not (platform.projects_dir / DEMO_PROJECT / "batches").exists()


def test_a_missing_project_or_ontology_is_refused_saying_what_to_create(demo: DemoRun, tmp_path: Path) -> None:
    platform, ids = predicted(demo)
    with pytest.raises(ProjectRefused) as caught:
        platform.send_to_project(demo.model_run_id, "nope", ids, batch_name=BATCH, priority=5)
    folder = platform.projects_dir / "nope"
    assert str(caught.value) == (
        f"there is no labeling project nope in {platform.projects_dir}: create the folder {folder} with the "
        "project's ontology.json, or set another project id"
    )
    folder.mkdir()
    with pytest.raises(ProjectRefused, match=r"labeling project nope has no ontology.json: write the project's"):
        platform.send_to_project(demo.model_run_id, "nope", ids, batch_name=BATCH, priority=5)
    with pytest.raises(ProjectRefused, match="is not a labeling project id"):
        platform.send_to_project(demo.model_run_id, "../model_runs", ids, batch_name=BATCH, priority=5)


def test_rows_outside_the_model_run_are_a_platform_error(demo: DemoRun) -> None:
    platform, ids = predicted(demo)
    with pytest.raises(PlatformError, match="data rows cnot-a-row are not in model run"):
        send(platform, demo, [ids[0], "cnot-a-row"])


def test_the_demo_writes_a_project_beside_its_model_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from shared.demo import demo_ontology, main

    main(["--out", str(tmp_path / "model_runs"), "--images", "2", "--project", "mine"])
    folder = tmp_path / "projects" / "mine"
    assert json.loads((folder / "ontology.json").read_text()) == demo_ontology()
    assert str(folder) in capsys.readouterr().out
