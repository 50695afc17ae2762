"""The model types a user can pick in Labelbox: the one table of what each trains and with what.

A model type names a *task* (object detection, single- or multi-label classification) and, for each kind
of deployment (`CHAIN_BACKEND`: `vertex` in Google Cloud, `local` on one machine), the backend that
trains it there. A cloud deployment trains the `vertex_automl_*` types on Vertex AI AutoML and the
`vertex_custom_*` types with the project's own engine as a Vertex AI CustomJob; a local deployment
trains every type with the local engine (the same engine the custom jobs run), so a run's model type
and config can be tried on one machine first. A type a deployment has no backend for is not offered
there (`GET /models` does not list it, a webhook naming it is refused).

Adding a model type is adding one `ModelType` to this table, or calling `register` from your own
module (README, "Add your own model type").
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
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
    """What trains a run. `vertex` and `local` are also the deployment kinds `CHAIN_BACKEND` names."""

    VERTEX = "vertex"  # Vertex AI AutoML
    VERTEX_CUSTOM = "vertex_custom"  # the project's engine as a Vertex AI CustomJob (cloud GPUs)
    LOCAL = "local"  # the project's engine on this machine

    @property
    def is_engine(self) -> bool:
        """Trained by the project's own engine (here or on Vertex), so the engine's settings apply."""
        return self is not Backend.VERTEX


DEPLOYMENTS = (Backend.VERTEX, Backend.LOCAL)  # the values CHAIN_BACKEND takes


@dataclass(frozen=True)
class ModelType:
    name: str
    task: Task
    trainers: Mapping[Backend, Backend]  # deployment kind -> the backend that trains this type there
    description: str

    def trainer(self, deployment: Backend) -> Backend:
        """The backend that trains this type in a `deployment`; KeyError where it is not offered."""
        return self.trainers[deployment]


_AUTOML = {Backend.VERTEX: Backend.VERTEX, Backend.LOCAL: Backend.LOCAL}
_CUSTOM = {Backend.VERTEX: Backend.VERTEX_CUSTOM, Backend.LOCAL: Backend.LOCAL}
_LOCAL = {Backend.LOCAL: Backend.LOCAL}

MODEL_TYPES: dict[str, ModelType] = {}


def register(model_type: ModelType) -> ModelType:
    """Adds a model type to the table; a name already there is refused, so two modules cannot both own it."""
    if model_type.name in MODEL_TYPES:
        raise ValueError(f"model type {model_type.name!r} is already registered")
    unknown = set(model_type.trainers) - set(DEPLOYMENTS)
    if unknown or not model_type.trainers:
        raise ValueError(
            f"model type {model_type.name!r}: trainers must map some of {[d.value for d in DEPLOYMENTS]} to a backend"
        )
    MODEL_TYPES[model_type.name] = model_type
    return model_type


for _type in (
    ModelType(
        "vertex_automl_object_detection",
        Task.OBJECT_DETECTION,
        _AUTOML,
        "Vertex AI AutoML image object detection (bounding boxes)",
    ),
    ModelType(
        "vertex_automl_single_label_classification",
        Task.SINGLE_LABEL_CLASSIFICATION,
        _AUTOML,
        "Vertex AI AutoML image classification, one label per image (radio)",
    ),
    ModelType(
        "vertex_automl_multi_label_classification",
        Task.MULTI_LABEL_CLASSIFICATION,
        _AUTOML,
        "Vertex AI AutoML image classification, several labels per image (checklist)",
    ),
    ModelType(
        "vertex_custom_detector",
        Task.OBJECT_DETECTION,
        _CUSTOM,
        "The project's detector engine (PyTorch), trained as a Vertex AI custom job on a cloud GPU",
    ),
    ModelType(
        "vertex_custom_single_label_classifier",
        Task.SINGLE_LABEL_CLASSIFICATION,
        _CUSTOM,
        "The project's single-label image classifier (PyTorch), trained as a Vertex AI custom job",
    ),
    ModelType(
        "vertex_custom_multi_label_classifier",
        Task.MULTI_LABEL_CLASSIFICATION,
        _CUSTOM,
        "The project's multi-label image classifier (PyTorch), trained as a Vertex AI custom job",
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
):
    register(_type)


def offered(deployment: Backend, unavailable: Mapping[Backend, Collection[Task]] | None = None) -> dict[str, ModelType]:
    """The model types a `deployment` can train. `unavailable`: per backend, the tasks this deployment's
    configuration rules out (a budget outside AutoML's range, no engine package uploaded)."""
    ruled_out = unavailable or {}
    return {
        name: m
        for name, m in MODEL_TYPES.items()
        if deployment in m.trainers and m.task not in ruled_out.get(m.trainer(deployment), ())
    }
