"""The project's engine as Vertex AI CustomJobs: the training backend of the `vertex_custom_*` model types.

No container is built anywhere: deploy.sh uploads the engine wheel (scripts/build_engine_package.py)
to the bucket, and each job is a worker pool with a Python package spec, which Vertex installs into a
prebuilt PyTorch GPU training image and runs as `python -m shared.engine.vertex_job train|predict ...`,
the same code the local engine runs (shared/engine/vertex_job.py).

- Dataset: none on Vertex. The import JSONL ETL wrote is what the job reads (a `*` reads every chunk),
  so "importing" returns its URI.
- Training: one CustomJob; its base output directory is `runs/<run>/custom/<job key>/`, and Vertex
  hands the job `AIP_MODEL_DIR=<base>/model/`, where the engine writes `model.pt`, `model.onnx` and,
  last, `summary.json`. The model reference is that directory.
- Batch prediction: a second CustomJob running `predict`, which writes the `predictions_*.jsonl` and
  `errors_*.jsonl` files AutoML's batch prediction writes, into a `prediction-<model>-<time>` folder
  under the request's output prefix, so `inference` reads both alike.

As for AutoML, Vertex lets no caller choose a job id, so every job carries the launch's `lb_job`
label and a start first lists by it. The requests are the ones `aiplatform.CustomJob(...).submit()`
sends (tests/training/test_vertex_custom_sdk_parity.py). Each job's status reports its machine, its
billed time (start to end, as Vertex bills) and the estimated cost at the machine's hourly rate.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from functools import cached_property

from google.api_core import exceptions as api_exceptions
from google.auth.credentials import Credentials
from google.cloud.aiplatform_v1.services.job_service import JobServiceClient
from google.cloud.aiplatform_v1.types import (
    AcceleratorType,
    CustomJob,
    CustomJobSpec,
    DiskSpec,
    EnvVar,
    GcsDestination,
    MachineSpec,
    PythonPackageSpec,
    Scheduling,
    WorkerPoolSpec,
)
from google.protobuf import duration_pb2

from shared.config import ENGINE_PACKAGE_MODULE, VertexCustomSettings, VertexSettings
from shared.domain.machines import NO_ACCELERATOR, Machine, estimated_cost_usd
from shared.domain.model_types import Task
from shared.domain.run_paths import RunPaths
from shared.formats.vertex_output import output_directory_name
from shared.gcp.errors import is_failed_precondition
from shared.run_settings import machine_of
from shared.store.port import WILDCARD, NotFound, ObjectStore, matching
from shared.training.port import (
    DatasetRequest,
    JobRef,
    JobState,
    JobStatus,
    PredictionRequest,
    RequestRefused,
    TrainingRequest,
)
from shared.training.vertex import (
    JOB_LABEL,
    JOB_STATES,
    READ_RETRY,
    client_kwargs,
    console_link,
    job_filter,
    vertex_labels,
)

SUMMARY_FILE = "summary.json"  # shared.engine.vertex_job.SUMMARY_FILE: written last, once the model is whole
# the engine's figures from summary.json that the run record keeps (as the local engine's job status has them)
SUMMARY_FIGURES = (
    "step",
    "total_steps",
    "loss",
    "images_per_s",
    "validation_map50",
    "validation_map",
    "validation_accuracy",
    "backbone",
    "input_size",
    "device",
    "onnx_error",
)
MODEL_SUBDIR = "model/"  # Vertex's AIP_MODEL_DIR under the base output directory
BOOT_DISK_GB = 100  # the SDK's default; the CUDA torch wheel and its libraries need about 10 GB of it
JOB_START_MARGIN_S = 1800.0  # queueing for a GPU and installing the package, beyond the job's own timeout
FIX_PACKAGE = "run ./deploy.sh again: it builds the engine package and uploads it to the bucket"


class VertexCustomBackend:
    """Trains and predicts with the engine as Vertex AI CustomJobs; clients are made on first use."""

    name = "vertex_custom"

    def __init__(
        self,
        *,
        project: str,
        region: str,
        store: ObjectStore,
        vertex: VertexSettings,
        custom: VertexCustomSettings,
        credentials: Credentials | None = None,
    ) -> None:
        self.project = project
        self.region = region
        self.store = store
        self.vertex = vertex
        self.custom = custom
        self._credentials = credentials

    @property
    def _parent(self) -> str:
        return f"projects/{self.project}/locations/{self.region}"

    @cached_property
    def _jobs(self) -> JobServiceClient:
        return JobServiceClient(**client_kwargs(self.region, self.vertex, self._credentials))

    @staticmethod
    def owns(ref: str) -> bool:
        """A reference this backend made: a custom job, an import JSONL or a model directory."""
        return "/customJobs/" in ref or ref.startswith("gs://")

    # -- dataset ------------------------------------------------------------------------------------

    def start_dataset_import(self, request: DatasetRequest) -> JobRef:
        self._import_keys(request.import_uri)  # refused now, not in a job that fails on GPU time
        return JobRef(request.import_uri)

    def dataset_status(self, ref: str) -> JobStatus:
        try:
            self._import_keys(ref)
        except RequestRefused as exc:
            return JobStatus(JobState.FAILED, error=str(exc))
        return JobStatus(JobState.SUCCEEDED, result=ref)

    def _import_keys(self, uri: str) -> list[str]:
        key = self.store.key_from_uri(uri)
        keys = matching(self.store, key) if WILDCARD in key else [key]
        if not keys or (WILDCARD not in key and not self.store.exists(key)):
            raise RequestRefused(f"the import file {uri} does not exist; re-run etl to write it")
        return keys

    # -- training -----------------------------------------------------------------------------------

    def start_training(self, request: TrainingRequest) -> JobRef:
        base = self.store.uri(RunPaths(request.run_id).custom_job_output(request.job_key))
        body = training_job(request, self.custom, region=self.region, base_output_dir=base)
        return self._launch(body, request.job_key)

    def training_status(self, ref: str) -> JobStatus:
        status, job = self._status(ref)
        if status.state is not JobState.SUCCEEDED:
            return status
        model_dir = job.job_spec.base_output_directory.output_uri_prefix.rstrip("/") + "/" + MODEL_SUBDIR
        try:
            summary = json.loads(self.store.read(self.store.key_from_uri(model_dir + SUMMARY_FILE)))
        except NotFound:
            return JobStatus(
                JobState.FAILED,
                error=f"the custom job succeeded but wrote no model to {model_dir} (no {SUMMARY_FILE})",
                progress=status.progress,
                link=status.link,
            )
        figures = {k: summary[k] for k in SUMMARY_FIGURES if isinstance(summary.get(k), int | float | str)}
        return JobStatus(
            JobState.SUCCEEDED, result=model_dir, progress={**status.progress, **figures}, link=status.link
        )

    def cancel_training(self, ref: str) -> None:
        """Cancelling a job that has already ended is a no-op, as a repeated cancel must be."""
        try:
            self._jobs.cancel_custom_job(name=ref)
        except (api_exceptions.FailedPrecondition, api_exceptions.BadRequest) as exc:  # REST: a plain 400
            if not is_failed_precondition(exc) or not self._status(ref)[0].state.finished:
                raise

    def training_deadline_s(self, ref: str, task: Task, settings: Mapping[str, object]) -> float | None:
        """Vertex stops the job at its timeout; waiting for a GPU and installing come before it."""
        return self.custom.timeout_s + JOB_START_MARGIN_S

    # -- batch prediction ---------------------------------------------------------------------------

    def start_batch_prediction(self, request: PredictionRequest) -> JobRef:
        if not request.model.startswith("gs://") or not request.model.endswith("/" + MODEL_SUBDIR):
            raise RequestRefused(f"{request.model!r} is not the model directory of a custom training job")
        output_dir = (
            f"{request.output_uri_prefix.rstrip('/')}/"
            f"{output_directory_name(request.display_name, dt.datetime.now(dt.UTC))}"
        )
        return self._launch(prediction_job(request, self.custom, output_dir=output_dir), request.job_key)

    def batch_prediction_status(self, ref: str) -> JobStatus:
        status, job = self._status(ref)
        if status.state is not JobState.SUCCEEDED:
            return status
        output_dir = _argument(job.job_spec.worker_pool_specs[0].python_package_spec.args, "--output-dir")
        if not output_dir:
            return JobStatus(JobState.FAILED, error=f"custom job {ref} names no --output-dir", link=status.link)
        return JobStatus(JobState.SUCCEEDED, result=output_dir, progress=status.progress, link=status.link)

    # -- shared -------------------------------------------------------------------------------------

    def _launched(self, job_key: str) -> CustomJob | None:
        listed = self._jobs.list_custom_jobs(request={"parent": self._parent, "filter": job_filter(job_key)})
        return next(iter(listed), None)

    def _launch(self, body: CustomJob, job_key: str) -> JobRef:
        """The job a start with this key made before, or a new one; Vertex's own refusal said plainly."""
        problem = machine_from(body).problem(self.region, check_region=self.custom.check_region)
        if problem:
            raise RequestRefused(
                f"{problem} (train.machine_type / accelerator_type in the run config, or VERTEX_CUSTOM_*)"
            )
        if not self.custom.package_uri:
            raise RequestRefused(f"this deployment has no engine package (VERTEX_CUSTOM_PACKAGE_URI): {FIX_PACKAGE}")
        package = self.store.key_from_uri(self.custom.package_uri)
        if not self.store.exists(package):
            raise RequestRefused(f"the engine package {self.custom.package_uri} is not in the bucket: {FIX_PACKAGE}")
        found = self._launched(job_key)
        if found is None:
            try:
                found = self._jobs.create_custom_job(parent=self._parent, custom_job=body)
            except (api_exceptions.BadRequest, api_exceptions.InvalidArgument, api_exceptions.ResourceExhausted) as exc:
                raise RequestRefused(
                    f"Vertex AI refused the custom job: {exc.message}; change the machine or accelerator "
                    "(VERTEX_CUSTOM_MACHINE_TYPE / VERTEX_CUSTOM_ACCELERATOR_TYPE, or train.machine_type / "
                    "train.accelerator_type), the region, or ask for GPU quota"
                ) from exc
        return JobRef(found.name, link=console_link(found.name))

    def _status(self, ref: str) -> tuple[JobStatus, CustomJob]:
        job = self._jobs.get_custom_job(name=ref, retry=READ_RETRY)
        state = JOB_STATES[job.state]
        link = console_link(ref)
        progress = job_costs(job, self.custom.usd_per_hour)
        if state in (JobState.FAILED, JobState.CANCELLED):
            fallback = f"Vertex AI custom job {state.value} without a message"
            return JobStatus(state, error=job.error.message or fallback, progress=progress, link=link), job
        return JobStatus(state, progress=progress, link=link), job


def machine_from(job: CustomJob) -> Machine:
    spec = job.job_spec.worker_pool_specs[0].machine_spec
    return Machine(spec.machine_type, AcceleratorType(spec.accelerator_type).name, spec.accelerator_count)


def job_costs(job: CustomJob, usd_per_hour: float | None) -> dict[str, object]:
    """The job's machine, the seconds it has been billed for so far, and their estimated cost."""
    progress: dict[str, object] = {"job": job.name}
    if not job.job_spec.worker_pool_specs:  # not one of ours: nothing to price
        return progress
    machine = machine_from(job)
    progress["machine"] = machine.describe()
    raw = CustomJob.pb(job)
    if raw.HasField("start_time"):
        start = raw.start_time.ToDatetime(dt.UTC)
        end = raw.end_time.ToDatetime(dt.UTC) if raw.HasField("end_time") else dt.datetime.now(dt.UTC)
        elapsed = max((end - start).total_seconds(), 0.0)
        progress["elapsed_s"] = round(elapsed, 1)
        progress["estimated_cost_usd"] = estimated_cost_usd(machine, elapsed, usd_per_hour=usd_per_hour)
        progress["usd_per_hour"] = usd_per_hour if usd_per_hour is not None else round(machine.usd_per_hour(), 4)
    return progress


def _argument(args: Sequence[str], flag: str) -> str | None:
    for i, arg in enumerate(args[:-1]):
        if arg == flag:
            return args[i + 1]
    return None


def worker_pool(
    machine: Machine, custom: VertexCustomSettings, args: list[str], env: Mapping[str, str]
) -> WorkerPoolSpec:
    """One replica running the engine package on `machine`."""
    spec = MachineSpec(machine_type=machine.machine_type)
    if machine.accelerator_type != NO_ACCELERATOR:
        spec = MachineSpec(
            machine_type=machine.machine_type,
            accelerator_type=machine.accelerator_type,
            accelerator_count=machine.accelerator_count,
        )
    return WorkerPoolSpec(
        machine_spec=spec,
        replica_count=1,
        disk_spec=DiskSpec(boot_disk_type="pd-ssd", boot_disk_size_gb=BOOT_DISK_GB),
        python_package_spec=PythonPackageSpec(
            executor_image_uri=custom.image_uri,
            package_uris=[custom.package_uri],
            python_module=ENGINE_PACKAGE_MODULE,
            args=args,
            env=[EnvVar(name=k, value=v) for k, v in env.items()],
        ),
    )


def _custom_job(
    display_name: str,
    pool: WorkerPoolSpec,
    *,
    base_output_dir: str,
    timeout_s: float,
    labels: Mapping[str, str],
    job_key: str,
) -> CustomJob:
    return CustomJob(
        display_name=display_name[:128],
        job_spec=CustomJobSpec(
            worker_pool_specs=[pool],
            base_output_directory=GcsDestination(output_uri_prefix=base_output_dir),
            scheduling=Scheduling(timeout=duration_pb2.Duration(seconds=int(timeout_s))),
        ),
        labels=vertex_labels({**labels, JOB_LABEL: job_key}),
    )


# run settings -> the engine's command-line flags (shared/engine/vertex_job.py)
_TRAIN_FLAGS = {
    "steps": "--steps",
    "train_seconds": "--train-seconds",
    "batch_size": "--batch-size",
    "learning_rate": "--learning-rate",
    "input_size": "--input-size",
    "backbone": "--backbone",
}


def training_job(
    request: TrainingRequest, custom: VertexCustomSettings, *, region: str, base_output_dir: str
) -> CustomJob:
    """The CustomJob that trains the engine on the run's import JSONL; its model lands in <base>/model/."""
    settings = dict(request.settings)
    if settings.get("steps") is not None:
        settings.pop("train_seconds", None)  # a step budget wins; the engine takes one of the two
    args = ["train", "--import-uri", request.dataset, "--task", request.task.value]
    args += ["--display-name", request.display_name, "--seed", "0"]
    for key, flag in _TRAIN_FLAGS.items():
        if settings.get(key) is not None:
            args += [flag, str(settings[key])]
    machine = machine_of(settings) if settings.get("machine_type") else custom.machine
    env = {"LBCHAIN_RUN_ID": request.run_id, "PYTHONUNBUFFERED": "1"}
    return _custom_job(
        f"{request.display_name}-train",
        worker_pool(machine, custom, args, env),
        base_output_dir=base_output_dir,
        timeout_s=custom.timeout_s,
        labels=request.labels,
        job_key=request.job_key,
    )


def prediction_job(request: PredictionRequest, custom: VertexCustomSettings, *, output_dir: str) -> CustomJob:
    """The CustomJob that predicts the instances with a trained model into `output_dir`, as AutoML would."""
    args = ["predict", "--model-dir", request.model, "--instances-uri", request.instances_uri]
    args += ["--output-dir", output_dir, "--task", request.task.value]
    args += [
        "--confidence-threshold",
        str(request.confidence_threshold),
        "--max-predictions",
        str(request.max_predictions),
    ]
    env = {"LBCHAIN_RUN_ID": request.run_id, "PYTHONUNBUFFERED": "1"}
    return _custom_job(
        f"{request.display_name}-predict",
        worker_pool(custom.machine, custom, args, env),
        base_output_dir=output_dir,
        timeout_s=custom.timeout_s,
        labels=request.labels,
        job_key=request.job_key,
    )
