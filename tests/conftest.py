import os
from types import ModuleType

import jax
import numpy as np
import pytest
from cases import MECHANISMS

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


def pytest_configure(config):
    # Read by the property tests: how many examples hypothesis draws (tests/test_properties.py).
    os.environ["JAXMM_FULL_TIER"] = "1" if config.getoption("--full") else ""


# How many distinct table cases (shapes, dimension numbers: tuples and other objects) of each
# parametrized test the default tier runs; named values (functions, dtypes, transformations,
# policies, mechanisms: strings, numbers, dtypes, types, modules) are each run at least once,
# whatever the cap.
CASES_PER_TEST = 1


def _named(value) -> bool:
    return value is None or isinstance(value, (str, int, float, bool, type, np.dtype, ModuleType))


def pytest_collection_modifyitems(config, items):
    """The default tier: for each parametrized test, the cases in table order that bring a named
    value not run yet (a function, a dtype, a transformation) or one of the first
    ``CASES_PER_TEST`` distinct table cases; tests marked ``full`` and the rest of the cross
    product run with ``--full``. Every function, dtype and transformation of a table is thereby
    still run, in a few minutes instead of the full tier's many."""
    if config.getoption("--full"):
        return
    named_seen: dict[str, set] = {}
    cases_seen: dict[str, list] = {}
    kept, deselected = [], []
    for item in items:
        if item.get_closest_marker("full"):
            deselected.append(item)
            continue
        callspec = getattr(item, "callspec", None)
        if callspec is None:
            kept.append(item)
            continue
        test = item.nodeid.split("[")[0]
        named = {(k, v) for k, v in callspec.params.items() if _named(v)}
        cases = [repr(v) for v in callspec.params.values() if not _named(v)]
        new_named = named - named_seen.setdefault(test, set())
        seen_cases = cases_seen.setdefault(test, [])
        new_cases = [c for c in cases if c not in seen_cases]
        if new_named or (new_cases and len(seen_cases) < CASES_PER_TEST):
            named_seen[test] |= named
            seen_cases.extend(new_cases)
            kept.append(item)
        else:
            deselected.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(params=MECHANISMS, ids=lambda module: module.__name__)
def mechanism(request):
    """``jaxmm`` or ``jaxmm.experimental``: a test of behaviour both offer runs once for each."""
    return request.param
