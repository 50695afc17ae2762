"""The one table of model types: what each trains, where, and what registering one refuses."""

from __future__ import annotations

import pytest

from shared.domain.model_types import MODEL_TYPES, Backend, ModelType, Task, offered, register


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


def test_register_refuses_a_name_already_there_and_a_trainer_map_without_a_deployment() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register(ModelType("local_detector", Task.OBJECT_DETECTION, {Backend.LOCAL: Backend.LOCAL}, "again"))
    with pytest.raises(ValueError, match="trainers must map"):
        register(ModelType("odd", Task.OBJECT_DETECTION, {Backend.VERTEX_CUSTOM: Backend.LOCAL}, "no such deployment"))
    assert "odd" not in MODEL_TYPES
