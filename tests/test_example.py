"""The worked examples: a Flax MLP on scikit-learn's digits, jaxmm layers against default ones;
a small Flax language model trained with jaxmm.linear_cross_entropy against the naive loss."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import jaxmm

# Runs in the full tier (pytest --full): minutes of training or execution.
pytestmark = pytest.mark.full

EXAMPLE = Path(__file__).parents[1] / "examples" / "mlp_digits.py"


def _load_example():
    return _load("mlp_digits")


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLE.with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mlp_on_digits_trains_like_the_default_layers():
    """The two loss curves are the same at every step, bit for bit: jaxmm's backward products are
    the ones JAX's autodiff emits."""
    example = _load_example()
    ours, ours_accuracy = example.train(jaxmm.dot_general, steps=250)
    theirs, theirs_accuracy = example.train(steps=250)
    assert len(ours) == 250
    np.testing.assert_array_equal(ours, theirs)
    assert ours[-1] < 0.1 * ours[0]  # it really trained
    assert ours_accuracy > 0.9
    assert abs(ours_accuracy - theirs_accuracy) <= 1 / 359


def test_language_model_trains_identically_with_linear_cross_entropy():
    example = _load("lm_linear_cross_entropy")
    ours = example.train(example.jaxmm_loss, vocab=512, width=32, sequence=32, steps=40)
    theirs = example.train(example.naive_loss, vocab=512, width=32, sequence=32, steps=40)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4)  # the same curve, to float32 rounding
    assert ours[-1] < 0.7 * ours[0]  # it really trained
    # The memory difference the example prints (compiled only): logits of 512 MiB in float32.
    sizes = dict(vocab=65536, width=32, batch=4, sequence=512)
    logit_bytes = 4 * 4 * 512 * 65536
    ours_bytes = example.step_temp_bytes(example.jaxmm_loss, **sizes)
    theirs_bytes = example.step_temp_bytes(example.naive_loss, **sizes)
    assert theirs_bytes >= logit_bytes > 4 * ours_bytes
