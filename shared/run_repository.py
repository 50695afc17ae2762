"""Loads and conditionally updates run records in the object store.

Every update is read-modify-write with a generation precondition (`store.conditional`), retried on
conflict: the mutation runs again on the fresh record, so it must be a pure function of the record.
Before any write the serialised record is checked for secret values, so a secret cannot reach the
bucket even if a bug put one into an error message.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

from shared.domain.run_paths import RunPaths
from shared.domain.run_record import RunRecord
from shared.secret import Secret, holds_secret
from shared.store.conditional import update_object
from shared.store.port import NO_OBJECT, NotFound, ObjectStore, PreconditionFailed

T = TypeVar("T")


class SecretLeak(RuntimeError):
    """A write would have stored a secret; refused."""


class RunNotFound(KeyError):
    pass


def record_key(run_id: str) -> str:
    return RunPaths(run_id).record


class RunRepository:
    def __init__(
        self,
        store: ObjectStore,
        *,
        secrets: Iterable[Secret] = (),
        clock: Callable[[], float] = time.time,
        max_attempts: int = 50,
    ) -> None:
        self.store = store
        self.clock = clock
        self._secrets = tuple(secrets)
        self._max_attempts = max_attempts

    def _encode(self, record: RunRecord) -> bytes:
        text = json.dumps(record.to_dict(), indent=1, sort_keys=True)
        if holds_secret(text, self._secrets):
            raise SecretLeak(f"refusing to write run record {record.run_id}: it contains a secret value")
        return text.encode()

    def uri(self, run_id: str) -> str:
        return self.store.uri(record_key(run_id))

    def get(self, run_id: str) -> RunRecord | None:
        try:
            data = self.store.read(record_key(run_id))
        except NotFound:
            return None
        return RunRecord.from_dict(json.loads(data))

    def create(self, record: RunRecord) -> bool:
        """Writes a new record; False if one already exists (somebody else created it first)."""
        try:
            self.store.write(
                record_key(record.run_id),
                self._encode(record),
                content_type="application/json",
                if_generation=NO_OBJECT,
            )
        except PreconditionFailed:
            return False
        return True

    def update(self, run_id: str, mutate: Callable[[RunRecord], T]) -> tuple[RunRecord, T]:
        """Applies `mutate` to the current record and writes it back only if nobody wrote in between.

        `mutate` may raise to abort without writing; its return value is passed back to the caller. A mutation
        that leaves the record as it was writes nothing.
        """
        try:
            return update_object(
                self.store,
                record_key(run_id),
                decode=lambda data: RunRecord.from_dict(json.loads(data)),
                encode=self._encode,
                mutate=mutate,
                max_attempts=self._max_attempts,
            )
        except NotFound:
            raise RunNotFound(run_id) from None
