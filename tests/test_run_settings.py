"""A run's settings from the model run's config: what the "train" namespace may set, what it may not,
and the messages that say which key is wrong and what it may be."""

from __future__ import annotations

from typing import Any

import pytest

from shared.config import load_settings
from shared.domain.model_types import Backend, Task
from shared.run_settings import RunConfigError, RunSettings, deployment_defaults, merged_results, resolve

ENV = {
    "CHAIN_MODE": "local",
    "WEBHOOK_SECRET": "s",
    **{f"{s}_URL": f"http://127.0.0.1:9/{s}" for s in ("ETL", "TRAIN", "MONITOR", "INFERENCE")},
}
DETECTION = Task.OBJECT_DETECTION


def defaults(backend: Backend = Backend.LOCAL, task: Task = DETECTION, **env: str) -> RunSettings:
    return deployment_defaults(load_settings({**ENV, **env}), task, backend)


def run(config: dict[str, Any] | None, backend: Backend = Backend.LOCAL, task: Task = DETECTION) -> RunSettings:
    return resolve(config, defaults(backend, task), task=task, backend=backend)


def refused(config: dict[str, Any], backend: Backend = Backend.LOCAL, task: Task = DETECTION) -> str:
    with pytest.raises(RunConfigError) as caught:
        run(config, backend, task)
    return str(caught.value)


def test_no_config_or_no_namespace_is_the_deployments_settings() -> None:
    assert run(None) == run({}) == run({"my_notes": {"x": 1}}) == defaults()
    base = defaults(LOCAL_ENGINE_TRAIN_SECONDS="30", PREDICT_CONFIDENCE_THRESHOLD="0.4")
    assert (base.confidence_threshold, base.training) == (0.4, {"steps": None, "train_seconds": 30.0})
    assert base.from_config == ()


def test_the_namespace_sets_the_engines_settings_and_names_what_it_set() -> None:
    settings = run(
        {
            "train": {"steps": 40, "learning_rate": 0.01, "batch_size": 8, "input_size": 128, "max_predictions": 20},
            "experiment": "lr sweep",  # the user's own key: left alone
        }
    )
    assert settings.training == {
        "steps": 40,
        "train_seconds": 90.0,
        "learning_rate": 0.01,
        "batch_size": 8,
        "input_size": 128,
    }
    assert (settings.max_predictions, settings.confidence_threshold) == (20, 0.3)
    assert settings.from_config == ("batch_size", "input_size", "learning_rate", "max_predictions", "steps")
    assert settings.shown()["setting: steps"] == "40 (from config)"
    assert run({"train": {"backbone": "mobilenet_v2"}}).training["backbone"] == "mobilenet_v2"
    assert settings.shown()["setting: confidence_threshold"] == "0.3"


def test_a_wall_time_budget_asked_for_replaces_a_deployments_step_count() -> None:
    base = defaults(LOCAL_ENGINE_STEPS="500")
    settings = resolve({"train": {"train_seconds": 12}}, base, task=DETECTION, backend=Backend.LOCAL)
    assert settings.training == {"steps": None, "train_seconds": 12.0}


def test_the_vertex_backend_takes_its_model_type_budget_and_early_stopping() -> None:
    settings = run(
        {"train": {"model_type": "CLOUD_1", "budget_milli_node_hours": 40000, "early_stopping": False}},
        Backend.VERTEX,
    )
    assert settings.training == {"model_type": "CLOUD_1", "budget_milli_node_hours": 40000, "early_stopping": False}


@pytest.mark.parametrize(
    ("config", "backend", "message"),
    [
        ({"train": {"epochs": 3}}, Backend.LOCAL, "unknown key train.epochs; the keys are backbone, batch_size, "),
        ({"train": {"steps": "many"}}, Backend.LOCAL, "train.steps must be an integer, not 'many'"),
        ({"train": {"steps": 2.5}}, Backend.LOCAL, "train.steps must be an integer, not 2.5"),
        ({"train": {"steps": True}}, Backend.LOCAL, "train.steps must be an integer, not True"),
        ({"train": {"steps": 0}}, Backend.LOCAL, "train.steps must be between 1 and 1e+07, not 0"),
        ({"train": {"confidence_threshold": 1.5}}, Backend.VERTEX, "train.confidence_threshold must be between 0"),
        ({"train": {"max_predictions": 501}}, Backend.VERTEX, "train.max_predictions must be between 1 and 500"),
        ({"train": {"input_size": 100}}, Backend.LOCAL, "train.input_size must be a multiple of 32, not 100"),
        ({"train": {"early_stopping": "no"}}, Backend.VERTEX, "train.early_stopping must be true or false, not 'no'"),
        (
            {"train": {"model_type": "MOBILE_TF_VERSATILE_1"}},
            Backend.VERTEX,
            "train.model_type must be one of CLOUD_HIGH_ACCURACY_1, CLOUD_1, CLOUD_LOW_LATENCY_1 for "
            "object_detection, not 'MOBILE_TF_VERSATILE_1' (edge types cannot batch-predict)",
        ),
        (
            {"train": {"budget_milli_node_hours": 1000}},
            Backend.VERTEX,
            "train.budget_milli_node_hours 1000 is outside 20000..900000, what Vertex AI accepts for "
            "object_detection model type CLOUD_HIGH_ACCURACY_1",
        ),
        (
            {"train": {"budget_milli_node_hours": 30000}},
            Backend.LOCAL,
            "train.budget_milli_node_hours is not a setting "
            "of the local backend; its keys are backbone, batch_size, confidence_threshold, input_size",
        ),
        ({"train": {"steps": 10}}, Backend.VERTEX, "train.steps is not a setting of the vertex backend"),
        (
            {"train": {"backbone": "resnet50"}},
            Backend.LOCAL,
            "train.backbone must be one of auto, scratch, mobilenet_v2 for object_detection, not 'resnet50'",
        ),
        ({"train": {"backbone": "mobilenet_v2"}}, Backend.VERTEX, "train.backbone is not a setting of the vertex"),
        ({"train": [1, 2]}, Backend.LOCAL, 'the model run config\'s "train" must be an object of settings, not list'),
    ],
)
def test_a_bad_key_is_refused_with_a_message_naming_it_and_what_it_may_be(
    config: dict[str, Any], backend: Backend, message: str
) -> None:
    assert message in refused(config, backend)


def test_every_bad_key_is_named_at_once() -> None:
    text = refused({"train": {"steps": -1, "batch_size": "big", "learning_rate": 0.01}})
    assert text.startswith("bad model run config: ")
    assert "train.steps" in text and "train.batch_size" in text and "learning_rate" not in text


def test_a_classification_model_type_is_checked_against_classifications_types() -> None:
    settings = run({"train": {"model_type": "CLOUD"}}, Backend.VERTEX, Task.SINGLE_LABEL_CLASSIFICATION)
    assert settings.training["model_type"] == "CLOUD"
    assert "must be one of CLOUD, CLOUD_1 for" in refused(
        {"train": {"model_type": "CLOUD_1x"}}, Backend.VERTEX, Task.SINGLE_LABEL_CLASSIFICATION
    )


def test_the_settings_survive_the_run_record_as_they_were() -> None:
    settings = run({"train": {"steps": 40, "confidence_threshold": 0.5}})
    assert RunSettings.from_dict(settings.to_dict()) == settings


def test_results_go_under_chain_and_never_replace_a_users_key() -> None:
    user = {"train": {"steps": 40}, "metrics": {"mine": 1}, "chain": {"old": True}}
    merged = merged_results(user, {"report": "gs://b/r.html"})
    assert merged == {"train": {"steps": 40}, "metrics": {"mine": 1}, "chain": {"report": "gs://b/r.html"}}
    assert merged_results(None, {"report": "r"}) == {"chain": {"report": "r"}}


CUSTOM_ENV = {
    **ENV,
    "CHAIN_MODE": "cloud",
    "LABELBOX_API_KEY": "k",
    "GCP_PROJECT": "p",
    "GCP_REGION": "us-central1",
    "BUCKET": "b",
    "TASKS_QUEUE": "q",
    "SERVICE_ACCOUNT_EMAIL": "sa@p.iam.gserviceaccount.com",
    "MODEL_RUN_URL": "http://127.0.0.1:9/model_run",
    "VERTEX_CUSTOM_STEPS": "1500",
}


def test_a_custom_job_run_takes_the_engine_s_settings_and_its_machine() -> None:
    custom = deployment_defaults(load_settings(CUSTOM_ENV), DETECTION, Backend.VERTEX_CUSTOM)
    assert custom.training == {
        "steps": 1500,
        "machine_type": "g2-standard-8",
        "accelerator_type": "NVIDIA_L4",
        "accelerator_count": 1,
    }
    config = {
        "train": {
            "steps": 200,
            "input_size": 512,
            "machine_type": "n1-standard-8",
            "accelerator_type": "NVIDIA_TESLA_T4",
        }
    }
    resolved = resolve(config, custom, task=DETECTION, backend=Backend.VERTEX_CUSTOM)
    assert resolved.training["machine_type"] == "n1-standard-8" and resolved.training["steps"] == 200
    with pytest.raises(
        RunConfigError, match=r"train.machine_type/accelerator_type/accelerator_count: NVIDIA_L4 attaches"
    ):
        resolve({"train": {"machine_type": "n1-standard-8"}}, custom, task=DETECTION, backend=Backend.VERTEX_CUSTOM)
    assert "train.machine_type is not a setting of the local backend" in refused(
        {"train": {"machine_type": "g2-standard-8"}}
    )
    assert "train.steps is not a setting of the vertex backend" in refused({"train": {"steps": 5}}, Backend.VERTEX)
