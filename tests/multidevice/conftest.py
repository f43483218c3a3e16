"""Tests on 8 simulated CPU devices. XLA reads the device count once, when JAX starts, so this
directory runs in its own process (tests/test_multidevice.py starts it) with the flag set here,
before JAX is imported."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

import jax  # noqa: E402

assert jax.device_count() == 8, "tests/multidevice must run in a fresh process"
