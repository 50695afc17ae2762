"""The chain as it is deployed, on one machine: six staged functions in their own venvs, cloud mode.

Each function is staged by `scripts/stage_function.py` exactly as `deploy.sh` stages it, runs under
functions-framework from its staged folder, in a venv built from nothing but its staged
requirements.txt (the locked closure Cloud Build installs), with `CHAIN_MODE=cloud`. Every Google and
Labelbox service it talks to is reached by the real client library over HTTP on loopback:

- Cloud Storage: the GCS emulator (fake-gcs-server), through STORAGE_EMULATOR_HOST;
- credentials and ID tokens: the metadata-server stand-in, through GCE_METADATA_HOST;
- Cloud Tasks: the REST stand-in (CLOUD_TASKS_API_ENDPOINT), which delivers every task at its
  schedule time with an OIDC token for the runtime service account;
- Vertex AI: the REST stand-in (VERTEX_API_ENDPOINT), reading and writing the emulator bucket;
- Labelbox: the fake GraphQL server, through LABELBOX_ENDPOINT; the API key and the webhook secret
  come from files, as Secret Manager mounts them.

The four private stages sit behind front doors that check the OIDC token as Cloud Run's IAM does;
`models` and `model_run` are public, as deployed. What this does not prove: real IAM policies, quotas,
Google's own validation beyond what the stand-ins check, real training, and Cloud Functions' runtime
(gunicorn settings, instance scaling, CPU after the response).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import requests
from google.cloud import storage

from shared.local_chain import sign
from tests.cloud.front_door import FrontDoor
from tests.cloud.google_tokens import DEFAULT_SERVICE_ACCOUNT, MetadataServer, TokenAuthority
from tests.cloud.tasks_standin import CloudTasksStandIn, RetryPolicy
from tests.cloud.vertex_standin import VertexStandIn
from tests.deploy.function_envs import function_venv, staged_function, venv_python
from tests.platform.fake_labelbox import FakeLabelbox
from tests.store.gcs_emulator import GcsEmulator

FUNCTIONS = ("models", "model_run", "etl", "train", "monitor", "inference")
PRIVATE = ("etl", "train", "monitor", "inference")
PROJECT, NUMBER, REGION, QUEUE = "test-project", "123456789", "us-central1", "lb-chain-tasks"
SA = DEFAULT_SERVICE_ACCOUNT
_DROPPED_FROM_ENV = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "LABELBOX_API_KEY", "WEBHOOK_SECRET")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CloudChain:
    """Starts the stand-ins and the six functions; `webhook` sends a signed "Train model"."""

    def __init__(
        self,
        work: Path,
        emulator: GcsEmulator,
        labelbox: FakeLabelbox,
        *,
        env: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        vertex_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.work = Path(work)
        self.emulator = emulator
        self.labelbox = labelbox
        self.bucket = emulator.make_bucket()
        self.storage: storage.Client = emulator.client()
        self.secret = secrets.token_hex(24)
        self.authority = TokenAuthority()
        self.metadata = MetadataServer(self.authority, service_account_email=SA, project_id=PROJECT)
        self.tasks = CloudTasksStandIn(self.authority, act_as=(SA,))
        self.tasks.add_queue(
            PROJECT, REGION, QUEUE, retry=retry or RetryPolicy(8, 0.5, 4.0, 3), max_concurrent_dispatches=8
        )
        self.vertex = VertexStandIn(
            self.authority,
            self.storage,
            project_id=PROJECT,
            project_number=NUMBER,
            location=REGION,
            **dict(vertex_options or {}),
        )
        self.ports = {name: _free_port() for name in FUNCTIONS}
        self.doors: dict[str, FrontDoor] = {}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.staged: dict[str, Path] = {}
        self.venvs: dict[str, Path] = {}
        self.extra_env = dict(env or {})
        self.log_dir = self.work / "logs"

    # -- life cycle --------------------------------------------------------------------------------------

    def start(self) -> CloudChain:
        self.metadata.start()
        self.tasks.start()
        self.vertex.start()
        for name in PRIVATE:
            self.doors[name] = FrontDoor(self.authority, f"http://127.0.0.1:{self.ports[name]}", invokers={SA}).start()
        for name in FUNCTIONS:
            self.staged[name] = staged_function(name, self.work / "build")
            self.venvs[name] = function_venv(self.staged[name])
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for name in FUNCTIONS:
            self.start_function(name)
        return self

    def function_env(self, name: str) -> dict[str, str]:
        env = {k: v for k, v in self.metadata.child_env(seal=True).items() if k not in _DROPPED_FROM_ENV}
        secrets_dir = self.work / "secrets"
        secrets_dir.mkdir(parents=True, exist_ok=True)
        (secrets_dir / "labelbox_api_key").write_text(self.labelbox.api_key)
        (secrets_dir / "webhook_secret").write_text(self.secret)
        env.update(
            {
                "PYTHONNOUSERSITE": "1",
                "STORAGE_EMULATOR_HOST": self.emulator.endpoint,
                "CHAIN_MODE": "cloud",
                "CHAIN_DEPLOYMENT": "e2e",
                "GCP_PROJECT": PROJECT,
                "GCP_REGION": REGION,
                "BUCKET": self.bucket,
                "TASKS_QUEUE": QUEUE,
                "SERVICE_ACCOUNT_EMAIL": SA,
                "LABELBOX_API_KEY_FILE": str(secrets_dir / "labelbox_api_key"),
                "WEBHOOK_SECRET_FILE": str(secrets_dir / "webhook_secret"),
                "LABELBOX_ENDPOINT": self.labelbox.endpoint,
                "LABELBOX_REST_ENDPOINT": self.labelbox.rest_endpoint,
                "VERTEX_API_ENDPOINT": self.vertex.url,
                "CLOUD_TASKS_API_ENDPOINT": self.tasks.url,
                "FUNCTION_TIMEOUT_S": "540",
                "MONITOR_INITIAL_DELAY_S": "0.5",
                "MONITOR_MAX_DELAY_S": "1",
                **{f"{stage.upper()}_URL": self.doors[stage].url for stage in PRIVATE},
                **self.extra_env,
            }
        )
        return env

    def start_function(self, name: str) -> None:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - kept open for the process
        self.processes[name] = subprocess.Popen(
            [
                str(venv_python(self.venvs[name])),
                "-m",
                "functions_framework",
                "--target",
                name,
                "--source",
                str(self.staged[name] / "main.py"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.ports[name]),
            ],
            cwd=self.staged[name],
            env=self.function_env(name),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_listening(name)

    def _wait_listening(self, name: str, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        url = f"http://127.0.0.1:{self.ports[name]}/"
        while time.monotonic() < deadline:
            if self.processes[name].poll() is not None:
                raise RuntimeError(f"function {name} exited at start-up:\n{self.log(name)[-3000:]}")
            try:
                requests.request("OPTIONS", url, timeout=1)
                return
            except requests.ConnectionError:
                time.sleep(0.1)
        raise RuntimeError(f"function {name} did not listen within {timeout_s:.0f} s:\n{self.log(name)[-3000:]}")

    def kill(self, name: str) -> None:
        """SIGKILLs a function (an instance that timed out or crashed); `start_function` brings a new one."""
        process = self.processes.pop(name)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def stop(self) -> None:
        for name in list(self.processes):
            process = self.processes.pop(name)
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=10)
            except ProcessLookupError:
                pass  # it had exited already (a function that failed to boot)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        for door in self.doors.values():
            door.stop()
        self.vertex.stop()
        self.tasks.stop()
        self.metadata.stop()

    def __enter__(self) -> CloudChain:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- talking to it -----------------------------------------------------------------------------------

    @property
    def public_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['model_run']}/"

    def webhook(self, model_run_id: str, model_type: str, **extra: Any) -> requests.Response:
        body = json.dumps({"modelRunId": model_run_id, "modelType": model_type, **extra}).encode()
        return requests.post(self.public_url, data=body, headers=sign(body, self.secret), timeout=30)

    def models(self) -> requests.Response:
        return requests.get(f"http://127.0.0.1:{self.ports['models']}/", headers=sign(b"", self.secret), timeout=30)

    def run_record(self, run_id: str) -> dict[str, Any] | None:
        return self.read_json(f"runs/{run_id}/run.json")

    def read_json(self, key: str) -> dict[str, Any] | None:
        """A JSON object in the emulated bucket (a run record, a shard's state), or None."""
        blob = self.storage.bucket(self.bucket).get_blob(key)
        return None if blob is None else json.loads(blob.download_as_bytes())

    def wait(
        self, run_id: str, *, until: Callable[[dict[str, Any]], bool] | None = None, timeout_s: float = 300
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        record: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            record = self.run_record(run_id)
            if record and (until(record) if until else record["status"] != "running"):
                return record
            time.sleep(0.5)
        logs = "\n".join(f"--- {n}\n{self.log(n)[-1500:]}" for n in FUNCTIONS)
        raise TimeoutError(f"run {run_id} did not get there within {timeout_s:.0f} s; record: {record}\n{logs}")

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.is_file() else ""
