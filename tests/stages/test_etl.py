"""The ETL stage, run in-process on a real folder store and a real local model run.

First its course on a 20-image demo: the chunk files and the manifest, one hand-off to train, an export
that is still running (handed to monitor) or that failed, and re-runs; the platform and the chain are the
recording fakes of `tests/fakes.py`. Then bad rows (issue 15): each test starts from a 60-image demo model
run, spoils some rows the way a user's export might, runs the stage, and checks what the run record, the
chunk files and the model run's status say.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shared.demo import create_demo_model_run
from shared.domain import run_record as rr
from shared.platform.local_model_run import LocalModelRuns
from shared.platform.port import ExportState
from shared.services import Services
from shared.stages.runner import StageAnswer
from tests.demo_run import DemoRun
from tests.fakes import RecordingChain, RecordingModelRuns
from tests.stages.world import call, create_run, services_for

DEMO_IMAGES = 20  # the `demo` fixture's (tests/demo_run.py)
IMAGES = 60
SEED = 11


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("etl-demo") / "model_runs"
    create_demo_model_run(root, images=IMAGES, seed=SEED)
    return root


@dataclass
class World:
    tmp: Path
    root: Path
    folder: Path
    model_run_id: str

    def rows(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in (self.folder / "export.ndjson").read_text().splitlines() if line]

    def write_rows(self, rows: list[dict[str, Any]]) -> None:
        (self.folder / "export.ndjson").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def run(self, task: str = "object_detection", **env: str) -> tuple[StageAnswer, Services]:
        chain = RecordingChain()
        services = services_for(self.tmp, LocalModelRuns(self.root), chain=chain, ETL_COPY_CONCURRENCY="4", **env)
        create_run(services, self.model_run_id, task=task)
        answer = call(services, "etl", self.model_run_id, force=True)
        assert chain.schedules == []  # ETL on a local export never waits
        return answer, services

    def lines(self, kind: str) -> list[dict[str, Any]]:
        folder = self.tmp / "bucket" / "runs" / self.model_run_id / "etl"
        return [
            json.loads(line)
            for path in sorted(folder.glob(f"{kind}-*.jsonl"))
            for line in path.read_text().splitlines()
            if line
        ]

    def statuses(self) -> list[dict[str, Any]]:
        return LocalModelRuns(self.root).statuses(self.model_run_id)

    def record(self) -> dict[str, Any]:
        return json.loads((self.tmp / "bucket" / "runs" / self.model_run_id / "run.json").read_text())


@pytest.fixture
def world(template: Path, tmp_path: Path) -> World:
    root = tmp_path / "model_runs"
    shutil.copytree(template, root)
    (folder,) = root.iterdir()
    return World(tmp_path, root, folder, folder.name)


def _run_of(row: dict[str, Any]) -> dict[str, Any]:
    (experiment,) = row["experiments"].values()
    (run,) = experiment["runs"].values()
    return run


def _objects(row: dict[str, Any]) -> list[dict[str, Any]]:
    return _run_of(row)["labels"][0]["annotations"]["objects"]


def _succeeded(answer: StageAnswer) -> dict[str, Any]:
    assert answer.status == 200 and answer.body["outcome"] == "succeeded", answer.body
    return answer.body["data_quality"]


# -- the stage's course: chunks and manifest, one hand-off, an export that waits or fails --------------------


@dataclass
class Flow:
    services: Services
    platform: RecordingModelRuns
    chain: RecordingChain
    run_id: str

    def etl(self, **flags: Any) -> StageAnswer:
        return call(self.services, "etl", self.run_id, **flags)

    def record(self) -> rr.RunRecord:
        record = self.services.runs.get(self.run_id)
        assert record is not None
        return record

    def keys(self, kind: str) -> list[str]:
        return sorted(k for k in self.services.store.list(f"runs/{self.run_id}/etl/") if f"/{kind}-" in k)

    def lines(self, kind: str) -> list[dict[str, Any]]:
        store = self.services.store
        return [json.loads(line) for key in self.keys(kind) for line in store.read(key).splitlines() if line]


@pytest.fixture
def flow(tmp_path: Path, demo: DemoRun) -> Callable[..., Flow]:
    """A run just created by the webhook on the 20-image demo; `flow(**env)` sets the stage's settings."""

    def make(**env: str) -> Flow:
        platform, chain = RecordingModelRuns(demo.root), RecordingChain()
        services = services_for(tmp_path, platform, chain=chain, **env)
        create_run(services, demo.model_run_id, model_id=demo.model_id)
        return Flow(services, platform, chain, demo.model_run_id)

    return make


def test_etl_writes_chunks_and_manifest_and_hands_off_to_train_once(flow: Callable[..., Flow]) -> None:
    f = flow(ETL_SHARD_ROWS="8")
    answer = f.etl()
    quality = _succeeded(answer)
    assert quality["rows_kept"] == DEMO_IMAGES
    chunks = [f"runs/{f.run_id}/etl/{kind}-{i:05d}.jsonl" for kind in ("manifest", "vertex_import") for i in range(3)]
    assert f.keys("manifest") + f.keys("vertex_import") == chunks  # 20 rows in shards of 8
    manifest = f.lines("manifest")  # every kept row; the import lines only the rows that train or evaluate
    assert len(manifest) == DEMO_IMAGES and {m["split"] for m in manifest} >= {"training", "validation", "test"}
    assigned = [m["data_row_id"] for m in manifest if m["split"] != "unassigned"]
    assert [line["dataItemResourceLabels"]["data_row_id"] for line in f.lines("vertex_import")] == assigned
    assert all(m["image_uri"].startswith(f"gs://local-bucket/runs/{f.run_id}/images/") for m in manifest)
    record = f.record()
    assert record.stages["etl"].state is rr.StageState.SUCCEEDED
    assert record.artifacts["import_jsonl"] == f"gs://local-bucket/runs/{f.run_id}/etl/vertex_import-*.jsonl"
    assert record.artifacts["manifest"] == f"gs://local-bucket/runs/{f.run_id}/etl/manifest-*.jsonl"
    assert record.artifacts["etl_chunks"] == "3" and set(json.loads(record.artifacts["label_map"]).values())
    assert f.chain.handoffs == [("train", f.run_id)] and f.chain.schedules == []
    assert f.platform.exports_started == [f.run_id]
    last = f.platform.statuses(f.run_id)[-1]
    assert last["status"] == "PREPARING_DATA" and last["metadata"]["import_jsonl"] == record.artifacts["import_jsonl"]

    again = f.etl()  # a duplicate delivery of the same call
    assert again.status == 200 and again.body["outcome"] == "already_done"
    assert f.chain.handoffs == [("train", f.run_id)]  # handed off nothing more
    assert f.platform.exports_started == [f.run_id]  # and exported nothing more


def test_an_export_still_running_is_handed_to_monitor_and_the_stage_released(flow: Callable[..., Flow]) -> None:
    f = flow(ETL_EXPORT_WAIT_S="0")
    f.platform.export_state = ExportState.RUNNING
    answer = f.etl()
    assert answer.status == 202 and answer.body["outcome"] == "waiting" and answer.body["for"] == "export"
    record = f.record()
    assert record.watch is not None
    assert (record.watch.kind, record.watch.next_stage, record.watch.started_by) == ("export", "etl", "etl")
    assert record.watch.ref == record.artifacts["export_task"]
    assert record.stages["etl"].state is rr.StageState.PENDING and record.stages["etl"].owner is None
    assert f.chain.schedules == [("monitor", f.run_id, record.watch.look)]  # one look, scheduled for later
    assert f.chain.delays == [pytest.approx(f.services.settings.monitor.initial_delay_s, abs=1)]
    assert f.chain.handoffs == [] and f.keys("manifest") == []

    f.platform.export_state = None  # the export is done: the look hands the run back to ETL
    assert call(f.services, "monitor", f.run_id, look=record.watch.look).body["outcome"] == "handed_off"
    assert f.chain.handoffs == [("etl", f.run_id)]
    _succeeded(f.etl())
    assert f.platform.exports_started == [f.run_id]  # the same export, read once it was ready
    assert f.chain.handoffs == [("etl", f.run_id), ("train", f.run_id)]


def test_a_failed_export_fails_the_run_with_the_platforms_reason_and_a_re_run_exports_again(
    flow: Callable[..., Flow],
) -> None:
    f = flow()
    f.platform.export_state, f.platform.export_error = ExportState.FAILED, "the export task ran out of quota"
    answer = f.etl()
    assert answer.status == 200 and answer.body["outcome"] == "failed"
    assert "the Labelbox export failed: the export task ran out of quota" in answer.body["error"]
    record = f.record()
    assert record.status is rr.RunStatus.FAILED and record.stages["etl"].state is rr.StageState.FAILED
    assert record.error is not None and record.error.startswith("etl failed: the Labelbox export failed")
    assert "export_task" not in record.artifacts  # forgotten: a re-run must not read the failed export
    last = f.platform.statuses(f.run_id)[-1]
    assert last["status"] == "FAILED" and "ran out of quota" in last["error_message"]
    assert f.chain.handoffs == []

    f.platform.export_state = None
    _succeeded(f.etl())  # a plain re-run of the failed stage: no force needed
    assert f.platform.exports_started == [f.run_id, f.run_id]  # a new export
    assert f.record().status is rr.RunStatus.RUNNING and f.chain.handoffs == [("train", f.run_id)]


def test_a_forced_re_run_starts_a_new_export_and_hands_off_anew(flow: Callable[..., Flow]) -> None:
    f = flow()
    _succeeded(f.etl())
    _succeeded(f.etl(force=True))
    assert f.platform.exports_started == [f.run_id, f.run_id]
    assert f.chain.handoffs == [("train", f.run_id)] * 2  # the forced run hands off again: train decides
    assert len(set(f.chain.keys)) == 2  # under a new name, so a transport that de-duplicates delivers it


# -- bad rows (issue 15) ---------------------------------------------------------------------------------------


def test_the_demo_itself_has_no_skips_and_no_warnings(world: World) -> None:
    quality = _succeeded(world.run()[0])
    assert quality["rows_kept"] == IMAGES and quality["rows_skipped"] == {} and quality["warnings"] == {}
    assert quality["labels_dropped"] == {} and quality["boxes_dropped"] == {}


def test_rows_nobody_labeled_are_staged_for_prediction_and_never_imported(world: World) -> None:
    """Active learning: the model predicts on them so they can be ranked for labeling; the rare-label
    rewrite (a rare label here) keeps them too."""
    rows = world.rows()
    unlabeled = [rows[i]["data_row"]["id"] for i in (0, 5)]
    for i in (0, 5):
        del _run_of(rows[i])["labels"]
    _add_rare_box(rows, 1)
    world.write_rows(rows)
    quality = _succeeded(world.run()[0])
    assert quality["rows_unlabeled"] == 2 and quality["rows_kept"] == IMAGES - 2
    assert quality["rows_skipped"] == {} and quality["labels_dropped"] == {"hexagon": 1}
    manifest = {line["data_row_id"]: line for line in world.lines("manifest")}
    for data_row_id in unlabeled:
        assert manifest[data_row_id]["labeled"] is False and manifest[data_row_id]["boxes"] == []
        assert (world.tmp / "bucket" / manifest[data_row_id]["image_uri"].split("/", 3)[3]).is_file()
    imported = {line["dataItemResourceLabels"]["data_row_id"] for line in world.lines("vertex_import")}
    assert not imported & set(unlabeled)


# -- 8. a corrupt JPEG is counted at ETL ---------------------------------------------------------------------


def test_a_corrupt_jpeg_is_counted_as_not_decodable(world: World) -> None:
    rows = world.rows()
    media = world.folder / rows[0]["data_row"]["row_data"]
    media.write_bytes(media.read_bytes()[:900])
    quality = _succeeded(world.run()[0])
    assert quality["rows_skipped"] == {"image could not be decoded": 1}
    assert quality["examples"]["image could not be decoded"][0].startswith(rows[0]["data_row"]["id"])
    assert rows[0]["data_row"]["id"] not in {line["data_row_id"] for line in world.lines("manifest")}


# -- 11. a duplicate data row id gives one manifest line and one import line ------------------------------------


def test_a_duplicate_data_row_id_is_counted_and_the_first_row_kept(world: World) -> None:
    rows = world.rows()
    first = rows[0]
    assert _run_of(first)["split"] == "training"
    twin = copy.deepcopy(first)
    _run_of(twin)["split"] = "test"
    world.write_rows([*rows, twin])
    quality = _succeeded(world.run(ETL_CHUNK_ROWS="7")[0])  # the twin lands in another block
    assert quality["rows_skipped"] == {"duplicate data row id": 1}
    assert quality["rows_kept"] == IMAGES
    manifest = [line for line in world.lines("manifest") if line["data_row_id"] == first["data_row"]["id"]]
    assert [line["split"] for line in manifest] == ["training"]
    uris = [line["imageGcsUri"] for line in world.lines("vertex_import")]
    assert uris.count(manifest[0]["image_uri"]) == 1


# -- 12. a data row id cannot put an object outside its run's folder --------------------------------------------


def test_a_path_in_a_data_row_id_stays_inside_the_runs_images(world: World) -> None:
    rows = world.rows()
    rows[0]["data_row"]["id"] = "../../etc/passwd"
    rows[1]["data_row"]["id"] = "../../" + world.model_run_id + "-other/images/x"
    world.write_rows(rows)
    _succeeded(world.run()[0])
    bucket = world.tmp / "bucket"
    images = bucket / "runs" / world.model_run_id / "images"
    files = [p for p in bucket.rglob("*") if p.is_file() and not p.name.endswith(".lock~")]
    outside = [p for p in files if images not in p.parents and "etl" not in p.parts]
    assert [p.name for p in outside] == ["run.json"]
    assert len([p for p in files if images in p.parents]) == IMAGES
    manifest = {line["data_row_id"]: line for line in world.lines("manifest")}
    assert manifest["../../etc/passwd"]["image_uri"].startswith(
        f"gs://local-bucket/runs/{world.model_run_id}/images/00000/~"
    )


# -- 13. unusable ids are named -------------------------------------------------------------------------------------


def test_unusable_ids_are_counted_by_what_is_wrong_with_them(world: World) -> None:
    rows = world.rows()
    rows[0]["data_row"]["id"] = "cabc\x00def"
    rows[1]["data_row"]["id"] = "c" * 5000
    world.write_rows(rows)
    quality = _succeeded(world.run()[0])
    assert quality["rows_skipped"] == {"data row id is not printable": 1, "data row id longer than 1024 characters": 1}
    assert all(len(example) < 300 for examples in quality["examples"].values() for example in examples)


# -- 14. the real size wins over the declared size -----------------------------------------------------------------


def test_declared_size_that_differs_from_the_image_is_counted_and_the_real_size_used(world: World) -> None:
    rows = world.rows()
    row = rows[0]
    row["media_attributes"].update(width=1000, height=1000)
    objects = _objects(row)
    outside = copy.deepcopy(objects[0])
    outside["bounding_box"].update(left=500, top=500, width=200, height=200)
    objects.append(outside)
    world.write_rows(rows)
    quality = _succeeded(world.run()[0])
    assert quality["warnings"] == {"declared size differs from the image": 1}
    assert quality["examples"]["declared size differs from the image"] == [
        f"{row['data_row']['id']}: declared 1000x1000, image 160x160"
    ]
    assert quality["boxes_dropped"] == {"box outside the image": 1}
    (line,) = [line for line in world.lines("manifest") if line["data_row_id"] == row["data_row"]["id"]]
    assert (line["width"], line["height"]) == (160, 160)
    assert len(line["boxes"]) == len(objects) - 1


def test_a_row_whose_every_box_is_outside_the_real_image_names_it(world: World) -> None:
    rows = world.rows()
    row = rows[0]
    row["media_attributes"].update(width=1000, height=1000)
    for obj in _objects(row):
        obj["bounding_box"].update(left=600, top=600)
    world.write_rows(rows)
    quality = _succeeded(world.run()[0])
    assert quality["rows_skipped"] == {"row without usable bounding boxes (box outside the image)": 1}


# -- 9 and 15, through the stage: one reason per kind, box reasons kept, examples alongside ---------------------------


def test_reasons_are_kinds_and_the_files_are_examples(world: World) -> None:
    rows = world.rows()
    for row in rows[:3]:
        (world.folder / row["data_row"]["row_data"]).unlink()
    for obj in _objects(rows[3]):
        obj["bounding_box"]["width"] = 0
    world.write_rows(rows)
    quality = _succeeded(world.run()[0])
    assert quality["rows_skipped"] == {
        "image not found": 3,
        "row without usable bounding boxes (box with zero or negative size)": 1,
    }
    assert quality["boxes_dropped"] == {"box with zero or negative size": len(_objects(rows[3]))}
    assert quality["examples"]["image not found"] == [
        f"{row['data_row']['id']}: {row['data_row']['row_data']}" for row in rows[:3]
    ]
    assert world.record()["data_quality"]["examples"] == quality["examples"]


# -- 10 and 16: an unknown split is kept unassigned, warned about, and every reason reaches the status ----------------


def test_unknown_split_and_every_reason_reach_the_model_run_status(world: World) -> None:
    rows = world.rows()
    _run_of(rows[0])["split"] = "VALIDATON"
    for row in rows[1:3]:
        (world.folder / row["data_row"]["row_data"]).unlink()
    rows[3]["data_row"]["id"] = "x\x00"
    world.write_rows(rows)
    quality = _succeeded(world.run()[0])
    assert quality["warnings"] == {"unknown split value": 1}
    assert quality["examples"]["unknown split value"] == [f"{rows[0]['data_row']['id']}: 'VALIDATON'"]
    manifest = {line["data_row_id"]: line for line in world.lines("manifest")}
    assert manifest[rows[0]["data_row"]["id"]]["split"] == "unassigned"
    metadata = world.statuses()[-1]["metadata"]
    assert metadata["skipped: image not found"] == "2"
    assert metadata["skipped: data row id is not printable"] == "1"
    assert metadata["warning: unknown split value"] == "1"


# -- 17. a rare label is dropped (by default), and training goes on ----------------------------------------------------


def _add_rare_box(rows: list[dict[str, Any]], index: int, label: str = "hexagon") -> None:
    obj = {"name": label, "value": label, "annotation_kind": "ImageBoundingBox"}
    obj["bounding_box"] = {"left": 0, "top": 0, "width": 20, "height": 20}
    _objects(rows[index]).append(obj)


def test_a_label_with_one_image_is_dropped_and_the_run_goes_on(world: World) -> None:
    rows = world.rows()
    _add_rare_box(rows, 0)  # an image with other boxes: it keeps them
    alone = rows[1]
    _objects(alone)[:] = []
    _add_rare_box(rows, 1, "pentagon")  # an image whose only box is of a rare label: it leaves
    world.write_rows(rows)
    answer, _services = world.run()
    quality = _succeeded(answer)
    assert quality["labels_dropped"] == {"hexagon": 1, "pentagon": 1}
    assert quality["rows_kept"] == IMAGES - 1
    assert quality["rows_skipped"] == {"row with only dropped labels (under 10 images each)": 1}
    assert quality["boxes_dropped"] == {"box of a dropped label (under 10 images)": 2}
    assert "hexagon" not in quality["per_class_per_split"] and "pentagon" not in quality["boxes_per_class"]
    assert sum(quality["images_per_split"].values()) == IMAGES - 1
    manifest = world.lines("manifest")
    assert len(manifest) == IMAGES - 1 and alone["data_row"]["id"] not in {m["data_row_id"] for m in manifest}
    assert not {b[0] for m in manifest for b in m["boxes"]} & {"hexagon", "pentagon"}
    names = {a["displayName"] for line in world.lines("vertex_import") for a in line["boundingBoxAnnotations"]}
    assert names == {"circle", "square", "triangle"}
    label_map = json.loads(world.record()["artifacts"]["label_map"])
    assert set(label_map.values()) == {"circle", "square", "triangle"}
    metadata = world.statuses()[-1]["metadata"]
    assert "hexagon (1)" in metadata["labels dropped"] and "pentagon (1)" in metadata["labels dropped"]


def test_rare_labels_fail_the_run_when_asked_to(world: World) -> None:
    rows = world.rows()
    _add_rare_box(rows, 0)
    world.write_rows(rows)
    answer, _services = world.run(ETL_RARE_LABELS="fail")
    assert answer.body["outcome"] == "failed"
    assert "too few for: hexagon (1)" in answer.body["error"]
    assert any(b[0] == "hexagon" for m in world.lines("manifest") for b in m["boxes"])  # nothing rewritten


def _radio(row: dict[str, Any]) -> dict[str, Any]:
    return _run_of(row)["labels"][0]["annotations"]["classifications"][0]


def _checklist(row: dict[str, Any]) -> dict[str, Any]:
    return _run_of(row)["labels"][0]["annotations"]["classifications"][1]


def test_single_label_row_of_a_rare_answer_leaves_the_training_set(world: World) -> None:
    rows = world.rows()
    _radio(rows[0])["radio_answer"].update(name="hexagon", value="hexagon")
    world.write_rows(rows)
    quality = _succeeded(world.run("single_label_classification")[0])
    assert quality["labels_dropped"] == {"hexagon": 1}
    assert quality["rows_kept"] == IMAGES - 1
    assert rows[0]["data_row"]["id"] not in {m["data_row_id"] for m in world.lines("manifest")}
    assert {line["classificationAnnotation"]["displayName"] for line in world.lines("vertex_import")} == {
        "circle",
        "square",
        "triangle",
    }


def test_multi_label_row_only_loses_the_rare_label(world: World) -> None:
    rows = world.rows()
    _checklist(rows[0])["checklist_answers"].append({"name": "hexagon", "value": "hexagon"})
    world.write_rows(rows)
    quality = _succeeded(world.run("multi_label_classification")[0])
    assert quality["labels_dropped"] == {"hexagon": 1}
    assert quality["rows_kept"] == IMAGES
    manifest = {m["data_row_id"]: m for m in world.lines("manifest")}
    assert (
        "hexagon" not in manifest[rows[0]["data_row"]["id"]]["labels"] and manifest[rows[0]["data_row"]["id"]]["labels"]
    )
    names = {a["displayName"] for line in world.lines("vertex_import") for a in line["classificationAnnotations"]}
    assert names == {"circle", "square", "triangle"}


def test_dropping_fails_only_when_nothing_trainable_remains(world: World) -> None:
    rows = world.rows()
    for row in rows:  # single-label: every row one answer, but one row another, rare, answer
        _radio(row)["radio_answer"].update(name="circle", value="circle")
    _radio(rows[0])["radio_answer"].update(name="square", value="square")
    world.write_rows(rows)
    answer, _services = world.run("single_label_classification")
    assert answer.body["outcome"] == "failed"
    error = answer.body["error"]
    assert "square (1)" in error and "at least two different answers" in error
    assert world.statuses()[-1]["status"] == "FAILED"
    assert any("labels dropped" in (s.get("metadata") or {}) for s in world.statuses())
