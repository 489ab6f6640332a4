#!/usr/bin/env bash
# One device-machine session: build, GPU tests, NCCL evidence, overhead, a
# 1-GPU bench (with device times), and the CPU suite under the machine's jax.
# The measuring code lives in the package (jax_symm.bench and its
# subcommands); this script is only the order of a device session. Logs go to $OUT
# (device tool) or ./device_out.
set -uo pipefail
OUT=${OUT:-device_out}; mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
R=$PWD
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -m pip install -q --no-build-isolation --no-deps . 2>&1 | tail -3
cd /tmp  # import the installed package, not the source tree
python3 -m jax_symm.info > "$OUT/info.txt" 2>&1; head -5 "$OUT/info.txt"
timeout 300 python3 -m pytest -q -x --rootdir "$R" "$R/tests/gpu/test_gpu.py" -p no:cacheprovider \
  > "$OUT/gpu_tests.log" 2>&1
echo "gpu tests rc=$?"; tail -2 "$OUT/gpu_tests.log"
timeout 200 python3 -m pytest -q --rootdir "$R" "$R/tests/tools/test_bench.py" -k gpu -p no:cacheprovider \
  > "$OUT/gpu_bench_test.log" 2>&1
echo "gpu bench test (device time, raw NCCL timer) rc=$?"; tail -2 "$OUT/gpu_bench_test.log"
NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT,REG,TUNING timeout 200 python3 -m jax_symm.bench nccl-log \
  > "$OUT/nccl_evidence.log" 2>&1
echo "nccl evidence rc=$?"; grep -E "===|[Ss]ymmetric|[Rr]egist|[Ww]indow|NCCL version" "$OUT/nccl_evidence.log" | head -30
timeout 200 python3 -m jax_symm.bench overhead 2>&1 | tee "$OUT/overhead_default.txt"
XLA_FLAGS=--xla_gpu_enable_command_buffer= timeout 200 python3 -m jax_symm.bench overhead 2>&1 | tee "$OUT/overhead_nocmdbuf.txt"
# Device times (profiler) on; the command-buffer variants (--cmdbuf-variants)
# were measured on 2026-11-24 and are left out to keep this under 10 minutes.
JAX_SYMM_SINGLETON_CALLS=1 timeout 540 python3 -m jax_symm.bench --full --platform gpu \
  --max-bytes $((64 << 20)) --no-progress --out "$OUT/bench1gpu" > "$OUT/bench1gpu.log" 2>&1
echo "bench rc=$?"; tail -45 "$OUT/bench1gpu.log"
JAX_PLATFORMS=cpu timeout 400 python3 -m pytest -q --rootdir "$R" "$R/tests" \
  --deselect "$R/tests/gpu/test_gpu.py" -p no:cacheprovider > "$OUT/cpu_tests.log" 2>&1
echo "cpu tests rc=$?"; tail -3 "$OUT/cpu_tests.log"
