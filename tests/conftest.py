import os

import jax
import pytest

# tests/multidevice needs 8 devices and runs in its own process (test_multidevice.py); the
# multi-process worker is a script, not a test module.
collect_ignore = ["multidevice", "multiprocess_worker.py", "readme_blocks.py"]

# Strict about silent broadcasting of ranks: jaxmm must never lean on it.
jax.config.update("jax_numpy_rank_promotion", "raise")

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # a bare GPU image (scripts/gpu_report.sh) runs the tests that need none
    pass
else:
    # In CI the drawn cases are fixed (a red run must be reproducible); locally they vary per run.
    settings.register_profile(
        "jaxmm",
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        derandomize=bool(os.environ.get("CI")),
    )
    settings.load_profile("jaxmm")


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(0)
