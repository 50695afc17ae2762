"""The ports a stage works with, handed to it as one object.

Stages receive a `Services`; they never build one. `bootstrap.py`, the composition root, picks the
adapters from the configuration and hands their factories in, much as cosmicpython's handlers receive
their unit of work. Each adapter is built on first use, so a function imports only what it touches
(the `models` function never loads the Vertex SDK; no cloud function ever loads torch).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from shared.chain.port import Chain
from shared.config import Settings
from shared.invocation import new_owner, unknowable
from shared.platform.port import LabelingPlatform
from shared.run_repository import RunRepository
from shared.secret import redact
from shared.store.port import ObjectStore
from shared.training.port import TrainingBackend

PORTS = ("store", "runs", "platform", "backend", "chain")
Factory = Callable[["Services"], Any]


class Services:
    def __init__(
        self,
        settings: Settings,
        factories: Mapping[str, Factory],
        *,
        clock: Callable[[], float] = time.time,
        owner_alive: Callable[[str | None], bool | None] = unknowable,
        overrides: Mapping[str, object] | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.owner_alive = owner_alive
        self._secrets = settings.secrets
        self._factories = dict(factories)
        self._overrides = dict(overrides or {})
        self._lock = threading.RLock()  # a factory may ask for another adapter
        self._built: dict[str, object] = {}

    def _get(self, name: str) -> Any:
        if name in self._overrides:
            return self._overrides[name]
        with self._lock:
            if name not in self._built:
                self._built[name] = self._factories[name](self)
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
        return redact(text, self._secrets)

    def new_owner(self) -> str:
        """Names one invocation of a stage (see `shared.invocation`)."""
        return new_owner()
