"""The engine package runs the way Vertex custom training runs it, and writes what the chain reads.

scripts/build_engine_package.py builds the wheel; it is installed into a clean venv with nothing but its
declared requirements (tests/deploy/engine_env.py, cached); then `python -m shared.engine.vertex_job`
runs in that venv, outside the repository, with the `AIP_*` variables Vertex sets and every path a
gs:// URI on the GCS emulator: `train` on an import JSONL written in chunks as the ETL writes it, then
`predict`. The model files must be in the model dir, and the prediction files must be found and parsed
by the chain's own inference reader (`output_lines`, `parse_prediction_line`), naming every instance.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from shared.domain.predictions import VertexPrediction
from shared.formats.vertex_prediction import PredictionLineError, parse_prediction_line
from shared.services import Services
from shared.stages.inference_split import output_lines
from shared.store.gcs import GcsStore
from tests.engine.engine_data import ML_USE, draw, shapes_for
from tests.store.gcs_emulator import GcsEmulator

from .engine_env import BUILD_TIMES, CACHE, build_wheel, engine_venv
from .function_envs import REPO, venv_python

MODULE = "shared.engine.vertex_job"
# Tiny: 64 px images, a width-8 network, 2 steps (tests/engine/engine_data.py TINY_TRAIN)
TINY = ["--steps", "2", "--input-size", "64", "--width", "8", "--batch-size", "4", "--threads", "2"]
PREDICT_ALL = ["--confidence-threshold", "0", "--threads", "2"]  # every box, so every image has some
# Where the package's modules come from, to prove the repository and the dev venv play no part.
WHERE = "import json, sys, shared, torch; print(json.dumps({'shared': shared.__file__, 'path': sys.path}))"


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    wheel = build_wheel(tmp_path_factory.mktemp("engine-package"))
    venv = engine_venv(wheel, tmp_path_factory.mktemp("engine-venv") / "venv")
    for label, figures in BUILD_TIMES.items():
        state = "reused" if figures["cached"] else f"built in {figures['build_s']} s"
        print(f"\nengine-envs: {label}: {len(figures['installed'])} packages, {state}")  # type: ignore[arg-type]
    return venv


def run_job(venv: Path, args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -m shared.engine.vertex_job ...` as Vertex runs the package's module: its venv only."""
    clean = {
        **env,
        "PATH": f"{venv / 'bin'}{os.pathsep}/usr/bin{os.pathsep}/bin",
        "HOME": str(cwd),  # no gcloud configuration or credentials of the machine's user
        "LANG": "C.UTF-8",
        "PYTHONNOUSERSITE": "1",
    }
    return subprocess.run(
        [str(venv_python(venv)), *args], cwd=cwd, env=clean, capture_output=True, text=True, timeout=300, check=False
    )


def _under(path: str, folder: Path) -> bool:
    return Path(path).resolve().is_relative_to(folder.resolve())


def _upload_tiny_data(store: GcsStore, count: int = 8) -> tuple[str, str, list[str]]:
    """Images, the import JSONL in two chunks (as the ETL writes it) and instances; returns the import
    pattern, the instances URI and the instance lines."""
    lines = []
    for i in range(count):
        shapes = shapes_for(i)
        uri = store.uri(f"runs/r1/images/row{i:03d}.jpg")
        store.write(store.key_from_uri(uri), draw(shapes), content_type="image/jpeg")
        boxes = [
            {"displayName": s.label, "xMin": s.box[0], "yMin": s.box[1], "xMax": s.box[2], "yMax": s.box[3]}
            for s in shapes
        ]
        split = "validation" if i % 4 == 3 else "training"
        lines.append(
            json.dumps({"imageGcsUri": uri, "boundingBoxAnnotations": boxes, "dataItemResourceLabels": {ML_USE: split}})
        )
    half = len(lines) // 2
    store.write("runs/r1/etl/import-00000.jsonl", ("\n".join(lines[:half]) + "\n").encode())
    store.write("runs/r1/etl/import-00001.jsonl", "\n".join(lines[half:]).encode())  # no final newline
    instances = [json.dumps({"content": json.loads(line)["imageGcsUri"], "mimeType": "image/jpeg"}) for line in lines]
    instances.append(json.dumps({"content": store.uri("runs/r1/images/missing.jpg"), "mimeType": "image/jpeg"}))
    store.write("runs/r1/instances.jsonl", ("\n".join(instances) + "\n").encode())
    return store.uri("runs/r1/etl/import-*.jsonl"), store.uri("runs/r1/instances.jsonl"), instances


@pytest.mark.slow
def test_the_package_trains_and_predicts_on_gcs_as_a_vertex_custom_job(
    venv: Path, gcs_emulator: GcsEmulator, tmp_path: Path
) -> None:
    where = run_job(venv, ["-c", WHERE], gcs_emulator.env, tmp_path)
    assert where.returncode == 0, where.stderr
    seen = json.loads(where.stdout)
    assert _under(seen["shared"], venv), "shared must come from the installed package"
    outside = [p for p in seen["path"] if p and not _under(p, CACHE)]  # the cached requirements may be there
    leaked = [p for p in outside if _under(p, REPO) or _under(p, Path(sys.prefix))]
    assert not leaked, f"the repository or the dev venv is on the package venv's sys.path: {leaked}"

    store = GcsStore(gcs_emulator.make_bucket(), client=gcs_emulator.client())
    import_pattern, instances_uri, instances = _upload_tiny_data(store)
    base = store.uri("vertex/job-1/")
    env = {
        **gcs_emulator.env,
        "AIP_MODEL_DIR": base + "model/",
        "AIP_CHECKPOINT_DIR": base + "checkpoints/",
        "AIP_TENSORBOARD_LOG_DIR": base + "logs/",
    }
    trained = run_job(
        venv,
        ["-m", MODULE, "train", "--import-uri", import_pattern, "--task", "object_detection", *TINY],
        env,
        tmp_path,
    )
    assert trained.returncode == 0, trained.stderr + trained.stdout
    assert sorted(store.list("vertex/job-1/")) == [
        f"vertex/job-1/model/{n}" for n in ("model.onnx", "model.pt", "summary.json")
    ]
    summary = json.loads(store.read("vertex/job-1/model/summary.json"))
    assert summary["step"] == 2 and summary["classes"] == ["disc", "square"] and summary["onnx"] == "model.onnx"
    assert summary["training_images"] == 6 and summary["device"] == "cpu" and "validation_map50" in summary

    output_dir = store.uri("vertex/job-2/predictions/")
    predict = ["-m", MODULE, "predict", "--model-dir", base + "model/", "--instances-uri", instances_uri]
    predict += ["--output-dir", output_dir, "--task", "object_detection", *PREDICT_ALL]
    predicted = run_job(
        venv,
        predict,
        {**env, "AIP_MODEL_DIR": store.uri("vertex/job-2/model/")},  # the prediction job's own
        tmp_path,
    )
    assert predicted.returncode == 0, predicted.stderr + predicted.stdout
    assert sorted(store.list("vertex/job-2/")) == [
        "vertex/job-2/predictions/errors_00001.jsonl",
        "vertex/job-2/predictions/predictions_00001.jsonl",
    ]
    reader = cast(Services, SimpleNamespace(store=store))  # output_lines reads through services.store only
    parsed = [parse_prediction_line(line) for line in output_lines(reader, output_dir)]
    assert sorted(p.content_uri or "" for p in parsed) == sorted(json.loads(i)["content"] for i in instances)
    good = [p for p in parsed if isinstance(p, VertexPrediction)]
    (bad,) = [p for p in parsed if isinstance(p, PredictionLineError)]
    assert len(good) == len(instances) - 1 and all(p.boxes for p in good)
    assert all(b.label in ("disc", "square") and 0 <= b.x_min <= b.x_max <= 1 for p in good for b in p.boxes)
    assert bad.content_uri == store.uri("runs/r1/images/missing.jpg") and "does not exist" in bad.detail


@pytest.mark.slow
def test_a_job_with_a_missing_input_fails_in_one_line_saying_what_to_fix(
    venv: Path, gcs_emulator: GcsEmulator, tmp_path: Path
) -> None:
    store = GcsStore(gcs_emulator.make_bucket(), client=gcs_emulator.client())
    env = {**gcs_emulator.env, "AIP_MODEL_DIR": store.uri("job/model/")}
    missing = store.uri("runs/r1/etl/import-*.jsonl")
    failed = run_job(
        venv, ["-m", MODULE, "train", "--import-uri", missing, "--task", "object_detection"], env, tmp_path
    )
    assert failed.returncode == 1
    assert failed.stderr.strip().splitlines() == [
        f"error: the import file {missing} does not exist (--import-uri): run the ETL first, or fix the URI"
    ]
    assert list(store.list("job/")) == []

    predict = ["-m", MODULE, "predict", "--model-dir", store.uri("job/model/"), "--instances-uri", store.uri("i.jsonl")]
    no_model = run_job(venv, [*predict, "--output-dir", store.uri("job/out/")], env, tmp_path)
    assert no_model.returncode == 1
    assert no_model.stderr.strip().splitlines() == [
        f"error: {store.uri('job/model/')} holds no model.pt (--model-dir): point it at a finished training "
        "job's model dir (its AIP_MODEL_DIR)"
    ]
