"""Read-modify-write of one object under a generation precondition: the store's unit of concurrency.

The mutation runs on the freshly read value and is retried, with jittered backoff, whenever another
writer got in between, so it must be a pure function of the value. Run records and shard states are
both updated this way.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

from shared.store.port import NO_OBJECT, NotFound, ObjectStore, PreconditionFailed

V = TypeVar("V")
R = TypeVar("R")


class TooManyConflicts(RuntimeError):
    """Writers kept getting in between; the update was given up."""


def update_object(
    store: ObjectStore,
    key: str,
    *,
    decode: Callable[[bytes], V],
    encode: Callable[[V], bytes],
    mutate: Callable[[V], R],
    missing: Callable[[], V] | None = None,
    max_attempts: int = 50,
) -> tuple[V, R]:
    """Applies `mutate` to the object's value and writes it back only if nobody wrote in between.

    A missing object raises NotFound, or starts from `missing()` and is created only if it still does
    not exist. `mutate` may raise to abort without writing. A mutation that leaves the value as it was
    writes nothing (so a no-op never conflicts with anyone)."""
    for attempt in range(max_attempts):
        try:
            data, generation = store.read_versioned(key)
            value = decode(data)
        except NotFound:
            if missing is None:
                raise
            data, generation, value = b"", NO_OBJECT, missing()
        result = mutate(value)
        encoded = encode(value)
        if encoded == data:
            return value, result
        try:
            store.write(key, encoded, content_type="application/json", if_generation=generation)
        except PreconditionFailed:
            time.sleep(min(0.5, 0.005 * 2 ** min(attempt, 7)) * random.random())
            continue
        return value, result
    raise TooManyConflicts(f"{key}: gave up after {max_attempts} conflicting writes")
