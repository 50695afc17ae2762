"""Configuration from the environment: one error naming every problem, secrets that never show."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from shared.bootstrap import build_services
from shared.config import ConfigError, Ports, Settings, load_settings
from shared.domain.model_types import Backend, Task
from shared.secret import Secret

WEBHOOK_SECRET = "whsec-4f1b9d2e-webhook"
API_KEY = "lb-api-key-9b8c7d6e5f"
URLS = {
    "ETL_URL": "http://127.0.0.1:8081/",
    "TRAIN_URL": "http://127.0.0.1:8082/",
    "MONITOR_URL": "http://127.0.0.1:8083/",
    "INFERENCE_URL": "http://127.0.0.1:8084/",
}
CLOUD = {
    **URLS,
    "CHAIN_MODE": "cloud",
    "WEBHOOK_SECRET": WEBHOOK_SECRET,
    "LABELBOX_API_KEY": API_KEY,
    "GCP_PROJECT": "my-project",
    "GCP_REGION": "europe-west4",
    "BUCKET": "my-bucket",
    "TASKS_QUEUE": "chain-monitor",
    "SERVICE_ACCOUNT_EMAIL": "chain@my-project.iam.gserviceaccount.com",
}


def local_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {**URLS, "WEBHOOK_SECRET": WEBHOOK_SECRET, "LOCAL_DATA_DIR": str(tmp_path), **extra}


def config_error(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    message = str(caught.value)
    assert WEBHOOK_SECRET not in message and API_KEY not in message
    return message


# -- local mode ----------------------------------------------------------------------------------------------


def test_local_mode_works_with_only_the_stage_urls_and_the_webhook_secret(tmp_path: Path) -> None:
    settings = load_settings(local_env(tmp_path))
    assert settings.mode == "local"
    assert settings.backend is Backend.LOCAL
    assert settings.cloud is None
    assert settings.webhook_secret == Secret(WEBHOOK_SECRET)
    assert {s: settings.stage_url(s) for s in ("etl", "train", "monitor", "inference")} == {
        "etl": URLS["ETL_URL"],
        "train": URLS["TRAIN_URL"],
        "monitor": URLS["MONITOR_URL"],
        "inference": URLS["INFERENCE_URL"],
    }
    local = settings.local
    assert local is not None
    root = tmp_path.resolve()
    assert (local.bucket_dir, local.model_runs_dir, local.engine_dir) == (
        root / "bucket",
        root / "model_runs",
        root / "engine",
    )
    assert (local.bucket_name, local.engine_device, local.engine_backbone) == ("local-bucket", "auto", "auto")
    assert settings.vertex.od_model_type == "CLOUD_HIGH_ACCURACY_1"
    assert settings.vertex.budget_milli_node_hours(Task.OBJECT_DETECTION) == 20_000
    assert settings.monitor.initial_delay_s == 2.0  # local defaults look sooner than the cloud's
    assert settings.predict.on_training is False
    assert settings.secrets == (Secret(WEBHOOK_SECRET),)


def test_local_defaults_are_relative_to_the_working_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings({**URLS, "WEBHOOK_SECRET": WEBHOOK_SECRET})
    assert settings.local is not None
    assert settings.local.bucket_dir == tmp_path.resolve() / "var" / "bucket"


def test_empty_local_env_names_every_missing_variable_in_one_error() -> None:
    message = config_error({})
    for name in ("WEBHOOK_SECRET (or WEBHOOK_SECRET_FILE)", "ETL_URL", "TRAIN_URL", "MONITOR_URL", "INFERENCE_URL"):
        assert f"{name} is required but not set" in message
    assert "GCP_PROJECT" not in message


# -- cloud mode ----------------------------------------------------------------------------------------------


def test_cloud_mode_with_everything_set() -> None:
    settings = load_settings(CLOUD)
    assert settings.backend is Backend.VERTEX
    assert settings.local is None
    cloud = settings.cloud
    assert cloud is not None
    assert (cloud.project, cloud.region, cloud.bucket) == ("my-project", "europe-west4", "my-bucket")
    assert settings.labelbox is not None and settings.labelbox.api_key.reveal() == API_KEY
    assert settings.labelbox.endpoint == "https://api.labelbox.com/graphql"
    assert settings.monitor.initial_delay_s == 60.0
    assert set(settings.secrets) == {Secret(WEBHOOK_SECRET), Secret(API_KEY)}


def test_empty_cloud_env_names_every_missing_variable_in_one_error() -> None:
    message = config_error({"CHAIN_MODE": "cloud"})
    assert message.startswith("invalid configuration: ")
    for name in (
        "GCP_PROJECT",
        "GCP_REGION",
        "BUCKET",
        "TASKS_QUEUE",
        "SERVICE_ACCOUNT_EMAIL",
        "LABELBOX_API_KEY (or LABELBOX_API_KEY_FILE)",
        "WEBHOOK_SECRET (or WEBHOOK_SECRET_FILE)",
        "ETL_URL",
        "TRAIN_URL",
        "MONITOR_URL",
        "INFERENCE_URL",
    ):
        assert f"{name} is required but not set" in message


def test_blank_values_count_as_missing() -> None:
    message = config_error({**CLOUD, "GCP_PROJECT": "   ", "BUCKET": ""})
    assert "GCP_PROJECT is required" in message and "BUCKET is required" in message


def test_api_key_from_a_mounted_file(tmp_path: Path) -> None:
    key_file = tmp_path / "api_key"
    key_file.write_text(API_KEY + "\n")
    env = {k: v for k, v in CLOUD.items() if k != "LABELBOX_API_KEY"} | {"LABELBOX_API_KEY_FILE": str(key_file)}
    settings = load_settings(env)
    assert settings.labelbox is not None and settings.labelbox.api_key.reveal() == API_KEY


# -- ports chosen one by one (issue 12, 1.) -------------------------------------------------------------------

LABELBOX_ON_A_WORKSTATION = {"CHAIN_PLATFORM": "labelbox", "LABELBOX_API_KEY": API_KEY}


def test_each_profile_chooses_its_ports() -> None:
    assert load_settings({**URLS, "WEBHOOK_SECRET": WEBHOOK_SECRET}).ports == Ports(
        "local", "folder", "local", "loopback"
    )
    assert load_settings(CLOUD).ports == Ports("labelbox", "gcs", "vertex", "cloud_tasks")


def test_labelbox_on_a_workstation_needs_the_api_key_and_nothing_from_google(tmp_path: Path) -> None:
    settings = load_settings(local_env(tmp_path, **LABELBOX_ON_A_WORKSTATION))
    assert settings.ports == Ports("labelbox", "folder", "local", "loopback")
    assert settings.cloud is None and settings.local is not None
    assert settings.labelbox is not None and settings.labelbox.api_key.reveal() == API_KEY
    assert settings.labelbox.endpoint == "https://api.labelbox.com/graphql"
    assert settings.backend is Backend.LOCAL
    assert settings.monitor.initial_delay_s == 2.0  # the local engine's pace, not Vertex's
    assert "local_detector" in settings.model_types()
    assert set(settings.secrets) == {Secret(WEBHOOK_SECRET), Secret(API_KEY)}  # the key is redacted everywhere


def test_the_same_ports_from_the_cloud_profile(tmp_path: Path) -> None:
    env = {
        **URLS,
        "CHAIN_MODE": "cloud",
        "WEBHOOK_SECRET": WEBHOOK_SECRET,
        "LABELBOX_API_KEY": API_KEY,
        "CHAIN_STORE": "folder",
        "CHAIN_BACKEND": "local",
        "CHAIN_QUEUE": "loopback",
        "LOCAL_DATA_DIR": str(tmp_path),
    }
    settings = load_settings(env)
    assert settings.ports == Ports("labelbox", "folder", "local", "loopback")
    assert settings.cloud is None and settings.monitor.initial_delay_s == 2.0


def test_labelbox_without_its_api_key_names_the_port_that_needs_it(tmp_path: Path) -> None:
    message = config_error(local_env(tmp_path, CHAIN_PLATFORM="labelbox"))
    assert (
        "LABELBOX_API_KEY (or LABELBOX_API_KEY_FILE) is required but not set (needed by CHAIN_PLATFORM=labelbox)"
        in (message)
    )
    assert "GCP_PROJECT" not in message and "BUCKET" not in message


def test_labelbox_endpoints_can_be_set(tmp_path: Path) -> None:
    env = local_env(
        tmp_path,
        **LABELBOX_ON_A_WORKSTATION,
        LABELBOX_ENDPOINT="http://127.0.0.1:9/graphql",
        LABELBOX_REST_ENDPOINT="http://127.0.0.1:9/api/v1",
    )
    labelbox = load_settings(env).labelbox
    assert labelbox is not None
    assert (labelbox.endpoint, labelbox.rest_endpoint) == ("http://127.0.0.1:9/graphql", "http://127.0.0.1:9/api/v1")


def test_google_variables_are_required_only_by_the_ports_that_use_them() -> None:
    env = {k: v for k, v in CLOUD.items() if k not in ("GCP_PROJECT", "GCP_REGION", "BUCKET", "TASKS_QUEUE")}
    message = config_error({**env, "CHAIN_QUEUE": "loopback", "SERVICE_ACCOUNT_EMAIL": ""})
    assert "GCP_PROJECT is required but not set (needed by CHAIN_STORE=gcs, CHAIN_BACKEND=vertex)" in message
    assert "GCP_REGION is required but not set (needed by CHAIN_BACKEND=vertex)" in message
    assert "BUCKET is required but not set (needed by CHAIN_STORE=gcs, CHAIN_BACKEND=vertex)" in message
    assert "TASKS_QUEUE" not in message and "SERVICE_ACCOUNT_EMAIL" not in message


def test_vertex_from_a_workstation_on_the_loopback_queue(tmp_path: Path) -> None:
    env = local_env(tmp_path, CHAIN_STORE="gcs", CHAIN_BACKEND="vertex", GCP_PROJECT="p", GCP_REGION="r", BUCKET="b")
    settings = load_settings(env)
    assert settings.ports == Ports("local", "gcs", "vertex", "loopback")
    assert settings.cloud is not None and (settings.cloud.project, settings.cloud.tasks_queue) == ("p", "")
    assert settings.local is not None and settings.labelbox is None
    assert settings.backend is Backend.VERTEX and settings.monitor.initial_delay_s == 60.0
    assert "local_detector" not in settings.model_types()


def test_cloud_tasks_alone_names_what_it_needs(tmp_path: Path) -> None:
    message = config_error(
        local_env(
            tmp_path, **LABELBOX_ON_A_WORKSTATION, CHAIN_STORE="gcs", CHAIN_BACKEND="vertex", CHAIN_QUEUE="cloud_tasks"
        )
    )
    for name in ("TASKS_QUEUE", "SERVICE_ACCOUNT_EMAIL"):
        assert f"{name} is required but not set (needed by CHAIN_QUEUE=cloud_tasks)" in message
    assert "GCP_REGION is required but not set (needed by CHAIN_BACKEND=vertex, CHAIN_QUEUE=cloud_tasks)" in message


@pytest.mark.parametrize(
    ("ports", "refusal"),
    [
        (
            {"CHAIN_BACKEND": "vertex"},
            "CHAIN_BACKEND=vertex needs CHAIN_STORE=gcs: Vertex AI reads the training images and writes its "
            "predictions as gs:// objects",
        ),
        (
            {"CHAIN_STORE": "gcs"},
            "CHAIN_BACKEND=local needs CHAIN_STORE=folder: the local engine reads the staged images",
        ),
        (
            {"CHAIN_QUEUE": "cloud_tasks", "CHAIN_PLATFORM": "labelbox"},
            "CHAIN_QUEUE=cloud_tasks needs CHAIN_STORE=gcs: Cloud Tasks calls the stages at public URLs",
        ),
        (
            {"CHAIN_QUEUE": "cloud_tasks", "CHAIN_STORE": "gcs", "CHAIN_BACKEND": "vertex"},
            "CHAIN_QUEUE=cloud_tasks needs CHAIN_PLATFORM=labelbox: Cloud Tasks calls the stages at public URLs",
        ),
    ],
)
def test_combinations_that_cannot_work_are_refused_with_the_reason(
    tmp_path: Path, ports: dict[str, str], refusal: str
) -> None:
    message = config_error(
        local_env(
            tmp_path,
            LABELBOX_API_KEY=API_KEY,
            GCP_PROJECT="p",
            GCP_REGION="r",
            BUCKET="b",
            TASKS_QUEUE="q",
            SERVICE_ACCOUNT_EMAIL="sa@p",
            **ports,
        )
    )
    assert refusal in message
    assert message.count("; ") == 0  # that one reason, nothing else


@pytest.mark.parametrize(
    ("variable", "choices"),
    [
        ("CHAIN_PLATFORM", "local, labelbox"),
        ("CHAIN_STORE", "folder, gcs"),
        ("CHAIN_BACKEND", "local, vertex"),
        ("CHAIN_QUEUE", "loopback, cloud_tasks"),
    ],
)
def test_an_unknown_port_choice_is_named(tmp_path: Path, variable: str, choices: str) -> None:
    assert f"{variable} must be one of {choices}, got 's3'" in config_error(local_env(tmp_path, **{variable: "s3"}))


def test_services_are_built_port_by_port(tmp_path: Path) -> None:
    from shared.chain.loopback import LoopbackChain
    from shared.invocation import process_owner_alive
    from shared.platform.labelbox_adapter import LabelboxPlatform
    from shared.store.local_folder import LocalFolderStore
    from shared.training.local_engine import LocalEngineBackend

    svc = build_services(load_settings(local_env(tmp_path, **LABELBOX_ON_A_WORKSTATION)))
    assert isinstance(svc.platform, LabelboxPlatform)  # built without a call to Labelbox: the client is lazy
    assert isinstance(svc.store, LocalFolderStore) and isinstance(svc.backend, LocalEngineBackend)
    assert isinstance(svc.chain, LoopbackChain)
    assert svc.owner_alive is process_owner_alive  # every function runs on this machine
    assert API_KEY not in repr(svc.platform)


# -- wrong values -------------------------------------------------------------------------------------------


def test_bad_numbers_ranges_flags_and_choices_are_all_named(tmp_path: Path) -> None:
    message = config_error(
        local_env(
            tmp_path,
            STAGE_LEASE_SECONDS="two minutes",
            ETL_COPY_CONCURRENCY="1.5",
            PREDICT_CONFIDENCE_THRESHOLD="1.5",
            PREDICT_MAX_PREDICTIONS="0",
            PREDICT_ON_TRAINING="maybe",
            LOCAL_ENGINE_DEVICE="tpu",
            LOCAL_ENGINE_BACKBONE="resnet50",
            VERTEX_OD_MODEL_TYPE="YOLO",
        )
    )
    expected = [
        "STAGE_LEASE_SECONDS must be a number, got 'two minutes'",
        "ETL_COPY_CONCURRENCY must be a whole number, got '1.5'",
        "PREDICT_CONFIDENCE_THRESHOLD must be between 0 and 1, got 1.5",
        "PREDICT_MAX_PREDICTIONS must be between 1 and 500, got 0",
        "PREDICT_ON_TRAINING must be true or false, got 'maybe'",
        "LOCAL_ENGINE_DEVICE must be one of auto, cpu, cuda, got 'tpu'",
        "LOCAL_ENGINE_BACKBONE must be one of auto, scratch, mobilenet_v2, got 'resnet50'",
        "VERTEX_OD_MODEL_TYPE must be one of CLOUD_HIGH_ACCURACY_1,",
    ]
    for text in expected:
        assert text in message
    assert message.count("; ") == len(expected) - 1


def test_unknown_chain_mode_is_named() -> None:
    assert "CHAIN_MODE must be one of local, cloud, got 'hybrid'" in config_error({**CLOUD, "CHAIN_MODE": "hybrid"})


@pytest.mark.parametrize(("raw", "value"), [("1", True), ("TRUE", True), ("yes", True), ("off", False), ("0", False)])
def test_flags(tmp_path: Path, raw: str, value: bool) -> None:
    assert load_settings(local_env(tmp_path, PREDICT_ON_TRAINING=raw)).predict.on_training is value


def test_numbers_are_parsed(tmp_path: Path) -> None:
    settings = load_settings(local_env(tmp_path, STAGE_LEASE_SECONDS=" 30.5 ", ETL_COPY_CONCURRENCY="4"))
    assert (settings.stage_lease_seconds, settings.etl.copy_concurrency) == (30.5, 4)


# -- the webhook secret ------------------------------------------------------------------------------------


def test_webhook_secret_from_a_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "webhook_secret"
    secret_file.write_text(f"  {WEBHOOK_SECRET}\n")
    env = local_env(tmp_path) | {"WEBHOOK_SECRET": "", "WEBHOOK_SECRET_FILE": str(secret_file)}
    assert load_settings(env).webhook_secret == Secret(WEBHOOK_SECRET)


def test_unreadable_secret_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-secret"
    env = {k: v for k, v in local_env(tmp_path).items() if k != "WEBHOOK_SECRET"}
    message = config_error(env | {"WEBHOOK_SECRET_FILE": str(missing)})
    assert f"WEBHOOK_SECRET_FILE points at {str(missing)!r}, which cannot be read (No such file or directory)" in (
        message
    )


def test_secret_file_that_is_a_folder_is_named(tmp_path: Path) -> None:
    env = {k: v for k, v in local_env(tmp_path).items() if k != "WEBHOOK_SECRET"}
    assert "WEBHOOK_SECRET_FILE points at" in config_error(env | {"WEBHOOK_SECRET_FILE": str(tmp_path)})


def test_allow_unsigned_webhooks_allows_no_secret(tmp_path: Path) -> None:
    env = {k: v for k, v in local_env(tmp_path).items() if k != "WEBHOOK_SECRET"}
    assert "WEBHOOK_SECRET" in config_error(env)
    settings = load_settings(env | {"ALLOW_UNSIGNED_WEBHOOKS": "true"})
    assert settings.webhook_secret is None
    assert settings.secrets == ()


# -- Vertex budgets -----------------------------------------------------------------------------------------


def test_a_budget_that_fits_neither_task_is_named_for_both(tmp_path: Path) -> None:
    message = config_error(local_env(tmp_path, VERTEX_BUDGET_MILLI_NODE_HOURS="5000"))
    assert (
        "VERTEX_BUDGET_MILLI_NODE_HOURS=5000 is outside Vertex AI's range 20000..900000 milli node hours for "
        "object detection (set VERTEX_OD_BUDGET_MILLI_NODE_HOURS for object detection alone)"
    ) in message
    assert "range 8000..800000 milli node hours for classification" in message


def test_a_budget_valid_for_one_task_only_leaves_the_other_out_instead_of_stopping_every_function() -> None:
    settings = load_settings({**CLOUD, "VERTEX_BUDGET_MILLI_NODE_HOURS": "10000"})  # loads: classification fits
    assert settings.vertex.classification_budget_milli_node_hours == 10_000
    offered = settings.model_types()
    assert "vertex_automl_single_label_classification" in offered
    assert "vertex_automl_object_detection" not in offered
    assert "20000..900000" in settings.vertex.unavailable[Task.OBJECT_DETECTION]

    big = load_settings({**CLOUD, "VERTEX_BUDGET_MILLI_NODE_HOURS": "850000"})  # over classification's maximum
    assert set(big.model_types()) == {"vertex_automl_object_detection"}


def test_each_task_has_its_own_budget_checked_against_its_own_range(tmp_path: Path) -> None:
    settings = load_settings(
        local_env(
            tmp_path, VERTEX_OD_BUDGET_MILLI_NODE_HOURS="24000", VERTEX_CLASSIFICATION_BUDGET_MILLI_NODE_HOURS="8000"
        )
    )
    assert settings.vertex.budget_milli_node_hours(Task.OBJECT_DETECTION) == 24_000
    assert settings.vertex.budget_milli_node_hours(Task.MULTI_LABEL_CLASSIFICATION) == 8_000
    message = config_error(local_env(tmp_path, VERTEX_OD_BUDGET_MILLI_NODE_HOURS="8000"))
    assert "VERTEX_OD_BUDGET_MILLI_NODE_HOURS=8000 is outside Vertex AI's range 20000..900000" in message
    assert "classification" not in message


def test_edge_model_types_are_refused_because_vertex_cannot_predict_with_them(tmp_path: Path) -> None:
    message = config_error(
        local_env(
            tmp_path,
            VERTEX_OD_MODEL_TYPE="MOBILE_TF_LOW_LATENCY_1",
            VERTEX_CLASSIFICATION_MODEL_TYPE="MOBILE_TF_VERSATILE_1",
        )
    )
    assert "VERTEX_OD_MODEL_TYPE=MOBILE_TF_LOW_LATENCY_1 is an Edge model type" in message
    assert "VERTEX_CLASSIFICATION_MODEL_TYPE=MOBILE_TF_VERSATILE_1 is an Edge model type" in message
    assert "cannot batch-predict" in message


def test_the_training_wall_time_follows_the_budget(tmp_path: Path) -> None:
    vertex = load_settings(local_env(tmp_path, VERTEX_OD_BUDGET_MILLI_NODE_HOURS="24000")).vertex
    assert vertex.training_wall_time_s(Task.OBJECT_DETECTION) == 24 * 3600  # the whole budget on one node


def test_api_endpoints_can_be_overridden_and_bad_ones_are_named() -> None:
    settings = load_settings(
        {**CLOUD, "VERTEX_API_ENDPOINT": "http://127.0.0.1:8123", "CLOUD_TASKS_API_ENDPOINT": "tasks.example:443"}
    )
    assert settings.vertex.api_endpoint == "http://127.0.0.1:8123"
    assert settings.cloud is not None and settings.cloud.tasks_api_endpoint == "tasks.example:443"
    message = config_error({**CLOUD, "VERTEX_API_ENDPOINT": "http://x/path?q=1"})
    assert "VERTEX_API_ENDPOINT must be host[:port] or http(s)://host[:port]" in message


# -- secrets never show ----------------------------------------------------------------------------------


def test_secret_never_shows_its_value() -> None:
    secret = Secret(WEBHOOK_SECRET)
    shown = [repr(secret), str(secret), f"{secret}", f"{secret!r}", f"{secret!s}", format(secret)]
    shown += [str([secret]), str({"key": secret})]  # %-formatting is covered by the log-line test
    assert all(WEBHOOK_SECRET not in text for text in shown)
    assert secret.reveal() == WEBHOOK_SECRET


def test_secret_in_a_log_line_is_masked(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        logging.getLogger("test").info("secret is %s / %r", Secret(WEBHOOK_SECRET), Secret(WEBHOOK_SECRET))
    assert WEBHOOK_SECRET not in caplog.text
    assert "***" in caplog.text


def test_secret_equality_compares_values() -> None:
    assert Secret("a") == Secret("a")
    assert Secret("a") != Secret("b")
    assert Secret("a") != "a"
    assert len({Secret("a"), Secret("a")}) == 1


def test_settings_repr_never_contains_a_secret() -> None:
    settings = load_settings(CLOUD)
    assert isinstance(settings, Settings)
    text = repr(settings) + str(settings) + repr(settings.cloud)
    assert WEBHOOK_SECRET not in text
    assert API_KEY not in text
    assert "Secret('***')" in text


def test_config_error_never_contains_a_secret(tmp_path: Path) -> None:
    env = {**CLOUD, "GCP_PROJECT": "", "STAGE_LEASE_SECONDS": "x"}
    assert "GCP_PROJECT" in config_error(env)


# -- bad rows (issue 15), 17. rare labels are dropped by default, and the setting can make them fail the run ---


@pytest.mark.parametrize(("value", "expected"), [(None, "drop"), ("drop", "drop"), ("fail", "fail")])
def test_etl_rare_labels_setting(value: str | None, expected: str) -> None:
    env = {
        "WEBHOOK_SECRET": "a-webhook-secret-for-the-tests",
        **{f"{s}_URL": f"http://127.0.0.1:9/{s}" for s in ("ETL", "TRAIN", "MONITOR", "INFERENCE")},
    }
    if value is not None:
        env["ETL_RARE_LABELS"] = value
    assert load_settings(env).etl.rare_labels == expected
    with pytest.raises(ConfigError, match="ETL_RARE_LABELS must be one of drop, fail, got 'sometimes'"):
        load_settings({**env, "ETL_RARE_LABELS": "sometimes"})


PACKAGE = "gs://my-bucket/engine/lbchain_engine-0.1.0-py3-none-any.whl"
CUSTOM_TYPES = {
    "vertex_custom_detector",
    "vertex_custom_single_label_classifier",
    "vertex_custom_multi_label_classifier",
}


def test_the_custom_types_are_offered_once_the_engine_package_is_uploaded() -> None:
    without = load_settings(CLOUD)
    assert not CUSTOM_TYPES & set(without.model_types())
    assert without.vertex_custom is not None and "deploy.sh" in (without.vertex_custom.unavailable or "")
    settings = load_settings({**CLOUD, "VERTEX_CUSTOM_PACKAGE_URI": PACKAGE})
    assert set(settings.model_types()) >= CUSTOM_TYPES and not any(
        n.startswith("local_") for n in settings.model_types()
    )
    custom = settings.vertex_custom
    assert custom is not None and custom.package_uri == PACKAGE
    assert custom.machine.describe() == "g2-standard-8 + 1 x NVIDIA_L4"  # the default: one L4
    assert custom.image_uri.startswith("europe-docker.pkg.dev/vertex-ai/training/pytorch-gpu.")  # by the region
    assert settings.model_types()["vertex_custom_detector"].trainer(Backend.VERTEX) is Backend.VERTEX_CUSTOM


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            {"VERTEX_CUSTOM_ACCELERATOR_TYPE": "NVIDIA_TESLA_K80"},
            "accelerator 'NVIDIA_TESLA_K80' is not one this chain knows",
        ),
        ({"VERTEX_CUSTOM_MACHINE_TYPE": "a2-megagpu-16g"}, "machine type 'a2-megagpu-16g' is not one this chain knows"),
        (
            {"VERTEX_CUSTOM_ACCELERATOR_TYPE": "NVIDIA_TESLA_T4"},
            "NVIDIA_TESLA_T4 attaches to n1-standard-* or n1-highmem-*",
        ),
        (
            {"VERTEX_CUSTOM_MACHINE_TYPE": "g2-standard-8", "GCP_REGION": "us-west2"},
            "Vertex AI training offers NVIDIA_L4 in",
        ),
        (
            {"VERTEX_CUSTOM_PACKAGE_URI": "https://example.com/engine.whl"},
            "VERTEX_CUSTOM_PACKAGE_URI must be the gs:// URI",
        ),
    ],
)
def test_a_custom_machine_vertex_would_refuse_stops_every_function_naming_the_variable(
    extra: dict[str, str], expected: str
) -> None:
    message = config_error({**CLOUD, "VERTEX_CUSTOM_PACKAGE_URI": PACKAGE, **extra})
    assert expected in message
    assert message.split(expected)[0].endswith(
        (
            "VERTEX_CUSTOM_ACCELERATOR_TYPE: ",
            "VERTEX_CUSTOM_MACHINE_TYPE: ",
            "VERTEX_CUSTOM_MACHINE_TYPE/VERTEX_CUSTOM_ACCELERATOR_TYPE: ",
            "configuration: ",
        )
    )


def test_a_default_machine_the_region_lacks_only_leaves_the_custom_types_out() -> None:
    settings = load_settings({**CLOUD, "GCP_REGION": "us-west2", "VERTEX_CUSTOM_PACKAGE_URI": PACKAGE})
    assert not CUSTOM_TYPES & set(settings.model_types())  # AutoML still works there
    assert "vertex_automl_object_detection" in settings.model_types()
    assert settings.vertex_custom is not None and "us-west2" in (settings.vertex_custom.unavailable or "")
    unchecked = load_settings(
        {**CLOUD, "GCP_REGION": "us-west2", "VERTEX_CUSTOM_PACKAGE_URI": PACKAGE, "VERTEX_CUSTOM_REGION_CHECK": "off"}
    )
    assert set(unchecked.model_types()) >= CUSTOM_TYPES


def test_a_local_deployment_trains_every_type_with_the_engine(tmp_path: Path) -> None:
    offered = load_settings(local_env(tmp_path)).model_types()
    assert CUSTOM_TYPES | {"local_detector", "vertex_automl_object_detection"} <= set(offered)
    assert {m.trainer(Backend.LOCAL) for m in offered.values()} == {Backend.LOCAL}
