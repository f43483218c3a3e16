#!/usr/bin/env bash
# GPU report: on a machine with a GPU and JAX with CUDA already installed (no network needed),
#   bash scripts/gpu_report.sh [OUTPUT_FOLDER]
# installs jaxmm without dependencies, runs the GPU-relevant tests (the cross-checks against JAX's
# autodiff, transformations, compiled structure, Flax), runs `python -m jaxmm` in float32 and
# bfloat16, and writes the tables of docs/performance.md's GPU section (and of
# docs/linear_cross_entropy.md, from the float32 run) to OUTPUT_FOLDER/table.md.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-report}
mkdir -p "$out"
status=0

python -m pip install --quiet --no-deps --no-build-isolation -e . || exit 1
python -c "import jax; print('JAX', jax.__version__, jax.devices())" | tee "$out/devices.txt"

# The tests that exercise the device's own kernels; hypothesis, notebooks and the multi-process
# tests need packages a bare GPU image may lack, and say nothing device-specific.
tests=(tests/test_matmul.py tests/test_dot_general.py tests/test_einsum.py
       tests/test_transforms.py tests/test_structure.py tests/test_residual_dtype.py
       tests/test_flax.py tests/test_linear_cross_entropy.py)
for optional in tests/test_products.py tests/test_experimental.py tests/test_ragged.py; do
    [ -f "$optional" ] && tests+=("$optional")
done
python -m pytest -q -p no:cacheprovider "${tests[@]}" 2>&1 | tee "$out/tests.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

for dtype in float32 bfloat16; do
    python -m jaxmm --dtype "$dtype" --json "$out/benchmark_$dtype.json" 2>&1 \
        | tee "$out/benchmark_$dtype.txt"
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
done
python scripts/gpu_table.py "$out"/benchmark_*.json | tee "$out/table.md"
exit $status
