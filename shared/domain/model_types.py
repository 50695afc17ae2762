"""The model types a user can pick in Labelbox, and what each one trains.

A model type names a *task* (object detection, single- or multi-label classification). Which backend
trains it is a property of the deployment, not of the name: the cloud deployment trains on Vertex AI
AutoML, the local mode on the local engine. The `local_*` names exist so that a local deployment
offers the engine under its own name too.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum


class Task(StrEnum):
    OBJECT_DETECTION = "object_detection"
    SINGLE_LABEL_CLASSIFICATION = "single_label_classification"
    MULTI_LABEL_CLASSIFICATION = "multi_label_classification"

    @property
    def is_classification(self) -> bool:
        return self is not Task.OBJECT_DETECTION


class Backend(StrEnum):
    VERTEX = "vertex"
    LOCAL = "local"


@dataclass(frozen=True)
class ModelType:
    name: str
    task: Task
    backends: frozenset[Backend]
    description: str


_BOTH = frozenset({Backend.VERTEX, Backend.LOCAL})
_LOCAL = frozenset({Backend.LOCAL})

MODEL_TYPES: dict[str, ModelType] = {
    m.name: m
    for m in (
        ModelType(
            "vertex_automl_object_detection",
            Task.OBJECT_DETECTION,
            _BOTH,
            "Vertex AI AutoML image object detection (bounding boxes)",
        ),
        ModelType(
            "vertex_automl_single_label_classification",
            Task.SINGLE_LABEL_CLASSIFICATION,
            _BOTH,
            "Vertex AI AutoML image classification, one label per image (radio)",
        ),
        ModelType(
            "vertex_automl_multi_label_classification",
            Task.MULTI_LABEL_CLASSIFICATION,
            _BOTH,
            "Vertex AI AutoML image classification, several labels per image (checklist)",
        ),
        ModelType("local_detector", Task.OBJECT_DETECTION, _LOCAL, "Local detector engine (PyTorch)"),
        ModelType(
            "local_single_label_classifier",
            Task.SINGLE_LABEL_CLASSIFICATION,
            _LOCAL,
            "Local engine, single-label image classifier (PyTorch)",
        ),
        ModelType(
            "local_multi_label_classifier",
            Task.MULTI_LABEL_CLASSIFICATION,
            _LOCAL,
            "Local engine, multi-label image classifier (PyTorch)",
        ),
    )
}


def offered(backend: Backend, unavailable: Collection[Task] = ()) -> dict[str, ModelType]:
    """The model types a deployment whose training backend is `backend` can train (`unavailable`: the
    tasks its configuration rules out, e.g. a budget outside Vertex's range for that task)."""
    return {name: m for name, m in MODEL_TYPES.items() if backend in m.backends and m.task not in unavailable}
