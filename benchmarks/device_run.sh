#!/usr/bin/env bash
# One device-machine session: build, GPU tests, NCCL evidence, overhead, CPU
# suite under the machine's jax. Logs go to $OUT (device tool) or ./device_out.
set -uo pipefail
OUT=${OUT:-device_out}; mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -m pip install -q --no-build-isolation --no-deps . 2>&1 | tail -3
python3 -c "import jax, jaxlib; print('jax', jax.__version__, jax.devices())"
cd /tmp  # import the installed package, not the source tree
R=$OLDPWD
python3 -m jax_symm.info | tee "$OUT/info.txt"
NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT,REG,TUNING timeout 300 python3 -m pytest -q -x \
  --rootdir "$R" "$R/tests/test_gpu.py" -p no:cacheprovider > "$OUT/gpu_tests.log" 2>&1
echo "gpu tests rc=$?"; grep -E "passed|failed|error" "$OUT/gpu_tests.log" | tail -3
grep -E "Symmetric|Register|window|Window" "$OUT/gpu_tests.log" | sort | uniq -c | sort -rn | head -20
timeout 200 python3 "$R/benchmarks/overhead.py" 2>&1 | tee "$OUT/overhead_default.txt"
XLA_FLAGS=--xla_gpu_enable_command_buffer= timeout 200 python3 "$R/benchmarks/overhead.py" 2>&1 | tee "$OUT/overhead_nocmdbuf.txt"
JAX_PLATFORMS=cpu timeout 300 python3 -m pytest -q -x --rootdir "$R" "$R/tests" \
  --deselect "$R/tests/test_gpu.py" -p no:cacheprovider > "$OUT/cpu_tests.log" 2>&1
echo "cpu tests rc=$?"; tail -3 "$OUT/cpu_tests.log"
