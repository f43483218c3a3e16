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


def pytest_addoption(parser):
    parser.addoption(
        "--full",
        action="store_true",
        help="run every case of every parametrized test (CI). By default each parametrized test "
        "runs the cases that, together, take each of its parameters' values at least once.",
    )


def _value_key(value):
    """A parameter value as a hashable key (dtypes, shapes, names; objects by identity)."""
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


def pytest_collection_modifyitems(config, items):
    """The default tier: for each parametrized test, the cases in table order that bring a value
    of some parameter (a function, a dtype, a transformation, a shape case) not seen yet; the
    cross product of the tables runs with ``--full``. Every function, dtype and transformation
    of a table is thereby still run once, in a few minutes instead of the full tier's many."""
    if config.getoption("--full"):
        return
    seen: dict[str, set] = {}
    kept, deselected = [], []
    for item in items:
        if item.get_closest_marker("full"):
            deselected.append(item)
            continue
        callspec = getattr(item, "callspec", None)
        if callspec is None:
            kept.append(item)
            continue
        values = {(name, _value_key(value)) for name, value in callspec.params.items()}
        function_seen = seen.setdefault(item.nodeid.split("[")[0], set())
        if values <= function_seen:
            deselected.append(item)
        else:
            function_seen |= values
            kept.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(0)
