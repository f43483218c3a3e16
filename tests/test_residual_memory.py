"""examples/residual_memory.py: what bf16 residuals save in a Flax MLP, by XLA's memory analysis."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "examples"))

import residual_memory  # noqa: E402


def test_bf16_residuals_halve_the_saved_matmul_inputs():
    rows, errors, _ = residual_memory.measure(batch=256, widths=(64, 128, 128, 10))
    reference, exact, narrow = rows
    # jaxmm by default saves exactly what JAX's autodiff saves, and its gradients are JAX's.
    # (give or take the few bytes XLA books for the empty marker of the unsaved first weight)
    assert 0 <= exact["saved_bytes"] - reference["saved_bytes"] <= 64
    assert max(errors["jaxmm, exact (default)"]) <= 1e-6
    # bf16 residuals: the compiled forward keeps half the bytes of every matmul input and weight.
    halved = exact["saved_matmul_input_bytes"] // 2 + exact["saved_weights_bytes"] // 2
    # (to within XLA's few bytes of buffer bookkeeping)
    assert abs(exact["saved_bytes"] - narrow["saved_bytes"] - halved) <= 64
    # ... at the price of a bf16-sized, not a catastrophic, gradient error.
    assert 0 < max(errors["jaxmm, residual_dtype=bfloat16"]) < 2e-2
