"""Loads and conditionally updates shard states, and keeps each shard's result, in the object store.

A shard's state (its claim, heartbeats, attempts) and its result (what the fan-in merges) are objects
of their own under `runs/<run>/shards/<stage>/`, next to the run record but never in it: many shards
heartbeat at once, and one object takes about one write a second. Like the run record, nothing is
written that holds a secret.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from shared.domain.run_paths import RunPaths
from shared.domain.shards import ShardState
from shared.run_repository import SecretLeak
from shared.secret import Secret, holds_secret
from shared.store.conditional import update_object
from shared.store.port import NotFound, ObjectStore

T = TypeVar("T")


class ShardStates:
    def __init__(self, store: ObjectStore, *, secrets: Iterable[Secret] = ()) -> None:
        self.store = store
        self._secrets = tuple(secrets)

    def _encode(self, value: dict[str, Any], key: str) -> bytes:
        text = json.dumps(value, indent=1, sort_keys=True, default=str)
        if holds_secret(text, self._secrets):
            raise SecretLeak(f"refusing to write {key}: it contains a secret value")
        return text.encode()

    def get(self, run_id: str, stage: str, index: int) -> ShardState | None:
        try:
            return ShardState.from_dict(json.loads(self.store.read(RunPaths(run_id).shard_state(stage, index))))
        except NotFound:
            return None

    def update(self, run_id: str, stage: str, index: int, mutate: Callable[[ShardState], T]) -> tuple[ShardState, T]:
        """A conditional update of the shard's state; a shard never seen starts from a pending state."""
        key = RunPaths(run_id).shard_state(stage, index)
        return update_object(
            self.store,
            key,
            decode=lambda data: ShardState.from_dict(json.loads(data)),
            encode=lambda state: self._encode(state.to_dict(), key),
            mutate=mutate,
            missing=ShardState,
        )

    def write_result(self, run_id: str, stage: str, index: int, result: dict[str, Any]) -> None:
        key = RunPaths(run_id).shard_result(stage, index)
        self.store.write(key, self._encode(result, key), content_type="application/json")

    def read_result(self, run_id: str, stage: str, index: int) -> dict[str, Any]:
        """The result shard `index` wrote when it finished; NotFound if it has not."""
        return json.loads(self.store.read(RunPaths(run_id).shard_result(stage, index)))
