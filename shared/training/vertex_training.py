"""The cloud deployment's training backend: Vertex AI AutoML and the engine's custom jobs behind one port.

A run's model type names its backend (shared/domain/model_types.py), which the run record keeps and
every start request carries; every later call (status, cancel) carries only a reference, and goes to
the backend that made it: custom jobs, import files and model directories are the custom backend's,
everything else (datasets, training pipelines, batch prediction jobs) AutoML's.
"""

from __future__ import annotations

from collections.abc import Mapping

from shared.domain.model_types import Backend, Task
from shared.training.port import (
    DatasetRequest,
    JobRef,
    JobStatus,
    PredictionRequest,
    RequestRefused,
    TrainingBackend,
    TrainingRequest,
)
from shared.training.vertex_custom import FIX_PACKAGE, VertexCustomBackend


class VertexTraining:
    name = "vertex"

    def __init__(self, automl: TrainingBackend, custom: VertexCustomBackend | None) -> None:
        self.automl = automl
        self.custom = custom  # None: this deployment has no custom-job settings

    def _starting(self, backend: str) -> TrainingBackend:
        if backend != Backend.VERTEX_CUSTOM:
            return self.automl
        if self.custom is None:
            raise RequestRefused(f"this deployment is not set up for Vertex AI custom jobs: {FIX_PACKAGE}")
        return self.custom

    def _owner(self, ref: str) -> TrainingBackend:
        return self.custom if self.custom is not None and self.custom.owns(ref) else self.automl

    def start_dataset_import(self, request: DatasetRequest) -> JobRef:
        return self._starting(request.backend).start_dataset_import(request)

    def dataset_status(self, ref: str) -> JobStatus:
        return self._owner(ref).dataset_status(ref)

    def start_training(self, request: TrainingRequest) -> JobRef:
        return self._starting(request.backend).start_training(request)

    def training_status(self, ref: str) -> JobStatus:
        return self._owner(ref).training_status(ref)

    def cancel_training(self, ref: str) -> None:
        self._owner(ref).cancel_training(ref)

    def training_deadline_s(self, ref: str, task: Task, settings: Mapping[str, object]) -> float | None:
        return self._owner(ref).training_deadline_s(ref, task, settings)

    def start_batch_prediction(self, request: PredictionRequest) -> JobRef:
        return self._starting(request.backend).start_batch_prediction(request)

    def batch_prediction_status(self, ref: str) -> JobStatus:
        return self._owner(ref).batch_prediction_status(ref)
