"""A `vertex_custom_detector` run in the deployed chain: the engine really trains and predicts as CustomJobs.

The six functions run from their staged builds in cloud mode (tests/cloud/cloud_chain.py); the engine
package is built by scripts/build_engine_package.py as deploy.sh builds it, uploaded to the emulated
bucket, and each CustomJob the `train` and `inference` stages create is run by the Vertex stand-in the
way Vertex runs a Python package spec: `python -m shared.engine.vertex_job ...` in a clean venv holding
only the wheel and its declared requirements, with `AIP_MODEL_DIR` set, reading and writing gs:// in
the GCS emulator. A small step budget keeps it to a minute of CPU. What this does not prove: the
prebuilt GPU image, pip installing the wheel inside it, CUDA, quotas.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.demo import _ids, create_demo_model_run
from tests.cloud.cloud_chain import CloudChain
from tests.deploy.engine_env import build_wheel, engine_venv
from tests.deploy.function_envs import venv_python
from tests.platform.fake_labelbox import FakeLabelbox, running_fake_labelbox_for_folder
from tests.store.gcs_emulator import GcsEmulator

SEED = 23
MODEL_TYPE = "vertex_custom_detector"
STEPS = 40
RUN_CONFIG = {"train": {"steps": STEPS, "batch_size": 8}}
CUSTOM_TYPES = {
    "vertex_custom_detector",
    "vertex_custom_single_label_classifier",
    "vertex_custom_multi_label_classifier",
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    folder = create_demo_model_run(tmp_path_factory.mktemp("custom-demo") / "model_runs", images=40, seed=SEED)
    return folder, _ids(SEED)[0]


@pytest.fixture(scope="module")
def labelbox(demo: tuple[Path, str]) -> Iterator[FakeLabelbox]:
    with running_fake_labelbox_for_folder(demo[0]) as fake:
        fake.training_metadata = dict(RUN_CONFIG)
        yield fake


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The wheel deploy.sh would upload, and the venv a custom job would run it in."""
    wheel = build_wheel(tmp_path_factory.mktemp("engine-package"))
    return wheel, engine_venv(wheel, tmp_path_factory.mktemp("engine-venv") / "venv")


@pytest.fixture(scope="module")
def completed(
    demo: tuple[Path, str],
    labelbox: FakeLabelbox,
    engine: tuple[Path, Path],
    gcs_emulator: GcsEmulator,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[CloudChain, dict[str, Any]]]:
    _, model_run_id = demo
    wheel, venv = engine
    chain = CloudChain(
        tmp_path_factory.mktemp("custom-chain"),
        gcs_emulator,
        labelbox,
        env={"ETL_EXPORT_WAIT_S": "0", "VERTEX_CUSTOM_STEPS": "5000"},
        vertex_options={
            "python": str(venv_python(venv)),
            "job_env": {
                "STORAGE_EMULATOR_HOST": gcs_emulator.endpoint,
                "CUDA_VISIBLE_DEVICES": "",
                "OMP_NUM_THREADS": "2",
            },
        },
    )
    chain.extra_env["VERTEX_CUSTOM_PACKAGE_URI"] = f"gs://{chain.bucket}/engine/{wheel.name}"  # as deploy.sh sets it
    chain.storage.bucket(chain.bucket).blob(f"engine/{wheel.name}").upload_from_filename(str(wheel))
    with chain:
        answer = chain.webhook(model_run_id, MODEL_TYPE)
        assert answer.status_code == 202, answer.text
        record = chain.wait(model_run_id, timeout_s=600)
        yield chain, record


@pytest.mark.slow
def test_a_custom_detector_run_trains_the_engine_as_custom_jobs_and_reaches_complete(
    completed: tuple[CloudChain, dict[str, Any]], demo: tuple[Path, str], labelbox: FakeLabelbox
) -> None:
    chain, record = completed
    _, model_run_id = demo
    assert record["status"] == "complete", record.get("error")
    assert record["backend"] == "vertex_custom" and record["model_type"] == MODEL_TYPE
    train_job, predict_job = chain.vertex.custom_jobs()
    assert record["jobs"]["training"] == train_job["name"] and "/customJobs/" in train_job["name"]
    assert record["jobs"]["batch_prediction"] == predict_job["name"]
    assert not chain.vertex.datasets() and not chain.vertex.pipelines()  # AutoML was never asked
    for job in (train_job, predict_job):
        assert job["state"] == "JOB_STATE_SUCCEEDED", chain.vertex.custom_job_log(job["name"])[-2000:]
        assert job["labels"]["lb_chain"] == "e2e" and job["labels"]["lb_model_run"] == model_run_id.lower()
        (pool,) = job["jobSpec"]["workerPoolSpecs"]
        assert pool["machineSpec"] == {
            "machineType": "g2-standard-8",
            "acceleratorType": "NVIDIA_L4",
            "acceleratorCount": 1,
        }
        assert pool["pythonPackageSpec"]["packageUris"] == [f"gs://{chain.bucket}/{_engine_key(chain)}"]
        assert pool["pythonPackageSpec"]["pythonModule"] == "shared.engine.vertex_job"
    train_args = train_job["jobSpec"]["workerPoolSpecs"][0]["pythonPackageSpec"]["args"]
    assert train_args[:5] == [
        "train",
        "--import-uri",
        record["artifacts"]["import_jsonl"],
        "--task",
        "object_detection",
    ]
    assert train_args[train_args.index("--steps") + 1] == str(STEPS)  # the run's config wins over VERTEX_CUSTOM_STEPS

    model_dir = record["jobs"]["model"]
    base = train_job["jobSpec"]["baseOutputDirectory"]["outputUriPrefix"].rstrip("/")
    assert model_dir == f"{base}/model/"
    summary = chain.read_json(f"{model_dir.removeprefix(f'gs://{chain.bucket}/')}summary.json")
    assert summary is not None and summary["step"] == STEPS and summary["device"] == "cpu"

    training = record["metrics"]["training"]
    assert training["step"] == STEPS and 0 <= training["validation_map50"] <= 1  # the engine's own figures
    assert training["machine"] == "g2-standard-8 + 1 x NVIDIA_L4"
    assert training["elapsed_s"] > 0 and training["estimated_cost_usd"] > 0
    assert training["estimated_cost_usd"] == pytest.approx(
        training["usd_per_hour"] * training["elapsed_s"] / 3600, abs=1e-3
    )
    assert record["metrics"]["batch_prediction"]["job"] == predict_job["name"]

    rows = [row for job in labelbox.imports for row in job.rows]
    assert any("bbox" in r for r in rows)  # the engine's predictions reached the model run
    assert 0 <= record["metrics"]["summary"]["map50"] <= 1
    assert labelbox.statuses[-1]["status"] == "COMPLETE"


@pytest.mark.slow
def test_models_lists_the_custom_types_once_the_package_is_uploaded(
    completed: tuple[CloudChain, dict[str, Any]],
) -> None:
    chain, _ = completed
    answer = chain.models()
    assert answer.status_code == 200 and set(answer.json()) >= CUSTOM_TYPES
    assert not {name for name in answer.json() if name.startswith("local_")}


def _engine_key(chain: CloudChain) -> str:
    (blob,) = chain.storage.bucket(chain.bucket).list_blobs(prefix="engine/")
    return str(blob.name)
