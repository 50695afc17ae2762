"""`label_next_slice` at ETL, in-process on the demo model run: the slice's rows are added to the model
run before its export, once, come out of it as unlabeled manifest rows and are predicted on; a slice
that does not exist fails the run at ETL, naming what to change, before anything is exported. The last
test runs the same ETL on the Labelbox adapter, through the SDK against the fake Labelbox's Catalog."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from shared.dataset.manifest import read_manifest
from shared.domain.run_paths import RunPaths
from shared.platform.labelbox_adapter import LabelboxPlatform
from shared.platform.port import ExportState
from shared.secret import Secret
from tests.demo_run import DemoRun
from tests.demo_slice import write_demo_slice
from tests.fakes import RecordingChain, RecordingModelRuns
from tests.platform.fake_catalog import running_fake_catalog
from tests.stages.test_inference import flow_up_to_inference
from tests.stages.world import call, create_run, services_for

SLICE = "clslice0000000000000000001"


class SliceRecordingModelRuns(RecordingModelRuns):
    """Also records every slice added (model run, slice)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.slices_added: list[tuple[str, str]] = []

    def add_rows_from_slice(
        self, model_run_id: str, slice_id: str, *, progress: Callable[[int], None] | None = None
    ) -> int:
        self.slices_added.append((model_run_id, slice_id))
        return super().add_rows_from_slice(model_run_id, slice_id, progress=progress)


def _config(demo: DemoRun, train: dict[str, Any]) -> None:
    (demo.folder / "config.json").write_text(json.dumps({"train": train}))


def _lines(folder: Path, kind: str) -> Iterator[dict[str, Any]]:
    for path in sorted(folder.glob(f"{kind}-*.jsonl")):
        yield from (json.loads(line) for line in path.read_text().splitlines() if line)


def test_a_slice_in_the_config_is_exported_unlabeled_and_predicted(tmp_path: Path, demo: DemoRun) -> None:
    ids = write_demo_slice(demo.root.parent / "slices", SLICE, images=4)
    _config(demo, {"label_next_slice": SLICE})

    f = flow_up_to_inference(tmp_path, demo)  # ETL succeeded, the model trained

    record = f.record()
    assert record.settings["label_next_slice"] == SLICE and "label_next_slice" in record.settings["from_config"]
    assert json.loads(record.artifacts["label_next_slice"]) == {"slice": SLICE, "rows": 4, "restarts": 0}
    assert [e["detail"] for e in record.events if e["event"] == "slice_rows_added"] == [{"slice": SLICE, "rows": 4}]
    assert record.data_quality["rows_from_slice"] == 4 and record.data_quality["rows_unlabeled"] == 4
    manifest = {row.data_row_id: row for row in read_manifest(f.services.store, f.run_id)}
    assert len(manifest) == 24
    for data_row_id in ids:
        row = manifest[data_row_id]
        assert not row.labeled and row.split.value == "unassigned" and row.boxes == ()
        assert f.services.store.exists(f.services.store.key_from_uri(row.image_uri))
    etl_folder = tmp_path / "bucket" / "runs" / f.run_id / "etl"
    imported = {line["dataItemResourceLabels"]["data_row_id"] for line in _lines(etl_folder, "vertex_import")}
    assert not imported & set(ids)

    assert f.inference().body["outcome"] == "waiting"  # the batch prediction job started
    instances = f.services.store.read(RunPaths(f.run_id).instances).decode()
    assert all(manifest[i].image_uri in instances for i in ids)
    assert f.record().data_quality["rows_to_rank"] >= 4


def test_the_slice_is_added_once_across_re_deliveries_and_again_when_forced(tmp_path: Path, demo: DemoRun) -> None:
    write_demo_slice(demo.root.parent / "slices", SLICE, images=2)
    platform, chain = SliceRecordingModelRuns(demo.root), RecordingChain()
    services = services_for(tmp_path, platform, chain=chain, LABEL_NEXT_SLICE_ID=SLICE, ETL_EXPORT_WAIT_S="0")
    create_run(services, demo.model_run_id, model_id=demo.model_id)
    platform.export_state = ExportState.FAILED  # the first export fails: a re-run exports again
    assert call(services, "etl", demo.model_run_id).body["outcome"] == "failed"
    platform.export_state = None
    answer = call(services, "etl", demo.model_run_id)  # a plain re-run of the failed stage
    assert answer.body["outcome"] == "succeeded", answer.body
    assert platform.exports_started == [demo.model_run_id] * 2
    assert platform.slices_added == [(demo.model_run_id, SLICE)]  # not again for the second export

    assert call(services, "etl", demo.model_run_id, force=True).body["outcome"] == "succeeded"
    assert platform.slices_added == [(demo.model_run_id, SLICE)] * 2  # a slice is a saved query: asked again
    assert len(demo.rows()) == 22  # and its rows are in the export once


def test_a_slice_that_does_not_exist_fails_the_run_at_etl_before_any_export(tmp_path: Path, demo: DemoRun) -> None:
    _config(demo, {"label_next_slice": "clnosuchslice"})
    platform, chain = SliceRecordingModelRuns(demo.root), RecordingChain()
    services = services_for(tmp_path, platform, chain=chain)
    create_run(services, demo.model_run_id, model_id=demo.model_id)

    answer = call(services, "etl", demo.model_run_id)

    assert answer.body["outcome"] == "failed"
    assert answer.body["error"].startswith(
        "label_next_slice clnosuchslice does not exist: fix train.label_next_slice in the model run's config "
        "(or remove it) and click Train model again; no Catalog slice clnosuchslice: "
    )
    assert platform.exports_started == [] and chain.handoffs == []
    assert not list(services.store.list(f"runs/{demo.model_run_id}/etl/"))
    last = platform.statuses(demo.model_run_id)[-1]
    assert last["status"] == "FAILED" and last["error_message"].startswith("etl failed: label_next_slice clnosuchslice")
    assert len(demo.rows()) == 20


def test_a_deployment_slice_that_does_not_exist_names_the_variable(tmp_path: Path, demo: DemoRun) -> None:
    platform = SliceRecordingModelRuns(demo.root)
    services = services_for(tmp_path, platform, chain=RecordingChain(), LABEL_NEXT_SLICE_ID="clnosuchslice")
    create_run(services, demo.model_run_id, model_id=demo.model_id)
    answer = call(services, "etl", demo.model_run_id)
    assert answer.body["error"].startswith("label_next_slice clnosuchslice does not exist: fix LABEL_NEXT_SLICE_ID")
    assert platform.exports_started == []


def test_a_config_that_turns_the_deployments_slice_off_adds_nothing(tmp_path: Path, demo: DemoRun) -> None:
    _config(demo, {"label_next_slice": None})
    platform = SliceRecordingModelRuns(demo.root)
    services = services_for(tmp_path, platform, chain=RecordingChain(), LABEL_NEXT_SLICE_ID="clnosuchslice")
    create_run(services, demo.model_run_id, model_id=demo.model_id)
    answer = call(services, "etl", demo.model_run_id)
    assert answer.body["outcome"] == "succeeded" and "rows_from_slice" not in answer.body["data_quality"]
    assert platform.slices_added == []


def test_on_labelbox_the_slice_is_added_through_the_sdk_before_the_export_that_brings_it(
    tmp_path: Path, demo: DemoRun
) -> None:
    slices = tmp_path / "slice-files"
    ids = write_demo_slice(slices, SLICE, images=3)
    with running_fake_catalog([], model_run_id=demo.model_run_id, model_id=demo.model_id) as fake:

        def served(row: dict[str, Any], folder: Path) -> dict[str, Any]:
            name = row["data_row"]["row_data"]
            url = fake.add_media(name.replace("/", "_"), (folder / name).read_bytes())
            return {**row, "data_row": {**row["data_row"], "row_data": url}}

        fake.rows = [served(r, demo.folder) for r in demo.rows()]
        catalog = [served(json.loads(line), slices) for line in (slices / f"{SLICE}.ndjson").read_text().splitlines()]
        fake.catalog = {r["data_row"]["id"]: r for r in catalog}
        fake.slices = {SLICE: ids}
        fake.training_metadata = {"train": {"label_next_slice": SLICE}}
        platform = LabelboxPlatform(Secret(fake.api_key), endpoint=fake.endpoint, rest_endpoint=fake.rest_endpoint)
        services = services_for(tmp_path, platform, chain=RecordingChain())
        create_run(services, demo.model_run_id, model_id=demo.model_id)

        answer = call(services, "etl", demo.model_run_id)

        assert answer.body["outcome"] == "succeeded", answer.body
        names = fake.operation_names()
        assert names.index("createMEAModelRunDataRowRegistrationTaskPyApi") < names.index(
            "exportDataRowsInModelRunPyApi"
        )
        (upsert,) = fake.named("createMEAModelRunDataRowRegistrationTaskPyApi")
        assert upsert.variables["dataRowIds"] == ids
        assert answer.body["data_quality"]["rows_from_slice"] == 3
        manifest = {row.data_row_id: row for row in read_manifest(services.store, demo.model_run_id)}
        assert len(manifest) == 23 and all(not manifest[i].labeled for i in ids)
