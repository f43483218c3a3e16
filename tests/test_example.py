"""The worked example: a Flax MLP on scikit-learn's digits, jaxmm layers against default ones."""

import importlib.util
from pathlib import Path

import numpy as np

import jaxmm

EXAMPLE = Path(__file__).parents[1] / "examples" / "mlp_digits.py"


def _load_example():
    spec = importlib.util.spec_from_file_location("mlp_digits", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mlp_on_digits_trains_identically_with_jaxmm():
    example = _load_example()
    ours, ours_accuracy = example.train(jaxmm.dot_general, steps=250)
    theirs, theirs_accuracy = example.train(steps=250)
    assert len(ours) == 250
    # The losses agree at every step, to float32 rounding.
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)
    assert ours[-1] < 0.1 * ours[0]  # it really trained
    assert ours_accuracy > 0.9
    assert abs(ours_accuracy - theirs_accuracy) <= 1 / 359
