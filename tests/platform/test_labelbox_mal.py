"""Model-assisted labeling on Labelbox: the adapter's `send_to_project`, the real SDK 7.17 against the
fake Labelbox, asserting the GraphQL operations it sends and what the fake made of them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from shared.platform.labelbox_adapter import LabelboxPlatform
from shared.platform.port import PlatformError, ProjectRefused
from tests.platform.fake_labelbox import FakeLabelbox, feature_schema_id, ontology_of_rows, running_fake_labelbox
from tests.platform.test_labelbox_adapter import MODEL_ID, MODEL_RUN_ID, ROWS, platform_for

PROJECT = "cprojectlabel0000000000001"
IDS = [r["data_row"]["id"] for r in ROWS]
PROJECT_ONTOLOGY = ontology_of_rows(ROWS, salt="project")  # the same names, the project's own schema ids
MODEL_CAR, PROJECT_CAR = feature_schema_id("model/rectangle", "car"), feature_schema_id("project/rectangle", "car")
LABELING_QUEUE = f"cqueue{PROJECT[-12:]}label0"


def box(data_row_id: str, index: int, name: str = "car") -> dict[str, Any]:
    return {
        "uuid": f"4f0e8d1c-6c2e-4a4b-9d86-6b7a3e1f0a{index:02d}",
        "dataRow": {"id": data_row_id},
        "name": name,
        "confidence": 0.8,
        "bbox": {"top": 1.0 + index, "left": 2.0, "height": 3.0, "width": 4.0},
    }


def metric(data_row_id: str) -> dict[str, Any]:
    return {
        "dataRow": {"id": data_row_id},
        "metricName": "al_entropy",
        "metricValue": 0.4,
        "featureName": "car",
        "aggregation": "ARITHMETIC_MEAN",
    }


def with_projects(**behaviour: Any) -> dict[str, Any]:
    projects = {PROJECT: {"ontology": PROJECT_ONTOLOGY, "data_row_ids": [IDS[1]]}}
    return {"projects": projects, **behaviour}


@pytest.fixture
def fake(request: pytest.FixtureRequest) -> Iterator[FakeLabelbox]:
    behaviour = with_projects(**getattr(request, "param", {}))
    with running_fake_labelbox(ROWS, model_run_id=MODEL_RUN_ID, model_id=MODEL_ID, **behaviour) as running:
        yield running


def predicted(fake: FakeLabelbox) -> LabelboxPlatform:
    """The platform, with the model run's predictions on rows 1-3 imported (as the inference shards do)."""
    platform = platform_for(fake)
    rows = [box(IDS[1], 1), box(IDS[2], 2), box(IDS[3], 3), metric(IDS[2]), metric(IDS[3])]
    assert platform.upload_predictions(MODEL_RUN_ID, "lbchain-run-r0-s00000-000", rows).accepted == len(rows)
    return platform


def send(platform: LabelboxPlatform, ids: list[str] = IDS[1:4], **options: Any) -> Any:
    options = {"batch_name": "lbchain-run-r0-label-next", "priority": 2, "features": ["car"], **options}
    return platform.send_to_project(MODEL_RUN_ID, PROJECT, ids, **options)


def test_the_rows_go_as_one_batch_with_the_model_runs_predictions_as_pre_labels(fake: FakeLabelbox) -> None:
    platform = predicted(fake)
    start = len(fake.operations)
    result = send(platform)

    assert fake.operation_names()[start:] == [
        "GetProjectPyApi",
        "GetProjectBatchesPyApi",  # a batch of this name: then it was sent
        "GetModelPyApi",  # the model's ontology ...
        "GetOntologyPyApi",
        "GetProjectOntologyPyApi",  # ... and the project's, matched by name
        "GetProjectTaskQueuesPyApi",  # its initial labeling queue
        "exportDataRowsInProjectPyApi",  # which of the rows it has already
        "GetUserPyApi",
        "GetUserCreatedTasksPyApi",
        "GetUserCreatedTasksPyApi",
        "GetExportMetadataHeaderPyApi",
        "GetExportMetadataHeaderPyApi",
        "GetExportFileFromOffsetPyApi",
        "SendToAnnotateFromMeaPyApi",  # the batch and the pre-labels, one task
        "GetUserPyApi",
        "GetUserCreatedTasksPyApi",
        "GetProjectBatchesPyApi",  # the batch's id and size
    ]
    (export,) = fake.named("exportDataRowsInProjectPyApi")
    assert export.variables["input"]["filters"] == {
        "projectId": PROJECT,
        "searchQuery": {"scope": None, "query": [{"ids": IDS[1:4], "operator": "is", "type": "data_row_id"}]},
    }
    (sent,) = fake.named("SendToAnnotateFromMeaPyApi")
    assert sent.variables == {
        "input": {
            "destinationProjectId": PROJECT,
            "batchInput": {"batchName": "lbchain-run-r0-label-next", "batchPriority": 2},
            "destinationTaskQueue": {"type": "id", "value": LABELING_QUEUE},
            "excludeDataRowsInProject": True,
            "annotationsInput": None,
            "predictionsInput": {
                "featureSchemaIdsMapping": {MODEL_CAR: PROJECT_CAR},
                "modelRunId": MODEL_RUN_ID,
                "minConfidence": 0,
                "maxConfidence": 1,
            },
            "conflictLabelsResolutionStrategy": "KEEP_EXISTING",
            "searchQuery": [{"type": "data_row_id", "operator": "is", "ids": IDS[2:4]}],  # row 1 is there
            "sourceModelRunId": MODEL_RUN_ID,
        }
    }
    project = fake.projects[PROJECT]
    (batch,) = project.batches
    assert (batch.name, batch.priority, batch.data_row_ids) == ("lbchain-run-r0-label-next", 2, IDS[2:4])
    (mal,) = project.mal_imports
    assert mal.rows == [  # the boxes of the batch's rows as the project's "car", no confidence, no metric
        {
            "uuid": box(IDS[i], i)["uuid"],
            "dataRow": {"id": IDS[i]},
            "bbox": box(IDS[i], i)["bbox"],
            "schemaId": PROJECT_CAR,
        }
        for i in (2, 3)
    ]
    assert result.sent == 2 and result.skipped_in_project == 1 and not result.already_sent
    assert result.batch_id == batch.id and result.import_id == fake.send_tasks[0].id
    assert result.unmatched_features == ()


def test_a_second_send_makes_no_second_batch_and_no_second_import(fake: FakeLabelbox) -> None:
    platform = predicted(fake)
    first = send(platform)
    start = len(fake.operations)
    again = send(platform)
    assert fake.operation_names()[start:] == ["GetProjectPyApi", "GetProjectBatchesPyApi"]
    assert again.already_sent and (again.sent, again.skipped_in_project, again.batch_id) == (2, 1, first.batch_id)
    assert len(fake.named("SendToAnnotateFromMeaPyApi")) == 1
    assert len(fake.projects[PROJECT].batches) == 1 and len(fake.projects[PROJECT].mal_imports) == 1


def test_a_batch_of_the_name_made_meanwhile_counts_as_sent(fake: FakeLabelbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another delivery made the batch between the look and the send: Labelbox refuses the name."""
    platform = predicted(fake)
    send(platform)
    looks: list[str] = []
    real = LabelboxPlatform._batch_named

    def first_look_misses(self: LabelboxPlatform, project: Any, name: str) -> Any:
        looks.append(name)
        return None if len(looks) == 1 else real(self, project, name)

    monkeypatch.setattr(LabelboxPlatform, "_batch_named", first_look_misses)
    again = send(platform, IDS[4:6])  # rows the project lacks: the send goes out, and is refused
    assert again.already_sent and (again.sent, again.skipped_in_project) == (2, 0)
    assert len(fake.named("SendToAnnotateFromMeaPyApi")) == 2 and len(fake.projects[PROJECT].batches) == 1


def test_rows_all_in_the_project_already_are_counted_and_nothing_is_sent(fake: FakeLabelbox) -> None:
    platform = predicted(fake)
    fake.projects[PROJECT].data_row_ids = list(IDS)
    result = send(platform)
    assert (result.sent, result.skipped_in_project, result.batch_id) == (0, 3, None)
    assert not fake.named("SendToAnnotateFromMeaPyApi") and not fake.projects[PROJECT].batches


@pytest.mark.parametrize(
    ("project", "because"),
    [("cmissingproject00000000001", "ResourceNotFoundError"), ("cforeign", "AuthorizationError")],
)
def test_a_missing_or_foreign_project_is_refused_with_a_clear_message(
    project: str, because: str, request: pytest.FixtureRequest
) -> None:
    with running_fake_labelbox(
        ROWS, model_run_id=MODEL_RUN_ID, model_id=MODEL_ID, **with_projects(foreign_projects=["cforeign"])
    ) as fake:
        with pytest.raises(ProjectRefused) as caught:
            platform_for(fake).send_to_project(MODEL_RUN_ID, project, IDS[1:3], batch_name="b", priority=5)
        assert str(caught.value) == (
            f"Labelbox has no labeling project {project} visible to this API key ({because}); check the project "
            "id and that the key's organization owns it"
        )
        assert not fake.named("SendToAnnotateFromMeaPyApi")


@pytest.mark.parametrize(
    "fake", [{"projects": {PROJECT: {"ontology": {"tools": [{"tool": "rectangle", "name": "truck"}]}}}}], indirect=True
)
def test_an_ontology_with_none_of_the_models_features_is_refused_naming_them(fake: FakeLabelbox) -> None:
    with pytest.raises(ProjectRefused) as caught:
        send(predicted(fake))
    assert str(caught.value) == (
        f"the ontology of labeling project {PROJECT} has none of the model's features (car (rectangle)): add them "
        "to the project's ontology (same names and kinds), or send to another project"
    )
    assert not fake.named("SendToAnnotateFromMeaPyApi") and not fake.named("exportDataRowsInProjectPyApi")


def test_features_the_project_lacks_are_named_and_not_pre_labeled(fake: FakeLabelbox) -> None:
    platform = predicted(fake)
    result = send(platform, features=["car", "largest_shape", "bus"])
    assert result.unmatched_features == ("bus",)  # in neither ontology: known by name only
    (sent,) = fake.named("SendToAnnotateFromMeaPyApi")
    mapping = sent.variables["input"]["predictionsInput"]["featureSchemaIdsMapping"]
    assert mapping == {  # the question and its options too
        MODEL_CAR: PROJECT_CAR,
        feature_schema_id("model/radio", "largest_shape"): feature_schema_id("project/radio", "largest_shape"),
        feature_schema_id("model/largest_shape/option", "car"): feature_schema_id(
            "project/largest_shape/option", "car"
        ),
    }


@pytest.mark.parametrize("fake", [{"send_failure": "Project is archived"}], indirect=True)
def test_a_failed_send_task_is_a_platform_error_with_labelboxs_reason(fake: FakeLabelbox) -> None:
    with pytest.raises(PlatformError, match=r"ended FAILED: Project is archived") as caught:
        send(predicted(fake))
    assert not isinstance(caught.value, ProjectRefused)


@pytest.mark.parametrize(
    "fake",
    [
        {
            "projects": {
                PROJECT: {
                    "ontology": PROJECT_ONTOLOGY,
                    "queues": [{"id": "cq", "name": "Done", "queueType": "TERMINAL"}],
                }
            }
        }
    ],
    indirect=True,
)
def test_a_project_without_a_labeling_queue_is_refused(fake: FakeLabelbox) -> None:
    with pytest.raises(ProjectRefused, match="has no initial labeling task queue"):
        send(predicted(fake))


@pytest.mark.parametrize("fake", [{"send_in_progress_polls": 5}], indirect=True)
def test_a_send_task_still_running_at_the_timeout_says_it_may_still_finish(fake: FakeLabelbox) -> None:
    platform = predicted(fake)
    platform.send_timeout_s = 0.5  # one look, one wait of the SDK's minimum 2 s
    with pytest.raises(PlatformError, match=r"did not finish within 0.5 s; it may still finish"):
        send(platform)
    assert len(fake.projects[PROJECT].batches) == 1  # made by then: the next delivery finds it by name
    assert send(platform).already_sent
