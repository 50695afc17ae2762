"""Fixtures shared across test areas."""

from tests.store.gcs_emulator import gcs_emulator  # noqa: F401
