"""Differentially private training (DP-SGD) of a small transformer with jaxmm.clipped_grad.

Each step samples every example independently with probability q (Poisson sampling, as the
accountant assumes: the unsampled examples are passed as padding), sums the examples' gradients
clipped to L2 norm C (jaxmm.clipped_grad: per-example norms without per-example gradients), adds
Gaussian noise of standard deviation σ·C, divides by the expected batch size q·N and takes an
Adam step. dp_accounting's RDP accountant then gives the ε of the whole run at δ = 1e-5.

The data are made here: sequences that count upward from a random start, modulo the vocabulary,
so that the next token is learnable. Run: python examples/dp_sgd.py (about a minute on a CPU).
"""

import dp_accounting
import jax
import jax.numpy as jnp
import optax

import jaxmm
from jaxmm._clipping_models import transformer_loss, transformer_params

VOCAB, WIDTH, HIDDEN, LAYERS, HEADS = 16, 32, 64, 1, 2
EXAMPLES, SEQUENCE = 512, 12
SAMPLING, NOISE, CLIP, STEPS, DELTA = 0.125, 1.0, 1.0, 60, 1e-5


def make_data(key):
    starts = jax.random.randint(key, (EXAMPLES, 1), 0, VOCAB)
    return (starts + jnp.arange(SEQUENCE)[None, :]) % VOCAB


def main():
    keys = jax.random.split(jax.random.key(0), 3)
    tokens = make_data(keys[0])
    params = transformer_params(keys[1], VOCAB, WIDTH, HIDDEN, LAYERS, HEADS)
    optimizer = optax.adam(3e-3)
    state = optimizer.init(params)
    expected_batch = SAMPLING * EXAMPLES
    clipped = jaxmm.clipped_grad(transformer_loss, l2_clip_norm=CLIP, normalize_by=expected_batch)

    @jax.jit
    def step(params, state, key):
        sample_key, noise_key = jax.random.split(key)
        sampled = jax.random.bernoulli(sample_key, SAMPLING, (EXAMPLES,))
        grads = clipped(params, tokens, is_padding_example=~sampled)
        leaves, tree = jax.tree.flatten(grads)
        noise_keys = jax.random.split(noise_key, len(leaves))
        std = NOISE * clipped.sensitivity()  # σ times the sensitivity of the sum, C / (q N)
        leaves = [g + std * jax.random.normal(k, g.shape) for g, k in zip(leaves, noise_keys)]
        updates, state = optimizer.update(jax.tree.unflatten(tree, leaves), state, params)
        return optax.apply_updates(params, updates), state

    print(f"loss before: {float(transformer_loss(params, tokens)):.3f}")
    for key in jax.random.split(keys[2], STEPS):
        params, state = step(params, state, key)
    print(f"loss after {STEPS} DP-SGD steps: {float(transformer_loss(params, tokens)):.3f}")

    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(SAMPLING, dp_accounting.GaussianDpEvent(NOISE)), STEPS
    )
    accountant = dp_accounting.rdp.RdpAccountant(orders=[*range(2, 64), 128, 256])
    accountant.compose(event)
    epsilon = accountant.get_epsilon(DELTA)
    print(f"privacy: epsilon = {epsilon:.2f} at delta = {DELTA} (sigma = {NOISE}, q = {SAMPLING})")
    return epsilon


if __name__ == "__main__":
    main()
