"""Worker processes for the run repository races on the local folder store.

A module of its own with light imports, because a spawned process imports the module its target lives in.
"""

from __future__ import annotations

from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

from shared.domain.run_record import RunRecord, claim
from shared.run_repository import RunRepository
from shared.store.local_folder import LocalFolderStore

NOW = 1_000_000.0


def append_events(root: str, bucket: str, run_id: str, worker: int, count: int, start: Barrier) -> None:
    repository = RunRepository(LocalFolderStore(Path(root), bucket=bucket))
    start.wait()
    for n in range(count):

        def ping(record: RunRecord, n: int = n) -> None:
            record.log(NOW, "etl", "ping", worker=worker, n=n)

        repository.update(run_id, ping)


def claim_stage(root: str, bucket: str, run_id: str, owner: str, start: Barrier, results: Queue) -> None:
    repository = RunRepository(LocalFolderStore(Path(root), bucket=bucket))
    start.wait()
    _, outcome = repository.update(run_id, lambda record: claim(record, "etl", owner, NOW, lease_s=600))
    results.put((owner, str(outcome)))
