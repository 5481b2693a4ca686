"""Fixtures shared by the server's tests (tests/) and the SDK's tests (clients/python/tests/)."""

import os

from hypothesis import HealthCheck, settings

pytest_plugins = ["tests.support.fixtures"]

# The machine is shared and noisy: no per-example time limits. CI runs a fixed, derandomized set.
settings.register_profile("default", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else "default")
