"""Fixtures shared across test areas: the GCS emulator, a small demo model run, both object stores, and a
model-type registry a test may add to."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.store.local_folder import LocalFolderStore
from shared.store.port import ObjectStore
from tests.demo_run import demo, demo_template  # noqa: F401 - pytest fixtures
from tests.model_type_registry import model_type_registry  # noqa: F401 - a pytest fixture
from tests.store.gcs_emulator import gcs_emulator  # noqa: F401 - a pytest fixture


@pytest.fixture(params=["local_folder", "gcs"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """The two object stores a contract runs against: a folder, and a real GCS emulator."""
    if request.param == "local_folder":
        return LocalFolderStore(tmp_path / "bucket", bucket="test-bucket")
    from shared.store.gcs import GcsStore  # the Google client loads only where a test asks for it

    emulator = request.getfixturevalue("gcs_emulator")
    return GcsStore(emulator.make_bucket(), client=emulator.client())
