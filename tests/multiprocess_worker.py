"""One of two processes of a data-parallel jaxmm gradient step (run by test_multiprocess.py).

Usage: python multiprocess_worker.py PROCESS_ID PORT. Each process owns 4 CPU devices; together
they form one 8-device mesh over which the batch is sharded and the weight replicated.
"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import jaxmm  # noqa: E402

process_id, port = int(sys.argv[1]), sys.argv[2]
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=process_id)
assert jax.device_count() == 8 and jax.local_device_count() == 4

rng = np.random.default_rng(0)  # the same global data in both processes
x_global = rng.standard_normal((32, 16), dtype=np.float32)
w_global = rng.standard_normal((16, 8), dtype=np.float32)

mesh = jax.make_mesh((8,), ("data",))
x = jax.make_array_from_callback(
    x_global.shape, NamedSharding(mesh, P("data")), lambda index: x_global[index]
)
w = jax.make_array_from_callback(
    w_global.shape, NamedSharding(mesh, P()), lambda index: w_global[index]
)


@jax.jit
def step(x, w):
    return jax.value_and_grad(lambda w: jnp.mean(jnp.tanh(jaxmm.matmul(x, w)) ** 2))(w)


loss, grad = step(x, w)
# The replicated gradient is fully addressable in every process: compare with one device.
ref_loss, ref_grad = jax.value_and_grad(
    lambda w: jnp.mean(jnp.tanh(jnp.matmul(x_global, w)) ** 2),
)(jax.device_put(w_global, jax.local_devices()[0]))
np.testing.assert_allclose(np.asarray(grad.addressable_data(0)), ref_grad, rtol=1e-4, atol=1e-6)
np.testing.assert_allclose(float(loss.addressable_data(0)), float(ref_loss), rtol=1e-5)
print(f"process {process_id}: loss {float(loss.addressable_data(0)):.6f} matches", flush=True)
jax.distributed.shutdown()
