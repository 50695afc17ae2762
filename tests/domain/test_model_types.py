"""The model-type table: what `register` refuses, the conversions' defaults, and `lookup` of a type this
process has not registered."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from shared.domain.examples import Example, PixelBox, Split
from shared.domain.model_types import (
    MODEL_TYPES,
    Backend,
    ConversionFailed,
    ModelType,
    Task,
    UnknownModelType,
    lookup,
    offered,
    register,
)
from shared.domain.predictions import PredictedBox, VertexPrediction

EXAMPLE = Example("row1", "gs://b/a.jpg", "image/jpeg", 100, 80, Split.TRAINING, boxes=(PixelBox("cat", 1, 2, 30, 40),))
PREDICTION = VertexPrediction("gs://b/a.jpg", "image/jpeg", boxes=(PredictedBox("cat", 0.9, 0.1, 0.5, 0.1, 0.5),))
CUSTOM = {Backend.VERTEX: Backend.VERTEX_CUSTOM, Backend.LOCAL: Backend.LOCAL}


def detector(name: str = "my_detector", **hooks: Any) -> ModelType:
    return ModelType(name, Task.OBJECT_DETECTION, CUSTOM, "a test's detector", **hooks)


def test_the_conversions_default_to_the_example_and_prediction_as_they_are() -> None:
    plain = detector()
    assert plain.training_example(EXAMPLE) is EXAMPLE and plain.prediction(PREDICTION) is PREDICTION
    assert plain.convert_example(EXAMPLE) is EXAMPLE and plain.convert_prediction(PREDICTION) is PREDICTION
    for built_in in MODEL_TYPES.values():
        assert built_in.convert_example(EXAMPLE) is EXAMPLE
        assert built_in.convert_prediction(PREDICTION) is PREDICTION


def test_a_registered_type_is_offered_where_it_has_a_backend_and_found_by_name(
    model_type_registry: dict[str, ModelType],
) -> None:
    mine = register(detector())
    assert lookup("my_detector") is mine
    assert offered(Backend.LOCAL)["my_detector"] is mine and offered(Backend.VERTEX)["my_detector"] is mine
    local_only = register(replace(detector("my_local_detector"), trainers={Backend.LOCAL: Backend.LOCAL}))
    assert "my_local_detector" in offered(Backend.LOCAL) and "my_local_detector" not in offered(Backend.VERTEX)
    assert local_only.trainer(Backend.LOCAL) is Backend.LOCAL


def test_register_refuses_a_name_already_registered(model_type_registry: dict[str, ModelType]) -> None:
    with pytest.raises(ValueError, match="model type 'local_detector' is already registered"):
        register(detector("local_detector"))
    register(detector())
    with pytest.raises(ValueError, match="'my_detector' is already registered"):
        register(detector())
    assert MODEL_TYPES["local_detector"].trainers == {Backend.LOCAL: Backend.LOCAL}  # the first one stays


@pytest.mark.parametrize(
    "trainers",
    [
        {},  # offered nowhere
        {"gpu_cluster": Backend.LOCAL},  # not a deployment kind
        {Backend.VERTEX_CUSTOM: Backend.VERTEX_CUSTOM},  # a backend, not a deployment kind
        {Backend.LOCAL: Backend.VERTEX},  # a local deployment has no Vertex AI
        {Backend.VERTEX: Backend.LOCAL},  # a cloud deployment has no local engine
        {Backend.LOCAL: "tpu"},
        [Backend.LOCAL],
    ],
)
def test_register_refuses_a_trainers_map_the_chain_could_not_run(
    trainers: Any, model_type_registry: dict[str, ModelType]
) -> None:
    with pytest.raises(ValueError, match="'bad_detector': trainers must map one or more deployment kinds"):
        register(replace(detector("bad_detector"), trainers=trainers))
    assert "bad_detector" not in MODEL_TYPES


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": ""}, "use 1 to 64 letters"),
        ({"name": "my detector"}, "use 1 to 64 letters"),
        ({"name": "x" * 65}, "use 1 to 64 letters"),
        ({"task": "object_detection_v2"}, "task must be one of Task"),
        ({"training_example": None}, "training_example must be a function"),
        ({"prediction": "drop small boxes"}, "prediction must be a function"),
    ],
)
def test_register_refuses_a_bad_name_task_or_conversion(
    change: dict[str, Any], message: str, model_type_registry: dict[str, ModelType]
) -> None:
    before = dict(MODEL_TYPES)
    with pytest.raises(ValueError, match=message):
        register(replace(detector(), **change))
    assert before == MODEL_TYPES


def test_a_type_this_process_has_not_registered_is_looked_up_with_how_to_register_it() -> None:
    with pytest.raises(UnknownModelType) as caught:
        lookup("someone_elses_detector")
    message = str(caught.value)
    assert message.startswith("model type 'someone_elses_detector' is not registered in this process")
    assert "CHAIN_MODEL_TYPE_MODULES" in message and "Add your own model type" in message


def test_a_conversion_that_raises_or_returns_another_row_fails_naming_the_type_and_the_row() -> None:
    def broken(example: Example) -> Example:
        raise ZeroDivisionError("division by zero")

    with pytest.raises(ConversionFailed, match=r"'my_detector': training_example failed on data row row1: ZeroDiv"):
        detector(training_example=broken).convert_example(EXAMPLE)
    with pytest.raises(ConversionFailed, match="returned data row 'row2' for data row row1"):
        detector(training_example=lambda e: replace(e, data_row_id="row2")).convert_example(EXAMPLE)
    with pytest.raises(ConversionFailed, match="training_example returned NoneType"):
        detector(training_example=lambda e: None).convert_example(EXAMPLE)
    with pytest.raises(ConversionFailed, match=r"prediction returned another image for image gs://b/a\.jpg"):
        detector(prediction=lambda p: replace(p, content_uri="gs://b/other.jpg")).convert_prediction(PREDICTION)
    with pytest.raises(ConversionFailed, match=r"prediction failed on image gs://b/a\.jpg: KeyError"):
        detector(prediction=lambda p: {}["x"]).convert_prediction(PREDICTION)


def test_a_cloud_deployment_offers_automl_and_custom_a_local_one_everything_on_the_engine() -> None:
    cloud = offered(Backend.VERTEX)
    assert {m.trainer(Backend.VERTEX) for m in cloud.values()} == {Backend.VERTEX, Backend.VERTEX_CUSTOM}
    assert cloud["vertex_custom_detector"].trainer(Backend.VERTEX) is Backend.VERTEX_CUSTOM
    assert not any(name.startswith("local_") for name in cloud)
    assert set(offered(Backend.LOCAL)) == set(MODEL_TYPES)
    assert {m.task for m in cloud.values() if m.trainer(Backend.VERTEX) is Backend.VERTEX_CUSTOM} == set(Task)


def test_what_a_backend_cannot_train_here_is_not_offered() -> None:
    without = offered(Backend.VERTEX, {Backend.VERTEX_CUSTOM: set(Task), Backend.VERTEX: {Task.OBJECT_DETECTION}})
    assert set(without) == {"vertex_automl_single_label_classification", "vertex_automl_multi_label_classification"}
