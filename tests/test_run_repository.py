"""The run record under concurrent invocations, on the local folder and on a GCS emulator.

Webhooks, hand-offs and Cloud Tasks deliver at least once, so several invocations do race on one record;
none of their updates may be lost and only one of them may own a stage. And a busy or already-done claim
changes nothing, so it must not cost a conditional write.
"""

from __future__ import annotations

import json
import multiprocessing
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import pytest

from shared.domain import run_record as rr
from shared.domain.run_record import ClaimOutcome, RunRecord, StageState, claim, fail_run, new_run
from shared.run_repository import RunNotFound, RunRepository, SecretLeak, record_key
from shared.secret import Secret
from shared.store.local_folder import LocalFolderStore
from shared.store.port import ObjectStore
from tests import race_workers

RACERS = 20
NOW = race_workers.NOW
API_KEY = Secret("lb-api-key-7f3a9c2e1d")
T = TypeVar("T")


def a_run(run_id: str = "run-1") -> RunRecord:
    return new_run(
        run_id=run_id,
        model_run_id="mr-1",
        model_type="vertex_automl_object_detection",
        task="object_detection",
        backend="local",
        model_id="model-1",
        now=NOW,
    )


@pytest.fixture
def repository(store: ObjectStore) -> RunRepository:
    repository = RunRepository(store, secrets=[API_KEY], clock=lambda: NOW)
    assert repository.create(a_run())
    return repository


def race(count: int, task: Callable[[int], T]) -> list[T]:
    """Runs `task(i)` in `count` threads released together, so they really do collide."""
    start = threading.Barrier(count)

    def run(i: int) -> T:
        start.wait()
        return task(i)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(run, range(count)))


def pings(record: RunRecord) -> list[dict[str, object]]:
    return [e["detail"] for e in record.events if e["event"] == "ping"]


def test_racing_updates_lose_no_event(repository: RunRepository) -> None:
    def ping(i: int) -> None:
        repository.update("run-1", lambda record: record.log(NOW, "etl", "ping", worker=i))

    race(RACERS, ping)

    record = repository.get("run-1")
    assert record is not None
    assert sorted(p["worker"] for p in pings(record)) == list(range(RACERS))
    assert record.events[0]["event"] == "created"


def test_racing_claims_give_the_stage_to_exactly_one(repository: RunRepository) -> None:
    def claim_etl(i: int) -> ClaimOutcome:
        return repository.update("run-1", lambda record: claim(record, "etl", f"owner-{i}", NOW, lease_s=600))[1]

    outcomes = race(RACERS, claim_etl)

    assert outcomes.count(ClaimOutcome.CLAIMED) == 1
    assert outcomes.count(ClaimOutcome.BUSY) == RACERS - 1
    winner = f"owner-{outcomes.index(ClaimOutcome.CLAIMED)}"
    record = repository.get("run-1")
    assert record is not None
    etl = record.stages["etl"]
    assert (etl.state, etl.owner, etl.attempts) == (StageState.RUNNING, winner, 1)
    assert [e["event"] for e in record.events if e["stage"] == "etl"] == ["started"]


def test_creating_a_run_twice_keeps_the_first(repository: RunRepository) -> None:
    second = a_run()
    second.model_id = "another-model"

    assert repository.create(second) is False

    record = repository.get("run-1")
    assert record is not None
    assert record.model_id == "model-1"


def test_racing_creates_have_one_winner(store: ObjectStore) -> None:
    repository = RunRepository(store, clock=lambda: NOW)

    created = race(RACERS, lambda i: repository.create(a_run("run-2")))

    assert created.count(True) == 1


def test_a_record_holding_a_secret_is_never_created(store: ObjectStore) -> None:
    repository = RunRepository(store, secrets=[API_KEY], clock=lambda: NOW)
    record = a_run("run-2")
    record.error = f"Labelbox said 401 for key {API_KEY.reveal()}"

    with pytest.raises(SecretLeak) as caught:
        repository.create(record)

    assert API_KEY.reveal() not in str(caught.value)
    assert repository.get("run-2") is None
    assert list(store.list("runs/run-2/")) == []


def test_an_update_that_would_store_a_secret_writes_nothing(store: ObjectStore, repository: RunRepository) -> None:
    before = store.read_versioned(record_key("run-1"))

    with pytest.raises(SecretLeak):
        repository.update("run-1", lambda record: fail_run(record, "etl", NOW, f"bad key {API_KEY.reveal()}"))

    assert store.read_versioned(record_key("run-1")) == before
    assert API_KEY.reveal() not in store.read(record_key("run-1")).decode()


def test_a_mutation_that_raises_writes_nothing(store: ObjectStore, repository: RunRepository) -> None:
    before = store.read_versioned(record_key("run-1"))

    def refuse(record: RunRecord) -> None:
        record.log(NOW, "etl", "half-done")
        raise ValueError("changed my mind")

    with pytest.raises(ValueError, match="changed my mind"):
        repository.update("run-1", refuse)

    assert store.read_versioned(record_key("run-1")) == before


def test_updating_a_run_that_does_not_exist_says_so(store: ObjectStore) -> None:
    repository = RunRepository(store)

    with pytest.raises(RunNotFound):
        repository.update("no-such-run", lambda record: None)
    assert repository.get("no-such-run") is None


def test_the_record_is_stored_as_json_at_its_documented_key(store: ObjectStore, repository: RunRepository) -> None:
    stored = json.loads(store.read("runs/run-1/run.json"))

    assert stored["run_id"] == "run-1"
    assert stored["stages"]["etl"]["state"] == "pending"
    assert repository.uri("run-1") == f"gs://{store.bucket}/runs/run-1/run.json"


# -- separate processes on one folder: the local mode's functions-framework servers ------------------


@pytest.fixture
def folder_repository(tmp_path: Path) -> tuple[Path, RunRepository]:
    root = tmp_path / "bucket"
    repository = RunRepository(LocalFolderStore(root, bucket="test-bucket"), clock=lambda: NOW)
    assert repository.create(a_run())
    return root, repository


def _run_processes(targets: list[tuple[Callable[..., None], tuple[object, ...]]]) -> None:
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=target, args=args) for target, args in targets]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [p.exitcode for p in processes] == [0] * len(processes)


def test_processes_racing_updates_on_a_folder_lose_no_event(folder_repository: tuple[Path, RunRepository]) -> None:
    root, repository = folder_repository
    workers, each = 4, 5
    start = multiprocessing.get_context("spawn").Barrier(workers)

    _run_processes(
        [(race_workers.append_events, (str(root), "test-bucket", "run-1", w, each, start)) for w in range(workers)]
    )

    record = repository.get("run-1")
    assert record is not None
    assert sorted((p["worker"], p["n"]) for p in pings(record)) == [(w, n) for w in range(workers) for n in range(each)]


def test_processes_racing_claims_on_a_folder_give_the_stage_to_exactly_one(
    folder_repository: tuple[Path, RunRepository],
) -> None:
    root, repository = folder_repository
    workers = 4
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(workers), context.Queue()

    _run_processes(
        [
            (race_workers.claim_stage, (str(root), "test-bucket", "run-1", f"pid-{w}", start, results))
            for w in range(workers)
        ]
    )

    outcomes = dict(results.get(timeout=10) for _ in range(workers))
    winners = [owner for owner, outcome in outcomes.items() if outcome == ClaimOutcome.CLAIMED]
    assert len(winners) == 1
    assert sorted(outcomes.values()) == sorted([ClaimOutcome.CLAIMED] + [ClaimOutcome.BUSY] * (workers - 1))
    record = repository.get("run-1")
    assert record is not None
    assert record.stages["etl"].owner == winners[0]


# -- an update that changes nothing writes nothing -----------------------------------------------------------


def test_an_update_that_changes_nothing_leaves_the_object_untouched(tmp_path: Path) -> None:
    store = LocalFolderStore(tmp_path)
    runs = RunRepository(store)
    assert runs.create(
        rr.new_run(
            run_id="r1",
            model_run_id="r1",
            model_type="local_detector",
            task="object_detection",
            backend="local",
            model_id=None,
            now=1.0,
        )
    )
    runs.update("r1", lambda r: rr.claim(r, "etl", "owner-a", 2.0, lease_s=60))
    before = store.path(record_key("r1")).stat().st_mtime_ns, store.read_versioned(record_key("r1"))[1]

    _record, outcome = runs.update("r1", lambda r: rr.claim(r, "etl", "owner-b", 3.0, lease_s=60))

    assert outcome is rr.ClaimOutcome.BUSY
    after = store.path(record_key("r1")).stat().st_mtime_ns, store.read_versioned(record_key("r1"))[1]
    assert after == before
