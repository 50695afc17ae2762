"""The model types a user can pick in Labelbox: the one table of what each trains and with what.

A model type names a *task* (object detection, single- or multi-label classification) and, for each kind
of deployment (`CHAIN_BACKEND`: `vertex` in Google Cloud, `local` on one machine), the backend that
trains it there. A cloud deployment trains the `vertex_automl_*` types on Vertex AI AutoML and the
`vertex_custom_*` types with the project's own engine as a Vertex AI CustomJob; a local deployment
trains every type with the local engine (the same engine the custom jobs run), so a run's model type
and engine settings can be tried on one machine first. A type a deployment has no backend for is not offered
there (`GET /models` does not list it, a webhook naming it is refused).

A model type may also carry two pure conversions, both unchanged by default: `training_example`, applied
by ETL to every labeled example before its Vertex import line and manifest line are written (so the
model trains, and is scored, on what it returns), and `prediction`, applied by inference to every
batch-prediction line before it becomes Labelbox predictions, metrics and uncertainty.

Adding a model type is adding one `ModelType` to this table, or calling `register` from your own
module, named in `CHAIN_MODEL_TYPE_MODULES` (README, "Add your own model type"). ETL and inference find
a run's type by name (`lookup`), so every function must register the same types.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeVar

from shared.domain.examples import Example
from shared.domain.predictions import VertexPrediction

T = TypeVar("T")
REGISTER_HOW = 'name the module that registers it in CHAIN_MODEL_TYPE_MODULES (README, "Add your own model type")'
NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


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


# What each deployment kind can train with: a cloud deployment has no local engine, a local one no Vertex.
BACKENDS_OF = {Backend.VERTEX: (Backend.VERTEX, Backend.VERTEX_CUSTOM), Backend.LOCAL: (Backend.LOCAL,)}
DEPLOYMENTS = tuple(BACKENDS_OF)  # the values CHAIN_BACKEND takes


def unchanged(value: T) -> T:
    """The default conversion of both hooks: the example or prediction as it is."""
    return value


class UnknownModelType(LookupError):
    """A run names a model type this process has not registered (its module is not loaded here)."""


class ConversionFailed(Exception):
    """A model type's conversion raised, or returned what the chain cannot use: a bug in that type that
    no retry mends. The message names the type, the hook and the row or image."""


@dataclass(frozen=True)
class ModelType:
    name: str
    task: Task
    trainers: Mapping[Backend, Backend]  # deployment kind -> the backend that trains this type there
    description: str
    # ETL's conversion of each labeled example, before its import line is written. It sees the staged
    # image's real size in `width` and `height`, and the Labelbox feature names in its boxes and labels;
    # it may drop or change boxes and labels (to features the export has) or move the row to another split.
    training_example: Callable[[Example], Example] = field(default=unchanged)
    # Inference's conversion of each parsed batch-prediction line, before it becomes Labelbox predictions,
    # metrics and uncertainty. Boxes are normalized to [0, 1]; labels are the model's (Vertex display) names.
    prediction: Callable[[VertexPrediction], VertexPrediction] = field(default=unchanged)

    def trainer(self, deployment: Backend) -> Backend:
        """The backend that trains this type in a `deployment`; KeyError where it is not offered."""
        return self.trainers[deployment]

    def convert_example(self, example: Example) -> Example:
        """`training_example` applied to one example; ConversionFailed when it raises or returns what
        cannot stand for that row (not an `Example`, another data row)."""
        if self.training_example is unchanged:
            return example
        try:
            out = self.training_example(example)
        except Exception as exc:
            raise ConversionFailed(self._failed("training_example", f"data row {example.data_row_id}", exc)) from exc
        if not isinstance(out, Example) or out.data_row_id != example.data_row_id:
            what = f"data row {getattr(out, 'data_row_id', None)!r}" if isinstance(out, Example) else type(out).__name__
            raise ConversionFailed(
                f"model type {self.name!r}: training_example returned {what} for data row {example.data_row_id}; "
                "it must return an Example of the same data row"
            )
        return out

    def convert_prediction(self, prediction: VertexPrediction) -> VertexPrediction:
        """`prediction` applied to one parsed line; ConversionFailed when it raises or returns what cannot
        stand for that image (not a `VertexPrediction`, another image)."""
        if self.prediction is unchanged:
            return prediction
        try:
            out = self.prediction(prediction)
        except Exception as exc:
            raise ConversionFailed(self._failed("prediction", f"image {prediction.content_uri}", exc)) from exc
        if not isinstance(out, VertexPrediction) or out.content_uri != prediction.content_uri:
            what = "another image" if isinstance(out, VertexPrediction) else type(out).__name__
            raise ConversionFailed(
                f"model type {self.name!r}: prediction returned {what} for image {prediction.content_uri}; "
                "it must return a VertexPrediction of the same image (content_uri)"
            )
        return out

    def _failed(self, hook: str, subject: str, exc: Exception) -> str:
        return f"model type {self.name!r}: {hook} failed on {subject}: {type(exc).__name__}: {exc}"


_AUTOML = {Backend.VERTEX: Backend.VERTEX, Backend.LOCAL: Backend.LOCAL}
_CUSTOM = {Backend.VERTEX: Backend.VERTEX_CUSTOM, Backend.LOCAL: Backend.LOCAL}
_LOCAL = {Backend.LOCAL: Backend.LOCAL}

MODEL_TYPES: dict[str, ModelType] = {}


def register(model_type: ModelType) -> ModelType:
    """Adds a model type to the table; a name already there is refused, so two modules cannot both own it,
    and so is a type the chain could not run (a bad name or task, a deployment it has no such backend in)."""
    name = model_type.name
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ValueError(f"model type name {name!r}: use 1 to 64 letters, digits, '_' or '-'")
    if name in MODEL_TYPES:
        raise ValueError(f"model type {name!r} is already registered")
    if not isinstance(model_type.task, Task):
        raise ValueError(f"model type {name!r}: task must be one of Task ({', '.join(t.value for t in Task)})")
    trainers = model_type.trainers
    allowed = ", ".join(f"{d.value}: {'/'.join(b.value for b in BACKENDS_OF[d])}" for d in DEPLOYMENTS)
    if (
        not isinstance(trainers, Mapping)
        or not trainers
        or any(d not in BACKENDS_OF or trainers[d] not in BACKENDS_OF[d] for d in trainers)
    ):
        raise ValueError(
            f"model type {name!r}: trainers must map one or more deployment kinds to a backend they have "
            f"({allowed}), got {dict(trainers) if isinstance(trainers, Mapping) else trainers!r}"
        )
    for hook in ("training_example", "prediction"):
        if not callable(getattr(model_type, hook)):
            raise ValueError(f"model type {name!r}: {hook} must be a function")
    MODEL_TYPES[name] = model_type
    return model_type


def lookup(name: str) -> ModelType:
    """The registered model type `name`, as ETL and inference find a run's; UnknownModelType, saying how
    to register it, when this process has not (its module is not named in CHAIN_MODEL_TYPE_MODULES)."""
    try:
        return MODEL_TYPES[name]
    except KeyError:
        raise UnknownModelType(f"model type {name!r} is not registered in this process: {REGISTER_HOW}") from None


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
