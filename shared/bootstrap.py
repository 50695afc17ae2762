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
from dataclasses import dataclass, field

from shared.chain.port import Chain
from shared.config import Settings, load_settings
from shared.platform.port import LabelingPlatform
from shared.run_repository import RunRepository
from shared.store.port import ObjectStore
from shared.training.port import TrainingBackend

_HOST = socket.gethostname()


@dataclass
class Services:
    settings: Settings
    store: ObjectStore
    runs: RunRepository
    platform: LabelingPlatform
    backend: TrainingBackend
    chain: Chain
    clock: Callable[[], float] = time.time
    _secrets: list[str] = field(default_factory=list, repr=False)

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
        try:
            os.kill(int(rest.split(":", 1)[0]), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, ValueError):
            return None
        return True


def build_services(settings: Settings) -> Services:
    secrets = [s.reveal() for s in settings.secrets if s.reveal()]
    if settings.mode == "local":
        store, platform, backend, chain = _local_adapters(settings)
    else:
        store, platform, backend, chain = _cloud_adapters(settings)
    runs = RunRepository(store, secrets=settings.secrets)
    return Services(settings, store, runs, platform, backend, chain, _secrets=secrets)


def _local_adapters(settings: Settings) -> tuple:
    from shared.chain.composed import ComposedChain
    from shared.chain.http import HttpHandOff
    from shared.chain.timer import TimerScheduler
    from shared.platform.local_model_run import LocalModelRuns
    from shared.store.local_folder import LocalFolderStore
    from shared.training.local_engine import LocalEngineBackend

    local = settings.local
    assert local is not None
    store = LocalFolderStore(local.bucket_dir, local.bucket_name)
    hand_off = HttpHandOff(settings.stage_urls)
    chain = ComposedChain(hand_off.hand_off, TimerScheduler(hand_off.hand_off))
    backend = LocalEngineBackend(
        store,
        local.engine_dir,
        train_seconds=local.engine_train_seconds,
        seed=local.engine_seed,
        device=local.engine_device,
        bucket_dir=local.bucket_dir,
    )
    return store, LocalModelRuns(local.model_runs_dir), backend, chain


def _cloud_adapters(settings: Settings) -> tuple:
    from shared.chain.cloud_tasks import CloudTasksScheduler
    from shared.chain.composed import ComposedChain
    from shared.chain.http import GoogleIdTokens, HttpHandOff
    from shared.platform.labelbox_adapter import LabelboxPlatform
    from shared.store.gcs import GcsStore
    from shared.training.vertex import VertexBackend

    cloud = settings.cloud
    assert cloud is not None
    store = GcsStore(cloud.bucket, project=cloud.project)
    platform = LabelboxPlatform(
        cloud.labelbox_api_key, endpoint=cloud.labelbox_endpoint, rest_endpoint=cloud.labelbox_rest_endpoint
    )
    backend = VertexBackend(
        project=cloud.project,
        region=cloud.region,
        staging_bucket=f"gs://{cloud.bucket}",
        vertex=settings.vertex,
    )
    hand_off = HttpHandOff(settings.stage_urls, token_source=GoogleIdTokens())
    scheduler = CloudTasksScheduler(
        project=cloud.project,
        region=cloud.region,
        queue=cloud.tasks_queue,
        service_account=cloud.service_account,
        stage_urls=settings.stage_urls,
    )
    return store, platform, backend, ComposedChain(hand_off.hand_off, scheduler)


_services: Services | None = None
_lock = threading.Lock()


def services() -> Services:
    """The process's services, built once from the environment (ConfigError names what is wrong)."""
    global _services
    with _lock:
        if _services is None:
            logging.basicConfig(
                level=os.environ.get("LOG_LEVEL", "INFO"), format="%(levelname)s %(name)s: %(message)s"
            )
            _services = build_services(load_settings())
        return _services
