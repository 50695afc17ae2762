"""The two object stores every test here runs against: a folder, and a real GCS emulator."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.store.gcs import GcsStore
from shared.store.local_folder import LocalFolderStore
from shared.store.port import ObjectStore


@pytest.fixture(params=["local_folder", "gcs"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local_folder":
        return LocalFolderStore(tmp_path / "bucket", bucket="test-bucket")
    emulator = request.getfixturevalue("gcs_emulator")
    return GcsStore(emulator.make_bucket(), client=emulator.client())
