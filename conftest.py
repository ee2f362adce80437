"""Test configuration: 8 simulated CPU devices, Keras on JAX, slow-test gating."""

import os

# Must be set before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("KERAS_BACKEND", "jax")

import pytest


def pytest_collection_modifyitems(config, items):
    if os.environ.get("ADAMFX_SLOW") == "1" or os.environ.get("CI") == "true":
        return
    skip = pytest.mark.skip(reason="slow: set ADAMFX_SLOW=1 (CI runs these)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
