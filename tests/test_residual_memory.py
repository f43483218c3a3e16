"""examples/residual_memory.py: what narrowed residuals save in a Flax MLP, by XLA's compiled
memory analysis of the forward pass that keeps them."""

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "examples"))

import residual_memory  # noqa: E402

# The saved matmul inputs relative to exact: 2 bytes of 4, or 1 of 4.
EXPECTED_RATIO = {"bf16": 1 / 2, "f16": 1 / 2, "e4m3": 1 / 4, "e5m2": 1 / 4}


@pytest.fixture(scope="module")
def measured():
    settings = [s for s in residual_memory.SETTINGS if s[0] != "f16/channel"]
    return residual_memory.measure(
        batch=256, widths=(64, 128, 128, 10), settings=settings, step_memory=False, gradients=False
    )


def test_exact_saves_what_jax_autodiff_saves(measured):
    rows, _, _ = measured
    reference, exact = rows[0], rows[1]
    # (give or take the few bytes XLA books for the empty marker of the unsaved first weight)
    assert 0 <= exact["saved_bytes"] - reference["saved_bytes"] <= 64


def test_narrow_residuals_shrink_the_saved_matmul_inputs(measured):
    rows, _, _ = measured
    exact = rows[1]
    for row in rows[2:]:
        name = row["variant"]
        ratio = EXPECTED_RATIO[name.split("/")[0]]
        # The narrowed copies and their scales are all the forward pass keeps of the matmul
        # inputs: per tensor one float32 scale per operand, per channel one per contracting
        # index (here 64 + 4·128 of them, under 1 % of the inputs), and XLA's few bytes of
        # buffer alignment.
        slack = 128 if "/" not in name else 128 + 4 * (64 + 4 * 128)
        assert abs(row["saved_matmul_bytes"] - ratio * exact["saved_matmul_bytes"]) <= slack, name
        assert row["saved_bytes"] < exact["saved_bytes"]
