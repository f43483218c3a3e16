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
    """The two loss curves agree at every step to float32 rounding.

    Not bit for bit: on CPU jaxmm computes the output layer's kernel gradient with a different
    (faster) kernel than JAX's autodiff (jaxmm._dot_general), which rounds differently but is as
    accurate against a float64 gradient. Adam amplifies such differences as the loss approaches
    zero, so each step is compared against the size of the losses, the first one: the largest
    gap measured over 250 steps is about 1 float32 ulp of it with JAX 0.10.2 and 3 with 0.12.
    """
    example = _load_example()
    ours, ours_accuracy = example.train(jaxmm.dot_general, steps=250)
    theirs, theirs_accuracy = example.train(steps=250)
    assert len(ours) == 250
    ulp_of_first_loss = np.finfo(np.float32).eps * theirs[0]
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=16 * ulp_of_first_loss)
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
