"""The core tests' demo model run fixtures, for the stage tests too."""

from tests.core.conftest import demo, demo_template  # noqa: F401 - pytest fixtures
