"""A busy or already-done claim changes nothing, so it must not cost a conditional write."""

from __future__ import annotations

from pathlib import Path

from shared.domain import run_record as rr
from shared.run_repository import RunRepository, record_key
from shared.store.local_folder import LocalFolderStore


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
