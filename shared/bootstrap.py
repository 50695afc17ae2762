"""The one place where configuration picks the adapters (cloud or local) for every port.

Adapters are imported here lazily, so a cloud function never imports torch and the local mode never
needs the Google client libraries to be configured.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from shared.chain.port import Chain
from shared.config import Settings, load_settings
from shared.platform.port import LabelingPlatform
from shared.run_repository import RunRepository
from shared.store.port import ObjectStore
from shared.training.port import TrainingBackend

_HOST = socket.gethostname()


class Services:
    """The adapters for every port, each built on first use: a function imports only what it touches
    (the `models` function never loads the Vertex SDK; no cloud function ever loads torch)."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time, **overrides: object) -> None:
        self.settings = settings
        self.clock = clock
        self._secrets = [s.reveal() for s in settings.secrets if s.reveal()]
        self._build = _local_adapters(settings) if settings.mode == "local" else _cloud_adapters(settings)
        self._overrides = overrides
        self._lock = threading.RLock()  # a factory may ask for another adapter
        self._built: dict[str, object] = {}

    def _get(self, name: str) -> Any:
        if name in self._overrides:
            return self._overrides[name]
        with self._lock:
            if name not in self._built:
                self._built[name] = self._build[name](self)
            return self._built[name]

    @property
    def store(self) -> ObjectStore:
        return self._get("store")

    @property
    def runs(self) -> RunRepository:
        return self._get("runs")

    @property
    def platform(self) -> LabelingPlatform:
        return self._get("platform")

    @property
    def backend(self) -> TrainingBackend:
        return self._get("backend")

    @property
    def chain(self) -> Chain:
        return self._get("chain")

    def scrub(self, text: str) -> str:
        """Removes every secret value from a text that may reach a user, a log or the run record."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def new_owner(self) -> str:
        """Names one invocation of a stage: host, process and thread, so a dead owner can be recognised."""
        return f"{_HOST}:{os.getpid()}:{threading.get_ident()}:{time.monotonic_ns()}"

    def owner_alive(self, owner: str | None) -> bool | None:
        """Whether an owner's process still runs, when that can be known (same host); None otherwise."""
        if not owner or self.settings.mode != "local":
            return None
        host, _, rest = owner.partition(":")
        if host != _HOST:
            return None
        import psutil  # local mode only (dev dependency); a zombie counts as dead

        try:
            process = psutil.Process(int(rest.split(":", 1)[0]))
            return process.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False
        except (psutil.AccessDenied, ValueError):
            return None


Factory = Callable[[Services], Any]


def _runs(svc: Services) -> RunRepository:
    return RunRepository(svc.store, secrets=svc.settings.secrets)


def _local_adapters(settings: Settings) -> dict[str, Factory]:
    local = settings.local
    assert local is not None

    def store(svc: Services) -> ObjectStore:
        from shared.store.local_folder import LocalFolderStore

        return LocalFolderStore(local.bucket_dir, local.bucket_name)

    def platform(svc: Services) -> LabelingPlatform:
        from shared.platform.local_model_run import LocalModelRuns

        return LocalModelRuns(local.model_runs_dir)

    def backend(svc: Services) -> TrainingBackend:
        from shared.training.local_engine import LocalEngineBackend

        return LocalEngineBackend(
            svc.store,
            local.engine_dir,
            train_seconds=local.engine_train_seconds,
            seed=local.engine_seed,
            device=local.engine_device,
            bucket_dir=local.bucket_dir,
        )

    def chain(svc: Services) -> Chain:
        from shared.chain.loopback import LoopbackChain

        return LoopbackChain(settings.stage_urls, local.schedule_dir)

    return {"store": store, "runs": _runs, "platform": platform, "backend": backend, "chain": chain}


def _cloud_adapters(settings: Settings) -> dict[str, Factory]:
    cloud = settings.cloud
    assert cloud is not None

    def store(svc: Services) -> ObjectStore:
        from shared.store.gcs import GcsStore

        return GcsStore(cloud.bucket, project=cloud.project)

    def platform(svc: Services) -> LabelingPlatform:
        import labelbox  # noqa: F401 - the SDK loads at start-up: a function without it fails to boot, not mid-run

        from shared.platform.labelbox_adapter import LabelboxPlatform

        return LabelboxPlatform(
            cloud.labelbox_api_key,
            endpoint=cloud.labelbox_endpoint,
            rest_endpoint=cloud.labelbox_rest_endpoint,
        )

    def backend(svc: Services) -> TrainingBackend:
        from shared.training.vertex import VertexBackend

        return VertexBackend(
            project=cloud.project,
            region=cloud.region,
            staging_bucket=f"gs://{cloud.bucket}",
            vertex=settings.vertex,
        )

    def chain(svc: Services) -> Chain:
        from shared.chain.cloud_tasks import CloudTasksChain

        return CloudTasksChain(
            project=cloud.project,
            region=cloud.region,
            queue=cloud.tasks_queue,
            service_account=cloud.service_account,
            stage_urls=settings.stage_urls,
            api_endpoint=cloud.tasks_api_endpoint,
        )

    return {"store": store, "runs": _runs, "platform": platform, "backend": backend, "chain": chain}


def build_services(settings: Settings, **overrides: object) -> Services:
    return Services(settings, **overrides)


# The ports each function's stage touches. A function builds them when it starts, so one deployed
# without a package its stage needs fails to boot (and says which import), not at a run's first call.
FUNCTION_PORTS: dict[str, tuple[str, ...]] = {
    "models": (),
    "model_run": ("store", "runs", "platform", "chain"),
    "etl": ("store", "runs", "platform", "chain"),
    "train": ("store", "runs", "platform", "backend", "chain"),
    "monitor": ("store", "runs", "platform", "backend", "chain"),
    "inference": ("store", "runs", "platform", "backend", "chain"),
}

_services: Services | None = None
_lock = threading.Lock()


def services(function: str | None = None) -> Services:
    """The process's services, built once from the environment (ConfigError names what is wrong).

    With `function`, every port that function uses is built now, at start-up."""
    global _services
    with _lock:
        if _services is None:
            logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"), format="%(levelname)s %(name)s: %(message)s")
            _services = build_services(load_settings())
        svc = _services
    for port in FUNCTION_PORTS[function] if function else ():
        getattr(svc, port)
    return svc
